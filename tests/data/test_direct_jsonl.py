"""Local JSON-lines read by pyarrow.json instead of load_dataset (sources.read_jsonl_direct).

The fast path may only be taken where it reads exactly the records `datasets.load_dataset("json")`
reads; everywhere else it must hand over to load_dataset (None), which keeps its own diagnostics.
"""

import json

import pytest

from rwkv.data.config import DataConfig
from rwkv.data.formats import RecordFormatter
from rwkv.data.sources import read_jsonl_direct
from rwkv.data.tokenizers import get_tokenizer
from tests.data.util import write_jsonl


def _cfg(tmp_path, files, **kw):
    return DataConfig(data_path=str(tmp_path / "out"), source=kw.pop("source", "json"),
                      source_data_files=files, tokenizer="bytes", **kw)


def _direct(cfg):
    tok = get_tokenizer(cfg.tokenizer)
    return read_jsonl_direct(cfg, lambda names: RecordFormatter(cfg, tok, names).columns)


def _hf_records(cfg):
    import datasets

    files = cfg.source_data_files
    return datasets.load_dataset("json", data_files=files, cache_dir=str(cfg.data_path) + "-cache")["train"]


TEXTS = ["plain", "ünïcødé — 中文 🙂", "", "line\nbreaks\n\n and \"quotes\" \\ back", "x" * 5000]


def test_plain_text_records_equal_load_dataset(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": t, "id": i, "meta": {"k": i}} for i, t in enumerate(TEXTS)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": t[::-1], "id": 10 + i, "meta": {"k": i}}
                                            for i, t in enumerate(TEXTS)])
    # blank lines are skipped by both readers (and by locate_record's line mapping)
    lines = a.read_text(encoding="utf-8").splitlines(keepends=True)
    a.write_text("".join(lines[:2] + ["\n", "   \n"] + lines[2:] + ["\n"]), encoding="utf-8")
    cfg = _cfg(tmp_path, [str(a), str(b)])
    got = _direct(cfg)
    assert got is not None
    hf = _hf_records(cfg)
    assert got.column_names == hf.column_names
    assert len(got) == len(hf) == 2 * len(TEXTS)
    assert got[0:len(got)] == hf[0:len(hf)]
    sub = got.select_columns(["text"]).select(range(3, 7))
    assert sub[0:4] == {"text": hf["text"][3:7]}


def test_prompt_completion_and_multi_column_take_the_fast_path(tmp_path):
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Q: 1+1?", "completion": " 2"}] * 3)
    assert _direct(_cfg(tmp_path, str(pc))) is not None
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"instruction": "do", "input": "x", "output": "y"}] * 3)
    assert _direct(_cfg(tmp_path, str(mc))) is not None


def test_record_larger_than_a_parse_block(tmp_path):
    # pyarrow cannot parse a record straddling two blocks (4 MiB first): the block grows instead.
    big = "y" * (5 << 20)
    path = write_jsonl(tmp_path / "big.jsonl", [{"text": "small"}, {"text": big}, {"text": "end"}])
    got = _direct(_cfg(tmp_path, str(path)))
    assert got is not None and got[0:3]["text"] == ["small", big, "end"]


def test_large_corpora_keep_the_memory_mapped_datasets_path(tmp_path, monkeypatch):
    import rwkv.data.sources as sources

    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "abc"}] * 10)
    assert _direct(_cfg(tmp_path, str(path))) is not None
    monkeypatch.setattr(sources, "DIRECT_MAX_BYTES", path.stat().st_size - 1)
    assert _direct(_cfg(tmp_path, str(path))) is None


@pytest.mark.parametrize("case", ["messages", "params", "array", "malformed", "not_utf8", "schemas",
                                  "split_map", "nontext_column", "null_first", "csv"])
def test_everything_else_goes_to_load_dataset(tmp_path, case):
    kw, files = {}, None
    if case == "messages":  # nested structs: datasets 5 may re-encode them, so never the fast path
        files = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    elif case == "params":
        files = write_jsonl(tmp_path / "p.jsonl", [{"text": "a"}])
        kw["source_dataset_params"] = {"encoding": "latin-1"}
    elif case == "array":
        files = tmp_path / "arr.json"
        files.write_text(json.dumps([{"text": "a"}, {"text": "b"}]), encoding="utf-8")
    elif case == "malformed":
        files = tmp_path / "bad.jsonl"
        files.write_text('{"text": "a"}\n{"text": oops}\n', encoding="utf-8")
    elif case == "not_utf8":
        files = tmp_path / "latin.jsonl"
        files.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    elif case == "schemas":  # files whose column types differ
        a = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "id": 1}])
        b = write_jsonl(tmp_path / "b.jsonl", [{"text": "b", "id": "one"}])
        files = [str(a), str(b)]
    elif case == "split_map":
        files = {"train": str(write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}]))}
    elif case == "nontext_column":  # the used column holds numbers: the formatter's own error applies
        files = write_jsonl(tmp_path / "n.jsonl", [{"text": 1}, {"text": 2}])
    elif case == "null_first":
        files = write_jsonl(tmp_path / "z.jsonl", [{"text": None}, {"text": "b"}])
    elif case == "csv":
        files = tmp_path / "c.csv"
        files.write_text("text\na\n", encoding="utf-8")
        kw["source"] = "csv"
    cfg = _cfg(tmp_path, files if isinstance(files, list | dict) else str(files), **kw)
    assert _direct(cfg) is None


def test_preload_output_is_the_same_either_way(build, tmp_path, monkeypatch):
    import rwkv.data.sources as sources

    texts = [f"doc {i} " + "word " * (i % 17) + TEXTS[i % len(TEXTS)] for i in range(60)]
    path = write_jsonl(tmp_path / "src" / "train.jsonl", [{"text": t} for t in texts])
    kw = dict(source="json", source_data_files=str(path), test_split=0.2, packing_enable=True,
              packing_max_len=300, num_proc=2)
    _, fast, fast_dd = build(data_path=str(tmp_path / "fast"), **kw)
    monkeypatch.setattr(sources, "read_jsonl_direct", lambda cfg, columns_for: None)
    _, slow, slow_dd = build(data_path=str(tmp_path / "slow"), **kw)
    assert (fast["source_reader"], slow["source_reader"]) == ("pyarrow.json", "datasets.load_dataset")
    assert fast["hash"] == slow["hash"] and fast["splits"] == slow["splits"]
    for split in ("train", "test"):
        assert fast_dd[split].to_dict() == slow_dd[split].to_dict()
