#!/usr/bin/env python3
"""WKV kernels on this CPU: chunked vs reference, forward + backward, fp32 (docs/benchmarks.md "WKV kernels").

Prints, from one run: (1) per op and shape the chunked and reference time per call and their ratio;
(2) the chunk sizes 16/32/64 side by side with their fp32 error against an fp64 reference; (3) wkv7's
`cpu` backend (the C recurrence, rwkv/ops/v7/cpu.py) against chunked, time and fp32 error.
Shapes H=12, N=64 (x070/x060 heads at C=768), B ∈ {1, 4}, T ∈ {512, 1024, 4096}.

    python bench/wkv.py                 # everything (~30 min; the reference loops dominate)
    python bench/wkv.py --quick         # B=1, T ≤ 1024, one repetition (~1 min)
    python bench/wkv.py --ops wkv6 wkv5 --skip-reference
    python bench/wkv.py --only-cpu      # table (3) only (~1 min)

Timing: best of --reps calls for chunked, --ref-reps for the reference (1 by default: it takes
minutes at T=4096); upstream gradients are dense random tensors as in training (loss = y.sum() would
hand in stride-0 gradients, an unrealistic case). The machine may be shared: every call first waits
(≤ 2 min) for other processes to use < 10% of the cores, disturbed calls shorter than 30 s are
repeated (twice at most), and a time still marked `!` had others using more than 10% of the cores
during the measured call (from /proc/stat).
`loop*` (wkv7 only) is the reference recurrence written with `unbind` instead of `x[:, t]` indexing,
whose backward materialises one full-size gradient per step and so grows with T²; it shows how much
of the wkv7 ratio comes from that.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import torch

from rwkv.ops import build, dispatch  # noqa: E402
from rwkv.ops.v6.chunked import DEFAULT_CHUNK as C6  # noqa: E402
from rwkv.ops.v6.chunked import wkv5_chunked, wkv6_chunked  # noqa: E402
from rwkv.ops.v6.reference import wkv5_reference, wkv6_reference  # noqa: E402
from rwkv.ops.v7 import cpu as v7_cpu  # noqa: E402
from rwkv.ops.v7.chunked import DEFAULT_CHUNK as C7  # noqa: E402
from rwkv.ops.v7.chunked import wkv7_chunked  # noqa: E402
from rwkv.ops.v7.reference import wkv7_reference  # noqa: E402

H, N = 12, 64


def make_inputs(op: str, B: int, T: int, H: int, N: int, decay: str = "init", dtype=torch.float32) -> dict:
    """Inputs in the real range: x070 λ = −e^{−½}σ(ω), a = −κ̂, b = κ̂⊙α (docs/model-spec.md §1.3); x060/x052 ω from
    the time_decay init ramp −6…−1 (docs/model-spec.md §2.1), or with `decay="fast"` two channels per head at
    trained-model fast decays (λ ≈ −e^{2…3}, which take the pairwise path)."""
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    x = dict(r=rnd(B, T, H, N), k=rnd(B, T, H, N), v=rnd(B, T, H, N))
    if op == "wkv7":
        kappa = torch.nn.functional.normalize(rnd(B, T, H, N), dim=-1)
        alpha = torch.rand(B, T, H, N, generator=g, dtype=torch.float64)
        x.update(w=-math.exp(-0.5) * torch.sigmoid(2 * rnd(B, T, H, N)), a=-kappa, b=kappa * alpha)
    else:
        n = torch.arange(H * N, dtype=torch.float64)
        omega = (-6 + 5 * (n / (H * N - 1)) ** 1.35).view(H, N)
        if op == "wkv6":
            omega = omega + 0.3 * rnd(B, T, H, N)
        if decay == "fast":
            omega[..., :2] = 2.5
        x.update(w=-torch.exp(omega), u=0.5 * rnd(H, N))
    order = ["r", "w", "k", "v", "a", "b"] if op == "wkv7" else ["r", "w", "k", "v", "u"]
    return {name: x[name].to(dtype) for name in order}


def wkv7_loop_unbind(r, w, k, v, a, b, state=None, reset=None):
    """`loop*`: wkv7_reference's recurrence (docs/model-spec.md §1.3) with per-step slices taken by unbind."""
    B, T, H, N_ = r.shape
    S = torch.zeros(B, H, N_, N_, dtype=r.dtype) if state is None else state
    ys = []
    for r_t, d_t, k_t, v_t, a_t, b_t in zip(*(x.unbind(1) for x in (r, torch.exp(w), k, v, a, b))):
        sa = torch.einsum("bhij,bhj->bhi", S, a_t)
        S = S * d_t[:, :, None, :] + sa[..., None] * b_t[:, :, None, :] + v_t[..., None] * k_t[:, :, None, :]
        ys.append(torch.einsum("bhij,bhj->bhi", S, r_t))
    return torch.stack(ys, 1), S


