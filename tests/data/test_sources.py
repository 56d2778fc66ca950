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
    return DataConfig.from_keys(data_path=str(tmp_path / "out"), source=kw.pop("source", "json"),
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


CHATS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4 ✓"}], "source": "a"},
    {"messages": [{"role": "user", "content": "line\nbreak"}, {"role": "assistant", "content": ""}],
     "source": "b"},
]


@pytest.mark.parametrize("fmt", ["messages", "iopairs", "sender"])
def test_conversation_records_equal_load_dataset(tmp_path, fmt):
    # turns are objects with string values only and the same keys throughout
    if fmt == "messages":
        recs, kw = CHATS * 3, {}
    elif fmt == "iopairs":
        recs = [{"conversation": [{"input": f"q{i}", "output": f"a{i}"}] * (1 + i % 3)} for i in range(6)]
        kw = {"conversation_format": "iopairs"}
    else:
        recs = [{"conversation": [{"sender": "user", "message": f"hi {i}"}, {"sender": "bot", "message": "yo"}]}
                for i in range(6)]
        kw = {"conversation_format": "sender"}
    path = write_jsonl(tmp_path / "chat.jsonl", recs)
    cfg = _cfg(tmp_path, str(path), **kw)
    got = _direct(cfg)
    assert got is not None
    hf = _hf_records(cfg)
    assert got[0:len(got)] == hf[0:len(hf)]


@pytest.mark.parametrize("case", ["turn_keys_vary", "turn_extra_key", "turn_not_string", "no_turns_later",
                                  "params", "array", "malformed", "not_utf8", "schemas",
                                  "split_map", "nontext_column", "null_first", "csv"])
def test_everything_else_goes_to_load_dataset(tmp_path, case):
    kw, files = {}, None
    if case == "turn_keys_vary":  # datasets 5 re-encodes such turns as JSON: never the fast path
        files = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                                 {"role": "assistant"}]}])
    elif case == "turn_extra_key":
        turns = [{"sender": "user", "message": "hi"}, {"sender": "bot", "message": "yo", "context": "x"}]
        files = write_jsonl(tmp_path / "s.jsonl", [{"conversation": turns}])
        kw["conversation_format"] = "sender"
    elif case == "turn_not_string":
        files = write_jsonl(tmp_path / "w.jsonl", [{"messages": [{"role": "user", "content": "hi", "weight": 1}]}])
    elif case == "no_turns_later":
        files = write_jsonl(tmp_path / "n.jsonl", [CHATS[0], {"source": "c"}, {"messages": []}])
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
    """Text with packing and a held-out fraction; chat messages with their masks and a test count."""
    import rwkv.data.sources as sources

    texts = [f"doc {i} " + "word " * (i % 17) + TEXTS[i % len(TEXTS)] for i in range(60)]
    path = write_jsonl(tmp_path / "src" / "train.jsonl", [{"text": t} for t in texts])
    kw = dict(source="json", source_data_files=str(path), test_split=0.2, packing_enable=True,
              packing_max_len=300, num_proc=2)
    chats = write_jsonl(tmp_path / "src" / "chat.jsonl", CHATS * 20)
    both = [(kw, "text"), (dict(source="json", source_data_files=str(chats), test_split=3, num_proc=2), "chat")]
    results = {}
    for direct in (True, False):
        if not direct:
            monkeypatch.setattr(sources, "read_jsonl_direct", lambda cfg, columns_for: None)
        for k, name in both:
            results[direct, name] = build(data_path=str(tmp_path / f"{name}-{direct}"), **k)[1:]
    for _, name in both:
        (fast, fast_dd), (slow, slow_dd) = results[True, name], results[False, name]
        assert (fast["source_reader"], slow["source_reader"]) == ("pyarrow.json", "datasets.load_dataset")
        assert fast["hash"] == slow["hash"] and fast["splits"] == slow["splits"]
        if name == "chat":  # the prompt turns are masked
            assert 0 in {m for row in fast_dd["train"]["loss_mask"] for m in row}
        for split in ("train", "test"):
            assert fast_dd[split].to_dict() == slow_dd[split].to_dict()
