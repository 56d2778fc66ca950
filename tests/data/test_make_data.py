"""make_data (rwkv/data/make_data.py): jsonl -> binidx with copies, per-copy shuffle and a separator token,
as a function and as a command (docs/model-spec.md §6)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkv.data.binidx import BinIdxReader, magic_prime
from rwkv.data.make_data import make_data
from rwkv.errors import DataError
from tests.data.util import write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def test_make_data_copies_shuffle_and_separator(tmp_path):
    texts = ["first document", "second one", "third"]
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    logs = []
    info = make_data(str(src), str(tmp_path / "out"), copies=3, ctx_len=4, tokenizer="bytes", log=logs.append)
    r = BinIdxReader(tmp_path / "out")
    assert r.dtype == np.uint16 and len(r) == 9 and r.doc_idx.tolist() == list(range(10))
    items = [bytes(int(t) - 1 for t in r[i][:-1]).decode() for i in range(9)]
    assert all(int(r[i][-1]) == 0 for i in range(9))  # token 0 after each document
    copies = [items[0:3], items[3:6], items[6:9]]
    assert all(sorted(c) == sorted(texts) for c in copies)
    assert len({tuple(c) for c in copies}) > 1  # each copy shuffled on its own (seeded)
    total = 3 * sum(len(t) + 1 for t in texts)
    assert info["tokens"] == total == r.num_tokens
    assert info["magic_prime"] == magic_prime(total, 4)
    assert any(f"magic_prime = {info['magic_prime']}" in line for line in logs)


def test_make_data_command_and_world_tokens(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "Hello world!\n\nUser: hi"}])
    proc = subprocess.run([sys.executable, "-m", "rwkv.data.make_data", str(src), str(tmp_path / "o"),
                           "--copies", "2", "--ctx_len", "2"], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert "16 tokens" in proc.stdout and "magic_prime = 5" in proc.stdout
    r = BinIdxReader(tmp_path / "o")
    assert r.tokens().tolist() == [33155, 40213, 34, 261, 24281, 59, 4571, 0] * 2


def test_make_data_bad_line(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n{"txt": "b"}\n')
    with pytest.raises(DataError, match=r"in\.jsonl, line 2: needs a string field 'text'"):
        make_data(str(tmp_path / "in.jsonl"), str(tmp_path / "o"), tokenizer="bytes", log=lambda s: None)
    assert not list(tmp_path.glob("o.*"))
