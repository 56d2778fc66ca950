"""The token-shift mixes in C (rwkv/ops/csrc/mix_cpu.c), fp32: x is read once for all mix vectors and the
backward is fused; ~40 memory-bound elementwise passes per layer in PyTorch become a few (docs/benchmarks.md,
"Training step"). Built by rwkv/ops/build.py; `auto` takes it after `self_check` below passed against the
formula (rwkv/ops/mix/reference.py) in fp64. Work is split over (b, t) rows in fixed ranges; gradients
reach x, x_prev and the mix vectors.
"""

from __future__ import annotations

import ctypes

import torch

from ..build import require_c
from ..common import compare_fp64, n_parts, ptr, run_parts

SELF_CHECK_TOL = 1e-5  # fp32 rounding, as the WKV-7 C kernel's


class _MixCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, x, x_prev, reset, m):
        B, T, C = x.shape
        K = m.shape[0]
        outs = [torch.empty_like(x) for _ in range(K)]
        ptrs = (ctypes.c_void_p * K)(*[o.data_ptr() for o in outs])
        run_parts(lib, lib.mix_forward, B * T, [B, T, C, K, *map(ptr, (x, x_prev, reset, m)), ptrs])
        ctx.lib = lib
        ctx.set_materialize_grads(False)  # an unused mix hands in None: the kernel skips it
        ctx.save_for_backward(x, x_prev, reset, m)
        return tuple(outs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *gs):
        x, x_prev, reset, m = ctx.saved_tensors
        B, T, C = x.shape
        K = m.shape[0]
        gs = [None if g is None else g.to(torch.float32).contiguous() for g in gs]
        ptrs = (ctypes.c_void_p * K)(*[None if g is None else g.data_ptr() for g in gs])
        gx = torch.empty_like(x)
        gx_prev = torch.empty_like(x_prev) if ctx.needs_input_grad[2] else None
        gm = x.new_empty(n_parts(B * T), K, C)  # one partial sum per part, added up below in a fixed order
        run_parts(ctx.lib, ctx.lib.mix_backward, B * T,
                   [B, T, C, K, *map(ptr, (x, x_prev, reset, m)), ptrs, ptr(gx), ptr(gx_prev), ptr(gm)])
        return None, gx, gx_prev, None, gm.sum(0)


def token_shift_mix_with(lib, x, x_prev, reset, mixes):
    """the token-shift mixes through the loaded library, in fp32 (casts are autograd ops)."""
    B, T, C = x.shape
    dt = x.dtype
    x32 = x.to(torch.float32).contiguous()
    xp = x_prev.to(torch.float32).contiguous()
    m = torch.cat([mm.reshape(1, C) for mm in mixes]).to(torch.float32).contiguous()
    rst = None if reset is None else reset.to(torch.uint8).contiguous()
    outs = _MixCPU.apply(lib, x32, xp, rst, m)
    return [o.to(dt) for o in outs]


def token_shift_mix_cpu(x, x_prev, reset, mixes):
    return token_shift_mix_with(require_c("token_shift_mix", x.device), x, x_prev, reset, mixes)


def self_check(lib) -> tuple[bool, str]:
    """Outputs and every gradient against the formula in fp64, with resets at the first, a middle and the last
    token."""
    from .reference import token_shift_mix_reference

    g = torch.Generator().manual_seed(1234)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    B, T, C, K = 3, 7, 40, 3
    x = dict(x=rnd(B, T, C), x_prev=rnd(B, C), m=rnd(K, 1, 1, C))
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, 0] = reset[1, 3] = reset[2, T - 1] = True
    call = lambda fn: lambda t: fn(t["x"], t["x_prev"], reset, list(t["m"]))
    return compare_fp64(call(lambda *a: token_shift_mix_with(lib, *a)), call(token_shift_mix_reference), x,
                        list(rnd(K, B, T, C)), tuple(f"out{i}" for i in range(K)), SELF_CHECK_TOL)
