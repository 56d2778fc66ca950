"""Command line of export_checkpoint.py (see rwkv.checkpoint.export).

    python export_checkpoint.py SRC OUT [--format pth|hf|safetensors] [--dtype bf16|fp16|fp32]
                                [--tokenizer NAME] [--eos-id N] [--adapter DIR] [--state FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..checkpoint import ExportError, export_checkpoint
from ..checkpoint.export import DEFAULT_DTYPE, FORMATS, run_data_settings
from ..errors import ConfigError, DataError
from ..peft import merge as peft_merge


def build_parser() -> argparse.ArgumentParser:
    """The parser alone, so that other options can be added next to these (one argument group each)."""
    p = argparse.ArgumentParser(prog="export_checkpoint.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", type=Path, help="Lightning .ckpt file, DeepSpeed checkpoint directory, official "
                   ".pth/.safetensors, Hugging Face (fla) RWKV-7 directory or a hub id in the local HF cache")
    p.add_argument("out", type=Path, help="output .pth / .safetensors file or HF directory (written to a "
                   "temporary path, then renamed)")
    fmt = p.add_argument_group("output format")
    fmt.add_argument("--format", choices=FORMATS, default="pth",
                     help="pth: official .pth (rwkv pip, RWKV Runner); hf: directory for fla's RWKV7ForCausalLM "
                     "/ transformers (x070 only); safetensors: official names for Ai00 / web-rwkv / Runner WebGPU")
    fmt.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                     help="default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_DTYPE.items())
                     + "; use fp32 for exact v5/v6 parity with pip (docs/model-spec.md §4.2)")
    hf = p.add_argument_group("Hugging Face directory (--format hf)")
    hf.add_argument("--tokenizer", default=None,
                    help="the data.format.tokenizer the model was trained with (default: from the run's saved "
                    "config.yaml when CKPT is <run>/checkpoints/…); a Hugging Face tokenizer (neox, a "
                    "tokenizer.json, a tokenizer dir) is saved into the directory (world/bytes: see README)")
    hf.add_argument("--eos-id", type=int, default=None,
                    help="end-of-document id the model was trained with (default: the run's data.format.eod_token_id, "
                    "else 0)")
    peft_merge.add_arguments(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.format != "hf" and args.tokenizer:
        print("export_checkpoint.py: --tokenizer applies to --format hf only", file=sys.stderr)
        return 2
    dtype = args.dtype or DEFAULT_DTYPE[args.format]
    if args.format == "hf" and (args.tokenizer is None or args.eos_id is None):
        found = run_data_settings(args.ckpt)
        if found:
            settings, where = found
            args.tokenizer = args.tokenizer or settings.get("tokenizer")
            args.eos_id = settings.get("eod_token_id") if args.eos_id is None else args.eos_id
            print(f"data.format.tokenizer {args.tokenizer!r}, data.format.eod_token_id {args.eos_id} from {where}")
    if args.eos_id is None:
        args.eos_id = 0
    try:
        with peft_merge.merged_source(args) as src:  # a PEFT run: merged, plus --adapter/--state
            sd = export_checkpoint(src, args.out, dtype, fmt=args.format, tokenizer=args.tokenizer,
                                   eos_token_id=args.eos_id)
    except (ExportError, DataError, ConfigError) as e:
        print(f"export_checkpoint.py: {e}", file=sys.stderr)
        return 2
    n = sum(t.numel() for t in sd.values())
    print(f"exported {len(sd)} tensors, {n:,} parameters ({dtype}, {args.format}) -> {args.out}")
    if args.format == "hf" and args.tokenizer in (None, "world", "bytes"):
        print("no tokenizer files written (--tokenizer names none with Hugging Face files); README \"Use your "
              "model elsewhere\" says what to pair the model with")
    return 0
