"""Exact-match accuracy of an exported model on the held-out arithmetic problems (eval.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.tokenizers import get_tokenizer
from ..inference import greedy_complete
from ..model import from_pth


def exact_match(model_path: Path, eval_file: Path, tokenizer: str = "bytes", limit: int | None = None) -> tuple:
    """Returns (accuracy, n, examples of (prompt, expected, got))."""
    tok = get_tokenizer(tokenizer)
    model = from_pth(model_path).float().eval()
    rows = [json.loads(line) for line in open(eval_file)][:limit]
    prompts = [tok.encode(r["prompt"]) for r in rows]
    newline = tok.encode("\n")[0]
    torch.set_grad_enabled(False)
    outs = greedy_complete(model, prompts, max_new=12, stop_id=newline)
    got = [tok.decode(o).strip() for o in outs]
    hits = [g == r["answer"] for g, r in zip(got, rows)]
    examples = [(r["prompt"], r["answer"], g) for r, g in zip(rows, got)]
    return sum(hits) / max(len(rows), 1), len(rows), examples
