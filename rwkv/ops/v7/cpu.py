"""The `cpu` WKV-7 backend: the recurrence in C (rwkv/ops/csrc/wkv7_cpu.c), fp32.

Why: on the 2-core machines here the chunked PyTorch WKV-7 (docs/model-spec.md §3.4) spends ~80 ms per layer of a
L6-D512 training step in small batched matmuls and elementwise temporaries; the recurrence with the
64×64 state in L1 does the same work in a fraction of that (docs/benchmarks.md, "WKV kernels").

The library is built by rwkv/ops/build.py; `auto` (rwkv/ops/dispatch.py) takes this backend only after
`self_check` below passed against the fp64 `chunked` backend. Contract as `rwkv.ops.wkv7`. Inputs of any
float dtype run in fp32 (fp64 inputs are for tight tests and go to `chunked` under `auto`); the state is
fp32 [B, H, N(value), N(key)]. Work is split over `torch.get_num_threads()` parts ((b, h) pairs) in
fixed ranges, so results do not depend on timing; they run on torch's OpenMP pool when the library was
built with -fopenmp, else on Python threads. Gradients reach every input including the initial state;
double backward is not supported.
"""

from __future__ import annotations

import torch

from ..build import require_c
from ..common import check_log_decay, compare_fp64, ptr, run_parts, zero_state

# State snapshot interval of the backward (tokens): the forward keeps T/SPAN states per (b, h) for the
# backward, which recomputes SPAN+1 states at a time into a buffer (528 KB at N=64, L2-resident). Measured
# fwd+bwd (machine B) for SPAN 16/32/64: H8 B4 T512 22.5/20.4/19.1 ms; H12 B4 T4096 424/393/377 ms;
# H12 B1 T4096 80/80/85 ms. 32 halves 16's snapshot memory (B·H·T/32 states: 100 MB at H12 B4 T4096)
# and keeps the buffer inside a 1 MB L2; 64 gains little more.
SPAN = 32
# Self-check tolerance: max |C − fp64 reference| / max |reference| per tensor; fp32 rounding (the C
# kernel measured ~3e-7 on these inputs)
SELF_CHECK_TOL = 1e-4


class _WKV7CPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, need_grad, r, w, k, v, a, b, s0, reset):
        B, T, H, N = r.shape
        y, sT = torch.empty_like(r), torch.empty_like(s0)
        d = torch.exp(w)  # the C loops take the decay itself: a vectorised exp here, none per step there
        span = SPAN  # read once: the backward must use the forward's snapshot interval
        snaps = r.new_empty(B, H, -(-T // span), N, N) if need_grad else None
        run_parts(lib, lib.wkv7_forward, B * H,
                   [B, T, H, N, span, *map(ptr, (r, d, k, v, a, b, s0, reset, y, sT, snaps))])
        if need_grad:
            ctx.lib, ctx.span = lib, span
            ctx.save_for_backward(r, d, k, v, a, b, reset, snaps)
        return y, sT

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dsT):
        r, d, k, v, a, b, reset, snaps = ctx.saved_tensors
        B, T, H, N = r.shape
        dy, dsT = (g.to(torch.float32).contiguous() for g in (dy, dsT))  # materialised: never None here
        grads = [torch.empty_like(r) for _ in range(6)]
        ds0 = torch.empty_like(dsT)
        run_parts(ctx.lib, ctx.lib.wkv7_backward, B * H,
                   [B, T, H, N, ctx.span, *map(ptr, (r, d, k, v, a, b, reset, snaps, dy, dsT, *grads, ds0))])
        dr, dw, dk, dv, da, db = grads
        return None, None, dr, dw, dk, dv, da, db, ds0, None


def wkv7_with(lib, r, w, k, v, a, b, state=None, reset=None):
    """wkv7 through the loaded library: cast to contiguous fp32, call. Casts are autograd ops, so
    gradients come back in the input dtypes."""
    B, T, H, N = r.shape
    r, w, k, v, a, b = (x.to(torch.float32).contiguous() for x in (r, w, k, v, a, b))
    s0 = zero_state(B, H, N, torch.float32, r.device) if state is None else state.to(torch.float32).contiguous()
    rst = None if reset is None else reset.to(torch.uint8).contiguous()
    # snapshots for the backward only when one can follow (needs_input_grad ignores no_grad mode)
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (r, w, k, v, a, b, s0))
    return _WKV7CPU.apply(lib, need_grad, r, w, k, v, a, b, s0, rst)


def wkv7_cpu(r, w, k, v, a, b, state=None, reset=None, **kw):
    """`rwkv.ops.wkv7` with backend='cpu' (CPU tensors; fp64 inputs are computed in fp32 here)."""
    lib = require_c("wkv7", r.device)
    check_log_decay("wkv7 cpu", w)  # the recurrence holds for any λ ≤ 0; refuse NaN, ω or exp(λ)
    return wkv7_with(lib, r, w, k, v, a, b, state=state, reset=reset)


def self_check(lib) -> tuple[bool, str]:
    """Outputs and every gradient against the fp64 `chunked` backend on a small case with resets, a T that is
    not a multiple of SPAN and head size 64 as the models use."""
    from .chunked import wkv7_chunked

    g = torch.Generator().manual_seed(1234)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    B, T, H, N = 2, 2 * SPAN + 5, 2, 64
    kappa = torch.nn.functional.normalize(rnd(B, T, H, N), dim=-1)
    x = dict(r=rnd(B, T, H, N), w=-0.6065 * torch.sigmoid(2 * rnd(B, T, H, N)), k=rnd(B, T, H, N),
             v=rnd(B, T, H, N), a=-kappa, b=kappa * torch.rand(B, T, H, N, generator=g, dtype=torch.float64),
             s0=0.3 * rnd(B, H, N, N))
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, SPAN + 3] = reset[1, SPAN] = True
    call = lambda fn: lambda t: fn(*(t[n] for n in "rwkvab"), state=t["s0"], reset=reset)
    return compare_fp64(call(lambda *a, **kw: wkv7_with(lib, *a, **kw)), call(wkv7_chunked), x,
                        [rnd(B, T, H, N), rnd(B, H, N, N)], ("y", "S"), SELF_CHECK_TOL)
