"""RWKV-7's key preparation in C (rwkv/ops/csrc/kk_cpu.c), fp32: one pass forward and one backward instead
of ~30 PyTorch ops (docs/benchmarks.md, "Training step"). Built by rwkv/ops/build.py; `auto` takes it after
`self_check` below passed against the formula (rwkv/ops/keys/reference.py) in fp64.
"""

from __future__ import annotations

import torch

from ..build import require_c
from ..common import compare_fp64, n_parts, ptr, run_parts

SELF_CHECK_TOL = 1e-5  # fp32 rounding, as the WKV-7 C kernel's


class _KeysCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, n_head, k, a, k_k, k_a):
        B, T, C = k.shape
        outs = [torch.empty_like(k) for _ in range(3)]
        run_parts(lib, lib.kk_forward, B * T, [B, T, n_head, C // n_head, *map(ptr, (k, a, k_k, k_a, *outs))])
        ctx.lib, ctx.n_head = lib, n_head
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(k, a, k_k, k_a)
        return tuple(outs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_k, g_a, g_b):
        k, a, k_k, k_a = ctx.saved_tensors
        B, T, C = k.shape
        gs = [None if g is None else g.to(torch.float32).contiguous() for g in (g_k, g_a, g_b)]
        gk, ga = torch.empty_like(k), torch.empty_like(a)
        n = n_parts(B * T)
        g_kk, g_ka = k.new_empty(n, C), k.new_empty(n, C)  # per-part partial sums, added below in order
        run_parts(ctx.lib, ctx.lib.kk_backward, B * T,
                   [B, T, ctx.n_head, C // ctx.n_head, *map(ptr, (k, a, k_k, k_a, *gs, gk, ga, g_kk, g_ka))])
        return None, None, gk, ga, g_kk.sum(0).view_as(k_k), g_ka.sum(0).view_as(k_a)


def wkv7_keys_with(lib, k, a, k_k, k_a, n_head):
    """the key preparation through the loaded library, in fp32 (casts are autograd ops)."""
    dt = k.dtype
    k32, a32, kk32, ka32 = (t.to(torch.float32).contiguous() for t in (k, a, k_k, k_a))
    return [o.to(dt) for o in _KeysCPU.apply(lib, n_head, k32, a32, kk32, ka32)]


def wkv7_keys_cpu(k, a, k_k, k_a, n_head):
    return wkv7_keys_with(require_c("wkv7_keys", k.device), k, a, k_k, k_a, n_head)


def self_check(lib) -> tuple[bool, str]:
    """Outputs and every gradient against the formula in fp64, including a head whose k ⊙ k_k is 0."""
    from .reference import wkv7_keys_reference

    g = torch.Generator().manual_seed(1234)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    B, T, H, N = 2, 5, 3, 16
    x = dict(k=rnd(B, T, H * N), a=torch.sigmoid(rnd(B, T, H * N)), k_k=rnd(1, 1, H * N), k_a=rnd(1, 1, H * N))
    x["k"][0, 1, :N] = 0.0  # the eps clamp's branch
    call = lambda fn: lambda t: fn(t["k"], t["a"], t["k_k"], t["k_a"], H)
    return compare_fp64(call(lambda *a: wkv7_keys_with(lib, *a)), call(wkv7_keys_reference), x,
                        list(rnd(3, B, T, H * N)), ("k", "a_in", "b_in"), SELF_CHECK_TOL)
