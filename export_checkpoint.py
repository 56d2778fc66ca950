#!/usr/bin/env python3
"""Export a training checkpoint to an official RWKV .pth that `rwkv` pip and RWKV Runner load, to a
safetensors file (Ai00 / web-rwkv), or to a Hugging Face directory (fla's RWKV7ForCausalLM).

    python export_checkpoint.py CKPT OUT.pth [--dtype bf16|fp16|fp32]
    python export_checkpoint.py CKPT OUT_DIR --format hf [--tokenizer NAME]
    python export_checkpoint.py CKPT OUT.safetensors --format safetensors [--dtype fp16|bf16]

CKPT: a Lightning .ckpt file, a DeepSpeed checkpoint directory (ZeRO 1/2/3, any world size), an official
.pth/.safetensors, or a Hugging Face RWKV-7 directory."""

import sys

from rwkv.tools.export_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
