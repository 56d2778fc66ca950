"""Command line of export_checkpoint.py (see rwkv.checkpoint.export)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..checkpoint import ExportError, export_checkpoint


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="export_checkpoint.py", description=__doc__)
    p.add_argument("ckpt", type=Path, help="Lightning .ckpt file or DeepSpeed checkpoint directory")
    p.add_argument("out", type=Path, help="output .pth (written to a temporary file, then renamed)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16",
                   help="official files are bf16; use fp32 for exact v5/v6 parity with pip (model-spec §4.2)")
    args = p.parse_args(argv)
    try:
        sd = export_checkpoint(args.ckpt, args.out, args.dtype)
    except ExportError as e:
        print(f"export_checkpoint.py: {e}", file=sys.stderr)
        return 2
    n = sum(t.numel() for t in sd.values())
    print(f"exported {len(sd)} tensors, {n:,} parameters ({args.dtype}) -> {args.out}")
    return 0