OPS = {  # name -> (chunked, reference, loop*)
    "wkv7": (wkv7_chunked, wkv7_reference, wkv7_loop_unbind),
    "wkv6": (wkv6_chunked, wkv6_reference, None),
    "wkv5": (wkv5_chunked, wkv5_reference, None),
}


def _busy_seconds() -> float:
    """CPU seconds spent by all processes on the machine so far (from /proc/stat; 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return 0.0
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def others_share(seconds: float) -> float:
    """Share of the machine's cores used by other processes over the next `seconds`."""
    b0, o0 = _busy_seconds(), _own_seconds()
    time.sleep(seconds)
    return max(0.0, (_busy_seconds() - b0) - (_own_seconds() - o0)) / (seconds * (os.cpu_count() or 1))


def wait_quiet(max_wait: float = 120.0) -> None:
    """Wait (up to max_wait s) until other processes use under 10% of the cores for a second."""
    t0 = time.perf_counter()
    while others_share(1.0) > 0.1 and time.perf_counter() - t0 < max_wait:
        pass


def fwd_bwd(fn, inputs: dict, reps: int, retries: int = 2, **kw) -> tuple[float, float]:
    """Best wall time of `reps` forward+backward calls with dense upstream gradients, and the share of
    the machine's cores that other processes used during that call. The machine is shared: each call
    waits for a quiet moment, and up to `retries` extra calls replace ones that others disturbed."""
    leaves = [x.clone().requires_grad_() for x in inputs.values()]
    B, T, H_, N_ = inputs["r"].shape
    g = torch.Generator().manual_seed(1)
    gy, gS = torch.randn(B, T, H_, N_, generator=g), torch.randn(B, H_, N_, N_, generator=g)
    results, clean = [], 0
    while clean < reps and len(results) < reps + retries:
        for x in leaves:
            x.grad = None
        wait_quiet()
        b0, o0, t0 = _busy_seconds(), _own_seconds(), time.perf_counter()
        y, S = fn(*leaves, **kw)
        torch.autograd.backward((y, S), (gy.to(y.dtype), gS.to(S.dtype)))
        dt = time.perf_counter() - t0
        others = max(0.0, (_busy_seconds() - b0) - (_own_seconds() - o0)) / (dt * (os.cpu_count() or 1))
        results.append((others > 0.1, dt, others))
        clean += others <= 0.1
        del y, S
        if dt > 30 and len(results) >= reps:  # minutes-long reference calls: no repeats, keep the flag
            break
    _, best, others = min(results)  # undisturbed calls first, then the fastest
    return best, others


def cell(t: float, others: float, width: int, digits: int) -> str:
    """A time, marked `!` when other processes used more than 10% of the machine meanwhile."""
    return f"{t:{width - 1}.{digits}f}" + ("!" if others > 0.1 else " ")


