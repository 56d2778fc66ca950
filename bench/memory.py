#!/usr/bin/env python3
"""Peak memory of training on one long sample (docs/benchmarks.md "Memory"): an 8k-token sample vs a 1M-token sample,
tiny model, in `truncated` and `full` modes. Each measurement runs in a fresh process (peak RSS from
getrusage), doing one real optimizer step: the segment loop (rwkv.training.segments) with the fused loss,
clipping and AdamW. Target: RSS(1M) / RSS(8k) ≤ 1.15; `full` additionally keeps one boundary state per
segment, whose size is reported.

    python bench/memory.py                      # ctx_len 512, L2-D64 model, 8k and 1M tokens
    python bench/memory.py --long 262144        # a shorter long sample
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args) -> None:
    import torch

    from rwkv.model import RWKVConfig, build_model
    from rwkv.training.cpu_alloc import tune_cpu_allocator
    from rwkv.training.loss import head_ce_l2wrap
    from rwkv.training.optim import build_optimizer, param_groups
    from rwkv.training.segments import run_sample

    if not args.default_malloc:
        tune_cpu_allocator()  # as lightning_trainer.py does
    torch.manual_seed(0)
    cfg = RWKVConfig(n_layer=args.n_layer, n_embd=args.n_embd, head_size=args.head_size, vocab_size=args.vocab)
    model = build_model(cfg, init=True)
    opt = build_optimizer(param_groups(model, 0.0), 1e-3, (0.9, 0.99), 1e-18)
    ids = torch.randint(0, args.vocab, (1, args.tokens + 1))
    mask = torch.ones(1, args.tokens + 1)
    loss_fn = lambda h, tg, wt: head_ce_l2wrap(h, model.head.weight, tg, wt)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    res = run_sample(model, ids, mask, args.ctx, args.bptt, loss_fn, lambda x: x.backward())
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    n_seg = res.segments
    state_bytes = cfg.n_layer * (2 * cfg.n_embd * 4 + cfg.n_head * cfg.head_size ** 2 * 4)
    print(json.dumps({"peak_kib": peak, "before_step_kib": base, "segments": n_seg, "seconds": seconds,
                      "boundary_states_mib": (n_seg * state_bytes / 2**20) if args.bptt == "full" else 0.0,
                      "loss": float(res.loss_sum / res.learned)}))


def measure(args, tokens: int, bptt: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--tokens", str(tokens), "--bptt", bptt, "--ctx", str(args.ctx),
           "--n_layer", str(args.n_layer), "--n_embd", str(args.n_embd), "--head_size", str(args.head_size),
           "--vocab", str(args.vocab)] + (["--default-malloc"] if args.default_malloc else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--bptt", default="truncated", help=argparse.SUPPRESS)
    p.add_argument("--short", type=int, default=8192)
    p.add_argument("--long", type=int, default=1 << 20)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_embd", type=int, default=64)
    p.add_argument("--head_size", type=int, default=16)
    p.add_argument("--vocab", type=int, default=320)
    p.add_argument("--default-malloc", action="store_true", help="keep glibc's allocator defaults (cpu_alloc.py)")
    args = p.parse_args()
    if args.child:
        return child(args)
    print(f"model L{args.n_layer}-D{args.n_embd} (head {args.head_size}, vocab {args.vocab}), ctx_len {args.ctx}")
    for bptt in ("truncated", "full"):
        short, long = measure(args, args.short, bptt), measure(args, args.long, bptt)
        ratio = long["peak_kib"] / short["peak_kib"]
        extra = (f"; boundary states {long['boundary_states_mib']:.1f} MiB over {long['segments']} segments"
                 if bptt == "full" else "")
        print(f"{bptt:9s}: peak RSS {short['peak_kib'] / 1024:.0f} MiB at {args.short} tokens "
              f"({short['seconds']:.1f} s), {long['peak_kib'] / 1024:.0f} MiB at {args.long} tokens "
              f"({long['seconds']:.1f} s): ratio {ratio:.3f}{extra}")


if __name__ == "__main__":
    main()
