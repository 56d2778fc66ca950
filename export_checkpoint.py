#!/usr/bin/env python3
"""Export a training checkpoint to an official RWKV .pth that `rwkv` pip and RWKV Runner load.

    python export_checkpoint.py CKPT OUT.pth [--dtype bf16|fp16|fp32]

CKPT: a Lightning .ckpt file, or a DeepSpeed checkpoint directory (ZeRO 1/2/3, any world size)."""

import sys

from rwkv.tools.export import main

if __name__ == "__main__":
    sys.exit(main())
