"""`init_model.py`: write a freshly initialised model (official init, docs/model-spec.md §1.4 / §2) as a .pth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..model import RWKVConfig, build_model, save_pth
from ..model.config import VERSIONS

NAMED_VOCABS = ("world", "neox", "bytes")  # the tokenizers' padded model vocabs (rwkv.data.tokenizers)


def parse_vocab(text: str) -> int:
    if text in NAMED_VOCABS:
        from ..data.tokenizers import tokenizer_vocab_size

        return tokenizer_vocab_size(text)
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--vocab_size must be one of {sorted(NAMED_VOCABS)} or a positive "
                                         f"integer, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="init_model.py", description=__doc__)
    p.add_argument("--n_layer", type=int, required=True)
    p.add_argument("--n_embd", type=int, required=True)
    p.add_argument("--vocab_size", type=parse_vocab, default="world", help="world | neox | bytes | an integer")
    p.add_argument("--version", choices=VERSIONS, default="x070")
    p.add_argument("--head_size", type=int, default=64)
    p.add_argument("--dim_ffn", type=int, default=None, help="default: 4C (x070), 3.5C rounded to 32 (x060/x052)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16",
                   help="official files are bf16 (docs/model-spec.md §1.2)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--skip-if-exists", action="store_true", help="do nothing when OUT already exists")
    p.add_argument("out", type=Path, help="output .pth path (written to a temporary file, then renamed)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.skip_if_exists and args.out.exists():
        print(f"{args.out} exists: skipped (--skip-if-exists)")
        return 0
    try:
        cfg = RWKVConfig(version=args.version, n_layer=args.n_layer, n_embd=args.n_embd,
                         vocab_size=args.vocab_size, head_size=args.head_size, dim_ffn=args.dim_ffn)
    except ValueError as e:
        print(f"init_model.py: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    model = build_model(cfg, init=True)
    n_params = sum(p.numel() for p in model.parameters())
    save_pth(model, args.out, dtype=args.dtype)
    print(f"{cfg.version} L{cfg.n_layer} D{cfg.n_embd} V{cfg.vocab_size} head_size {cfg.head_size}: "
          f"{n_params:,} parameters -> {args.out} ({args.dtype})")
    return 0
