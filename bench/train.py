#!/usr/bin/env python3
"""Training-step throughput and MFU on this CPU.

One step = forward + backward through the real segment loop (rwkv.training.segments) with the fused
head/CE/L2Wrap loss, global-norm clipping at 1.0 and the official AdamW groups — what RWKVLitModule runs
per optimizer step. MFU = 6 · (parameters except emb.weight) · tokens/s ÷ the fp32 2048³ matmul FLOP/s
measured in the same run with the same thread count. Best of N steps after a warm-up.

    python bench/train.py                 # L6-D512, ctx 512, micro batch 4, fp32, vocab 65536 and 1024
    python bench/train.py --steps 3 --vocab 1024
    python bench/train.py --pytorch-kernels   # also the same step with the C CPU kernels switched off
    python bench/train.py --host-sync         # also the same step with the old per-segment read-backs
    python bench/train.py --device cuda --vocab 65536 --host-sync   # on a GPU (bf16 autocast)

The C CPU kernels (rwkv/ops/v7/cpu.py, rwkv/ops/mix/cpu.py: WKV-7 and the token-shift mixes) are what the trainer uses
by default on CPU; `--pytorch-kernels` adds a second measurement of each vocab in the same run with the
PyTorch implementations (chunked WKV-7, the mix formula), the path taken without a C compiler.
`--host-sync` adds the step as it was before the segment loop kept its sums on the device: a `float()` of
every segment's loss and of every micro batch's learned-token count (each one waits for the device).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rwkv.model import RWKVConfig, build_model  # noqa: E402
from rwkv.ops import build, dispatch  # noqa: E402
from rwkv.training.cpu_alloc import tune_cpu_allocator  # noqa: E402
from rwkv.training.loss import head_ce_l2wrap  # noqa: E402
from rwkv.training.optim import build_optimizer, param_groups  # noqa: E402
from rwkv.training.segments import run_sample  # noqa: E402


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_flops(n: int = 2048, reps: int = 5, device: str = "cpu") -> float:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def bench_step(vocab: int, n_layer: int, n_embd: int, ctx: int, batch: int, steps: int, bptt: str,
               device: str = "cpu", host_sync: bool = False, segments: int = 1) -> dict:
    torch.manual_seed(0)
    model = build_model(RWKVConfig(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab), init=True).to(device)
    opt = build_optimizer(param_groups(model, 0.0), 6e-4, (0.9, 0.99), 1e-18)
    ids = torch.randint(0, vocab, (batch, ctx * segments + 1), device=device)
    mask = torch.ones(batch, ctx * segments + 1, device=device)
    loss_fn = lambda h, tg, wt: head_ce_l2wrap(h, model.head.weight, tg, wt)
    if host_sync:  # the old loop: every segment's loss read back for the log and the finiteness check
        fused = loss_fn
        loss_fn = lambda h, tg, wt: (lambda v: (float(v.detach()), v)[1])(fused(h, tg, wt))
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast(
        "cpu", enabled=False)

    def step():
        if host_sync:
            float(mask[:, 1:].sum())  # and the learned-token count of every micro batch
        with autocast:
            run_sample(model, ids, mask, ctx, bptt, loss_fn, lambda t: t.backward())
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    times, peaks = [], []
    for _ in range(steps):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
        peaks.append(matmul_flops(reps=3, device=device))  # next to every step: this VM's speed drifts ±15%
    n_params = sum(p.numel() for n, p in model.named_parameters() if n != "emb.weight")
    best = min(times)
    return {"vocab": vocab, "params_no_emb": n_params, "best_s": best, "tok_s": batch * ctx * segments / best,
            "times": times, "peaks": peaks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, nargs="*", default=[65536, 1024])
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--n_embd", type=int, default=512)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--bptt", default="truncated")
    p.add_argument("--pytorch-kernels", action="store_true",
                   help="also measure each vocab with the C CPU kernels off (PyTorch WKV-7 and mixes)")
    p.add_argument("--host-sync", action="store_true",
                   help="also measure the step with the old per-segment host read-backs (float(loss))")
    p.add_argument("--segments", type=int, default=1, help="segments per sample (ctx each)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--default-malloc", action="store_true",
                   help="keep glibc's default allocator settings (the trainer tunes them, cpu_alloc.py)")
    args = p.parse_args()
    tuned = False if args.default_malloc else tune_cpu_allocator()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"allocator {'tuned as in the trainer' if tuned else 'glibc defaults'}")
    c_ok = dispatch.cpu_ready("wkv7") and dispatch.cpu_ready("mix")
    lib = build.library()
    print(f"C CPU kernels: {'on' if c_ok else 'UNAVAILABLE'}"
          + (f" ({'OpenMP' if lib.openmp else 'Python threads'})" if lib is not None else ""))
    peak = matmul_flops(device=args.device)
    print(f"{'bf16' if args.device == 'cuda' else 'fp32'} 2048^3 matmul: {peak / 1e9:.1f} GFLOP/s")
    runs = [(v, True, False) for v in args.vocab]
    if args.pytorch_kernels:
        runs = [(v, c, False) for v in args.vocab for c in (True, False)]
    if args.host_sync:  # side by side: each configuration without, then with the old read-backs
        runs = [(v, c, h) for v, c, _ in runs for h in (False, True)]
    saved = dict(dispatch._cpu_verdicts)
    for v, use_c, host_sync in runs:
        dispatch._cpu_verdicts.update(saved if use_c else {"wkv7": False, "mix": False})
        r = bench_step(v, args.n_layer, args.n_embd, args.ctx, args.batch, args.steps, args.bptt,
                       device=args.device, host_sync=host_sync, segments=args.segments)
        # conservative: the fastest matmul seen anywhere in the run against the fastest step
        peak_used = max(peak, *r["peaks"])
        mfu = 6 * r["params_no_emb"] * r["tok_s"] / peak_used
        med = statistics.median(r["times"])
        kernels = "cuda" if args.device == "cuda" else "C kernels" if use_c and c_ok else "PyTorch kernels"
        kernels += ", per-segment host syncs (old)" if host_sync else ""
        print(f"L{args.n_layer}-D{args.n_embd} ctx {args.ctx}x{args.segments} B{args.batch} vocab {v}, {kernels}: "
              f"{r['params_no_emb'] / 1e6:.1f}M params (no emb), best step {r['best_s']:.2f} s "
              f"({', '.join(f'{t:.2f}' for t in r['times'])}), {r['tok_s']:.0f} tok/s, "
              f"MFU {100 * mfu:.1f}% (median step {med:.2f} s: {100 * mfu * r['best_s'] / med:.1f}%) "
              f"(matmul {peak_used / 1e9:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