def mem_available() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def reference_fits(B: int, T: int) -> tuple[bool, str]:
    """A per-token loop keeps ~3 state-sized tensors per step for backward (measured: ~13 GB at B=4,
    T=4096); refuse rather than push a shared 24 GB machine into swapless OOM."""
    need = 3 * T * B * H * N * N * 4 + (2 << 30)
    have = mem_available()
    return need < 0.8 * have, f"needs ~{need / 2**30:.0f} GiB, {have / 2**30:.0f} GiB available"


def ratio_table(args) -> None:
    print("\n## chunked vs reference (forward+backward, fp32, s per call)")
    print(f"{'op':6} {'B':>2} {'T':>5} {'c':>3} {'chunked':>10} {'reference':>11} {'ratio':>7} "
          f"{'loop*':>9} {'ratio*':>7}")
    for op in args.ops:
        chunked, reference, loop = OPS[op]
        c = C7 if op == "wkv7" else C6
        for B in args.batch:
            for T in args.T:
                x = make_inputs(op, B, T, H, N)
                t_c, o_c = fwd_bwd(chunked, x, args.reps)
                cells = [cell(t_c, o_c, 10, 3)]
                ok, why = reference_fits(B, T)
                if args.skip_reference or not ok:
                    cells += [f"{'skipped':>11}", "", "", ""]
                    note = "" if args.skip_reference else f"  (reference skipped: {why})"
                else:
                    t_r, o_r = fwd_bwd(reference, x, args.ref_reps)
                    cells += [cell(t_r, o_r, 11, 2), f"{t_r / t_c:6.1f}x"]
                    if loop is not None:
                        t_l, o_l = fwd_bwd(loop, x, args.ref_reps)
                        cells += [cell(t_l, o_l, 9, 2), f"{t_l / t_c:6.1f}x"]
                    note = ""
                print(f"{op:6} {B:>2} {T:>5} {c:>3} " + " ".join(cells) + note, flush=True)


