"""The `cuda` WKV-6 and WKV-5 backend: the kernels of rwkv/ops/csrc/wkv6_state.cu (docs/cuda.md), built by
rwkv/ops/build.py on first use; `auto` (rwkv/ops/dispatch.py) takes it only after `check` below passed on
that device against the `chunked` backend.

Contract as `rwkv.ops.wkv6/wkv5`: r, k, v run in bf16 when they are bf16 and in fp32 otherwise, while the
log-decay λ, the bonus u and the state [B, H, N(key), N(value)] are always fp32 (λ is unbounded below,
docs/model-spec.md §3.6). wkv5 is wkv6 with its [H, N] decay broadcast over (B, T). Any T; `reset` is
handled by the kernel.
"""

from __future__ import annotations

import torch

from ..build import HEAD_SIZE, SNAPSHOT_INTERVAL
from ..common import compare_with_oracle, kernel_dtype, rel_err, reset_mask, zero_state


class _WKV6State(torch.autograd.Function):
    """As rwkv/ops/v7/cuda.py's `_WKV7State` for rwkv/ops/csrc/wkv6_state.h; the per-batch ∂u [B,H,N] is summed here."""

    @staticmethod
    def forward(ctx, ext, r, w, k, v, u, s0, reset):
        y, sT = ext.forward(r, w, k, v, u, s0, reset)
        ctx.ext = ext
        ctx.save_for_backward(r, w, k, v, u, s0, reset)
        return y, sT

    @staticmethod
    def backward(ctx, dy, dsT):
        r, w, k, v, u, s0, reset = ctx.saved_tensors
        dr, dw, dk, dv, du, ds0 = ctx.ext.backward(
            r, w, k, v, u, dy.to(r.dtype).contiguous(), s0, reset, dsT.to(torch.float32).contiguous())
        return None, dr, dw, dk, dv, du.sum(0), ds0, None


def wkv6_with(ext, r, w, k, v, u, state=None, reset=None):
    """wkv6 through the kernel interface `ext` (no padding: the v6 kernel takes any T)."""
    B, T, H, N = r.shape
    kdt = kernel_dtype(r)
    r, k, v = (x.to(kdt).contiguous() for x in (r, k, v))
    w, u = w.to(torch.float32).contiguous(), u.to(torch.float32).contiguous()
    s0 = (zero_state(B, H, N, torch.float32, r.device) if state is None
          else state.to(torch.float32).contiguous())
    rst = None if reset is None else reset.contiguous()
    return _WKV6State.apply(ext, r, w, k, v, u, s0, rst)


def wkv5_with(ext, r, w, k, v, u, state=None, reset=None):
    """wkv5 = wkv6 with the time-invariant [H, N] log-decay broadcast (autograd sums its gradient)."""
    return wkv6_with(ext, r, w.expand(r.shape), k, v, u, state=state, reset=reset)


def wkv6_cuda(r, w, k, v, u, state=None, reset=None, **kw):
    """`rwkv.ops.wkv6` with backend='cuda' (other head sizes or CPU tensors: chunked, warned once)."""
    from ..dispatch import cuda_or_fallback

    return cuda_or_fallback("wkv6", wkv6_with, r, w, k, v, u, state=state, reset=reset, **kw)


def wkv5_cuda(r, w, k, v, u, state=None, reset=None, **kw):
    """`rwkv.ops.wkv5` with backend='cuda' (other head sizes or CPU tensors: chunked, warned once)."""
    from ..dispatch import cuda_or_fallback

    return cuda_or_fallback("wkv5", wkv5_with, r, w, k, v, u, state=state, reset=reset, **kw)


# ------------------------------------------------------------------------------------------ self-check
def inputs(B, T, H, N, device, gen, v5=False):
    """v6: λ = −exp(ω) with ω ∈ (−6, 2): from the init range (docs/model-spec.md §2.1) to decays that vanish within
    a step; u of order 1 (time_faaaa). v5: a time-invariant λ [H, N]."""
    def randn(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    r, k, v = randn(B, T, H, N), randn(B, T, H, N) * 0.5, randn(B, T, H, N)
    w_shape = (H, N) if v5 else (B, T, H, N)
    w = -torch.exp(torch.rand(*w_shape, generator=gen, dtype=torch.float64) * 8.0 - 6.0)
    u = randn(H, N) * 0.5
    s0 = randn(B, H, N, N) * 0.5
    dy, dsT = randn(B, T, H, N), randn(B, H, N, N) * 0.1
    return [x.to(device) for x in (r, w, k, v, u, s0, dy, dsT)]


def check(ext, device, dtype=torch.float32, reset: bool = False, v5: bool = False, B=2, T=37,
          H=2, N=HEAD_SIZE, seed=1234) -> dict:
    """As rwkv/ops/v7/cuda.py `check` for wkv6 (or wkv5 with `v5=True`); λ, u and the state stay fp32 in the kernel."""
    from ..dispatch import oracle

    gen = torch.Generator().manual_seed(seed)
    r, w, k, v, u, s0, dy, dsT = inputs(B, T, H, N, device, gen, v5=v5)
    rst = reset_mask(B, T, device, SNAPSHOT_INTERVAL) if reset else None
    fn = wkv5_with if v5 else wkv6_with
    out = compare_with_oracle(oracle("wkv5" if v5 else "wkv6")[1], lambda *x, **kw: fn(ext, *x, **kw),
                              [r, w, k, v, u, s0], 5, dy, dsT, dtype, rst, [True, False, True, True, False, False])
    names = ["y", "state", "dr", "dw", "dk", "dv", "du", "ds0"]
    return {n: rel_err(g, e) for n, g, e in zip(names, out["cuda"], out["oracle"])}


def check_v5(ext, device, **kw) -> dict:
    """`check` for wkv5 (a time-invariant [H, N] log-decay on the same kernel)."""
    return check(ext, device, v5=True, **kw)
