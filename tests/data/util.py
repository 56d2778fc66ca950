"""Small helpers shared by the data tests."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def text_of(ids) -> str:
    """Decode `bytes`-tokenizer ids, showing the end-of-document token 0 as '|'."""
    return "".join("|" if i == 0 else chr(i - 1) for i in ids)


def learned_text(ids, mask) -> str:
    """Only the learned tokens of a `bytes`-tokenized row, masked runs shown as '_'."""
    return "".join(("|" if i == 0 else chr(i - 1)) if m else "_" for i, m in zip(ids, mask))