def rel_errors(op: str, c: int) -> float:
    """Max over y, final state and all input gradients of max|fp32 chunked − fp64 reference| / max|ref|,
    at B=1, T=256, H=2, N=64 (fast decays included for v5/v6)."""
    chunked, reference, _ = OPS[op]
    x64 = make_inputs(op, 1, 256, 2, N, decay="fast", dtype=torch.float64)
    x32 = {n: t.float() for n, t in x64.items()}
    s0 = 0.5 * torch.randn(1, 2, N, N, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    outs = []
    for fn, x, kw in ((reference, x64, {}), (chunked, x32, {"chunk_size": c})):
        leaves = [t.clone().requires_grad_() for t in x.values()]
        s = s0.to(leaves[0].dtype).requires_grad_()
        y, S = fn(*leaves, state=s, **kw)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        loss = (y * gy.to(y.dtype)).sum() + S.square().sum()
        outs.append([y, S, *torch.autograd.grad(loss, leaves + [s])])
    return max(((a.double() - b).abs().max() / b.abs().max()).item() for a, b in zip(outs[1], outs[0]))


def chunk_table(args) -> None:
    print("\n## chunk sizes (chunked forward+backward, fp32, s per call; error = max rel vs fp64 reference)")
    print(f"{'op':6} {'decays':6} {'B':>2} {'T':>5} " + " ".join(f"{'c=' + str(c):>9}" for c in args.chunks)
          + "  fastest")
    for op in args.ops:
        decays = ["init", "fast"] if op != "wkv7" else ["-"]
        for decay in decays:
            for B in args.batch:
                T = max(args.T)
                x = make_inputs(op, B, T, H, N, decay=decay if decay != "-" else "init")
                # interleaved repetitions, so that a burst of load elsewhere hits every size alike
                times = {c: (float("inf"), 0.0) for c in args.chunks}
                for _ in range(args.reps):
                    for c in args.chunks:
                        times[c] = min(times[c], fwd_bwd(OPS[op][0], x, 1, retries=1, chunk_size=c),
                                       key=lambda r: (r[1] > 0.1, r[0]))
                best = min(times, key=lambda c: times[c][0])
                row = " ".join(cell(*times[c], 9, 3) for c in args.chunks)
                print(f"{op:6} {decay:6} {B:>2} {T:>5} {row}  c={best}", flush=True)
        errs = {c: rel_errors(op, c) for c in args.chunks}
        print(f"{op:6} {'error':6} {'':>2} {'':>5} " + " ".join(f"{errs[c]:9.1e}" for c in args.chunks))


def cpu_table(args) -> None:
    """wkv7 `cpu` (C) vs chunked, side by side in one run, plus the training step's head count (H=8)."""
    lib = build.library()
    if lib is None or not dispatch.cpu_ready("wkv7"):
        print(f"\n## wkv7 cpu backend unavailable here: {build._lib}")
        return
    cpu = lambda *t, **kw: v7_cpu.wkv7_with(lib, *t, **kw)
    print(f"\n## wkv7: cpu (C, {'OpenMP' if lib.openmp else 'Python threads'}) vs chunked "
          "(forward+backward, fp32, ms per call)")
    print(f"{'H':>2} {'B':>2} {'T':>5} {'chunked':>9} {'cpu':>9} {'ratio':>7}")
    for heads in (H, 8):
        for B in args.batch:
            for T in args.T:
                x = make_inputs("wkv7", B, T, heads, N)
                t_c, o_c = fwd_bwd(wkv7_chunked, x, args.reps)
                t_k, o_k = fwd_bwd(cpu, x, args.reps)
                print(f"{heads:>2} {B:>2} {T:>5} {cell(1e3 * t_c, o_c, 9, 1)} {cell(1e3 * t_k, o_k, 9, 1)} "
                      f"{t_c / t_k:6.1f}x", flush=True)
    x64 = make_inputs("wkv7", 1, 256, 2, N, decay="init", dtype=torch.float64)
    outs = []
    for fn, x in ((wkv7_reference, x64), (cpu, {n: t.float() for n, t in x64.items()})):
        leaves = [t.clone().requires_grad_() for t in x.values()]
        y, S = fn(*leaves)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        outs.append([y, S, *torch.autograd.grad((y * gy.to(y.dtype)).sum() + S.square().sum(), leaves)])
    err = max(((a.double() - b).abs().max() / b.abs().max()).item() for a, b in zip(outs[1], outs[0]))
    print(f"cpu fp32 error (max rel vs fp64 reference, y, S and all gradients, T=256): {err:.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="B=1, T in {512, 1024}, one repetition")
    p.add_argument("--ops", nargs="*", default=list(OPS), choices=list(OPS))
    p.add_argument("--batch", type=int, nargs="*", default=[1, 4])
    p.add_argument("-T", type=int, nargs="*", default=[512, 1024, 4096])
    p.add_argument("--chunks", type=int, nargs="*", default=[16, 32, 64])
    p.add_argument("--reps", type=int, default=5, help="chunked: best of this many calls")
    p.add_argument("--ref-reps", type=int, default=1, help="reference: best of this many calls")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--skip-chunks", action="store_true", help="no chunk-size table")
    p.add_argument("--only-cpu", action="store_true", help="only the wkv7 cpu-vs-chunked table")
    args = p.parse_args()
    if args.quick:
        args.batch, args.T, args.reps = [1], [512, 1024], 1
    load = os.getloadavg()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(f"# {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"python {platform.python_version()}, load average {load[0]:.1f} at start")
    print(f"# default chunks: wkv7 {C7}, wkv6/wkv5 {C6}; H={H}, N={N}")
    t0 = time.perf_counter()
    for op in args.ops:  # warm-up: first calls pay one-time library initialisation
        for fn in OPS[op]:
            if fn is not None:
                fwd_bwd(fn, make_inputs(op, 1, 64, H, N), 1, retries=0)
    if not args.only_cpu:
        ratio_table(args)
        if not args.skip_chunks:
            chunk_table(args)
    cpu_table(args)
    print(f"\n# total {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
