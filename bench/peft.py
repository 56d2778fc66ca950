#!/usr/bin/env python3
"""Full fine-tune vs LoRA vs state tuning on CPU (docs/benchmarks.md "PEFT"): trainable parameters, peak
RSS, step time and checkpoint size, same model and data for all three.

Model: x070 L12-D768, vocab 65536 (the 0.1B World shape), one 512-token sample per step, fp32. Each
configuration runs in a fresh process (peak RSS from getrusage covers exactly that configuration): it
builds the model, applies model.peft's set-up (rwkv.peft.apply_peft), does `--steps` real optimizer steps
(the segment loop with the fused loss, AdamW over the run's optimizer groups) and saves what a training
checkpoint holds (the trainable tensors + the optimizer state; for PEFT runs the base is not stored).

    python bench/peft.py                 # all three, 3 steps each
    python bench/peft.py --steps 5 --configs lora state
    python bench/peft.py --grad_cp       # with model.segments.grad_cp (the shipped PEFT configs use it)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "full": None,
    "lora": {"lora": {"r": 16, "lora_alpha": 32}},
    "state": {"state_tuning": True},
}


def child(args) -> None:
    import torch

    from rwkv.model import RWKVConfig, build_model
    from rwkv.peft import apply_peft, count_params, parse_peft, peft_param_groups
    from rwkv.training.cpu_alloc import prefer_low_memory, tune_cpu_allocator
    from rwkv.training.loss import head_ce_l2wrap
    from rwkv.training.optim import build_optimizer, param_groups
    from rwkv.training.segments import run_sample

    tune_cpu_allocator()  # as lightning_trainer.py does
    # PEFT runs switch to the memory-lean allocator setting (rwkv.peft.training.setup); --alloc overrides
    if args.alloc == "lean" or (args.alloc == "trainer" and CONFIGS[args.config] is not None):
        prefer_low_memory()
    torch.manual_seed(0)
    cfg = RWKVConfig(n_layer=args.n_layer, n_embd=args.n_embd, head_size=64, vocab_size=args.vocab)
    model = build_model(cfg, grad_cp=args.grad_cp)
    with torch.no_grad():  # any finite weights do for timing and memory (the official init is slow here)
        for p in model.parameters():
            p.normal_(0, 0.02)
    spec = parse_peft(CONFIGS[args.config])
    if spec is None:
        groups = param_groups(model, 0.0)
    else:
        apply_peft(model, spec)
        groups = peft_param_groups(model, spec, 1e-4)
    opt = build_optimizer(groups, 1e-4, (0.9, 0.99), 1e-18)
    trainable, total = count_params(model)
    ids = torch.randint(0, args.vocab, (1, args.ctx + 1))
    mask = torch.ones(1, args.ctx + 1)
    loss_fn = lambda h, tg, wt: head_ce_l2wrap(h, model.head.weight, tg, wt)
    if args.grad_cp:
        # The C kernels check themselves against fp64 on first use; inside a checkpointed block that first
        # forward saves more tensors than its recomputation and torch.utils.checkpoint refuses. Run them
        # once outside (a 16-token forward and backward without grad_cp), then drop the gradients.
        model.grad_cp = False
        run_sample(model, ids[:, :17], mask[:, :17], 16, "full", loss_fn, lambda x: x.backward())
        opt.zero_grad(set_to_none=True)
        model.grad_cp = True
    ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # imports + model + optimizer, before a step
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        run_sample(model, ids, mask, args.ctx, "full", loss_fn, lambda x: x.backward())
        opt.step()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    names = {id(p): n for n, p in model.named_parameters()}
    sd = {names[id(p)]: p.detach() for g in groups for p in g["params"]}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ckpt.pt"
        torch.save({"state_dict": sd, "optimizer": opt.state_dict()}, path)
        ckpt_bytes = path.stat().st_size
    print(json.dumps({"config": args.config, "trainable": trainable, "total": total, "peak_kib": peak,
                      "ready_kib": ready,
                      "step_s": sorted(times[1:] or times)[len(times[1:] or times) // 2],
                      "first_step_s": times[0], "ckpt_bytes": ckpt_bytes}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default="full", choices=list(CONFIGS))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--grad_cp", action="store_true", help="recompute each block in backward "
                   "(model.segments.grad_cp, as the shipped LoRA / state-tuning configs do)")
    p.add_argument("--alloc", default="trainer", choices=["trainer", "reuse", "lean"],
                   help="CPU allocator setting: as the trainer picks it (lean for PEFT, page reuse for full), or "
                   "one of them for every configuration (rwkv/training/cpu_alloc.py)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for c in args.configs:
        # -P: the script's folder is not put on sys.path, so this file (peft.py) does not shadow `peft`
        cmd = [sys.executable, "-P", __file__, "--child", "--config", c, "--steps", str(args.steps), "--n_layer",
               str(args.n_layer), "--n_embd", str(args.n_embd), "--vocab", str(args.vocab), "--ctx", str(args.ctx)]
        cmd += ["--grad_cp"] if args.grad_cp else []
        cmd += ["--alloc", args.alloc]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if out.returncode != 0:
            sys.exit(f"{c} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    full = next((r for r in rows if r["config"] == "full"), None)
    print(f"x070 L{args.n_layer}-D{args.n_embd} vocab {args.vocab} ctx {args.ctx}, {args.steps} steps, "
          f"grad_cp {args.grad_cp}, allocator {args.alloc}, {os.cpu_count()} CPUs, torch threads default")
    print("| run | trainable params | RSS before step 1 | peak RSS | step time | checkpoint |"
          + (" RSS / full | ckpt / full |" if full else ""))
    print("|---|---|---|---|---|---|" + ("---|---|" if full else ""))
    for r in rows:
        line = (f"| {r['config']} | {r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f} %) | "
                f"{r['ready_kib'] / 2**20:.2f} GiB | {r['peak_kib'] / 2**20:.2f} GiB | {r['step_s']:.2f} s | "
                f"{r['ckpt_bytes'] / 2**20:.1f} MiB |")
        if full:
            line += (f" {r['peak_kib'] / full['peak_kib']:.2f} | "
                     f"{100 * r['ckpt_bytes'] / full['ckpt_bytes']:.2f} % |")
        print(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
