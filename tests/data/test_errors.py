"""Bad input -> one clear error naming the file and line (or column, or key) and nothing written
(docs/data.md "Errors")."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkv.data.config import DataConfig
from rwkv.data.preload import preload
from rwkv.errors import DataError
from tests.data.util import write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def fails(tmp_path, match, **kw):
    kw.setdefault("tokenizer", "bytes")
    kw.setdefault("num_proc", 1)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=match) as e:
        preload(DataConfig.from_keys(data_path=str(out), **kw), progress=lambda s: None)
    assert not out.exists(), "a failed preload must not write data_path"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "temp dirs left behind"
    return str(e.value)


def test_malformed_json_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "ok"}\n\n{"text": "also ok"}\n{"text": oops}\n')
    msg = fails(tmp_path, r"d\.jsonl, line 4: malformed JSON", source="json", source_data_files=str(p))
    assert "fix or remove the line" in msg


def test_missing_text_column(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"body": "x"}, {"body": "y"}])
    fails(tmp_path, r"no text column.*\['body'\].*custom_text_key", source="json", source_data_files=str(p))


def test_mixed_types_name_the_line_and_key(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}, {"text": ["c"]}])
    fails(tmp_path, r"d\.jsonl, line 3: expected a string, got list.*column 'text'", source="json",
          source_data_files=str(p))
    # a column the format does not read may mix types freely (datasets stores it as JSON)
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "a b", "meta": {"k": 1}}, {"text": "c d", "meta": "x"}])
    preload(DataConfig.from_keys(data_path=str(tmp_path / "ok"), source="json", source_data_files=str(p),
                                 tokenizer="bytes", num_proc=1, test_split=0), progress=lambda s: None)


def test_wrong_type_everywhere_names_file_and_line(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": 1}, {"text": 2}])
    fails(tmp_path, r"d\.jsonl, line 1: expected a string, got int.*column 'text'", source="json",
          source_data_files=str(p))


def test_wrong_type_in_conversation_names_line(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "hi"}]},
                                           {"messages": [{"role": "robot", "content": "hi"}]}])
    fails(tmp_path, r"d\.jsonl, line 2: message 0 has role 'robot'", source="json", source_data_files=str(p))


def test_empty_after_filtering(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "short"}, {"text": "tiny"}])
    fails(tmp_path, r"no document left after filtering \(2 read; dropped: 2 min_token_size=100\)",
          source="json", source_data_files=str(p), min_token_size=100)


def test_non_utf8_json_and_text(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    fails(tmp_path, r"d\.jsonl, line 2: not UTF-8 \(byte 0xe9\)", source="json", source_data_files=str(p))
    t = tmp_path / "t.txt"
    t.write_bytes(b"line one\nline two \xff\xfe\n")
    fails(tmp_path, r"t\.txt, line 2: not UTF-8", source="text", source_data_files=str(t))


def test_missing_files_and_globs(tmp_path):
    fails(tmp_path, r"data.origin.source_data_files: '.*nope\*\.jsonl' matches no file", source="json",
          source_data_files=str(tmp_path / "nope*.jsonl"))
    fails(tmp_path, r"builder 'json' needs data.origin.source_data_files", source="json")


def test_missing_split(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "a b c"}])
    fails(tmp_path, r"data.origin.source_dataset_split: the source has no split 'validation'", source="json",
          source_data_files=str(p), source_dataset_split="validation")


def _binidx(tmp_path):
    from rwkv.data.binidx import BinIdxWriter

    w = BinIdxWriter(tmp_path / "d", np.uint16)
    for n in (5, 7, 9):
        w.add_item(np.arange(1, n + 1))
    w.close()
    return tmp_path / "d"


def test_missing_and_truncated_binidx(tmp_path):
    prefix = _binidx(tmp_path)
    fails(tmp_path, r"binidx: .*other\.bin does not exist.*path prefix", source="binidx",
          source_data_files=str(tmp_path / "other"))
    with open(str(prefix) + ".bin", "r+b") as f:
        f.truncate(20)
    fails(tmp_path, r"d\.bin has 20 bytes but .*d\.idx describes 42.*truncated", source="binidx",
          source_data_files=str(prefix))
    prefix = _binidx(tmp_path)
    with open(str(prefix) + ".idx", "r+b") as f:
        f.truncate(40)
    fails(tmp_path, r"d\.idx is truncated", source="binidx", source_data_files=str(prefix))
    Path(str(prefix) + ".idx").write_bytes(b"NOTANIDX" + bytes(40))
    fails(tmp_path, r"not a binidx index", source="binidx", source_data_files=str(prefix))


def test_binidx_ids_outside_vocab(tmp_path):
    from rwkv.data.binidx import BinIdxWriter

    w = BinIdxWriter(tmp_path / "d", np.uint16)
    w.add_item(np.array([1, 2, 1000, 0]))
    w.close()
    fails(tmp_path, r"token id 1000, outside the bytes vocab", source="binidx",
          source_data_files=str(tmp_path / "d"))


def test_unknown_or_missing_tokenizer(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "a b c"}])
    fails(tmp_path, r"unknown tokenizer 'wrold'", source="json", source_data_files=str(p), tokenizer="wrold")
    fails(tmp_path, r"unknown tokenizer '.*missing/tokenizer.json' \(no such file",
          source="json", source_data_files=str(p), tokenizer=str(tmp_path / "missing" / "tokenizer.json"))


def test_unknown_format_option_and_bad_values():
    with pytest.raises(DataError, match="data.format.conversation_format: unknown format 'chatml'"):
        DataConfig.from_keys(data_path="x", conversation_format="chatml")
    with pytest.raises(DataError, match="data.loader.sampler: `official` reads a binidx source"):
        DataConfig.from_keys(data_path="x", source="json", sampler="official")
    with pytest.raises(DataError, match="data.format.multi_column_prefix: has 1 entries but multi_column_keys"):
        DataConfig.from_keys(data_path="x", multi_column_keys=["a", "b"], multi_column_prefix=["x"])
    with pytest.raises(DataError, match="data.rows.test_split: 2.5 is neither"):
        DataConfig.from_keys(data_path="x", test_split=2.5)


def test_only_the_datamodule_imports_lightning():
    code = ("import sys; import rwkv.data, rwkv.data.preload_cli, rwkv.data.preload, rwkv.data.loader, "
            "rwkv.data.sampler, rwkv.data.make_data, rwkv.data.rows, rwkv.data.sources; "
            "bad = [m for m in ('lightning', 'pytorch_lightning') if m in sys.modules]; "
            "assert not bad, bad; import rwkv.data.preload_cli as c; "
            "assert 'datasets' not in sys.modules, 'the cache-hit path must not import datasets'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
