"""The `cuda` WKV-7 backend: the kernels of rwkv/ops/csrc/wkv7_state.cu (docs/cuda.md), built by rwkv/ops/build.py on
first use; `auto` (rwkv/ops/dispatch.py) takes it only after `check` below passed on that device against
the `chunked` backend.

Contract as `rwkv.ops.wkv7`: inputs [B, T, H, N] of any float dtype run in a bf16 kernel when they are
bf16 and in an fp32 kernel otherwise; the state is fp32 [B, H, N(value), N(key)]; T is padded to a
multiple of the kernel's snapshot interval with λ = 0 and zeros (docs/model-spec.md §3.4: the outputs and
the final state are unchanged); `reset` is handled by the kernel. Gradients reach r, w, k, v, a, b and the
initial state.
"""

from __future__ import annotations

import math

import torch

from ..build import HEAD_SIZE, SNAPSHOT_INTERVAL
from ..common import compare_with_oracle, kernel_dtype, pad_time, rel_err, reset_mask, zero_state


class _WKV7State(torch.autograd.Function):
    """Calls `ext.forward/backward` (the C++ binding, or a stand-in with the same interface in tests)
    on padded, contiguous inputs of the kernel dtype; see rwkv/ops/csrc/wkv7_state.h for the buffers."""

    @staticmethod
    def forward(ctx, ext, r, w, k, v, a, b, s0, reset):
        y, sT, snaps, sa = ext.forward(r, w, k, v, a, b, s0, reset)
        ctx.ext = ext
        ctx.save_for_backward(r, w, k, v, a, b, s0, reset, snaps, sa)
        return y, sT

    @staticmethod
    def backward(ctx, dy, dsT):
        r, w, k, v, a, b, s0, reset, snaps, sa = ctx.saved_tensors
        dr, dw, dk, dv, da, db, ds0 = ctx.ext.backward(
            r, w, k, v, a, b, dy.to(r.dtype).contiguous(), s0, reset, snaps, sa,
            dsT.to(torch.float32).contiguous())
        return None, dr, dw, dk, dv, da, db, ds0, None


def wkv7_with(ext, r, w, k, v, a, b, state=None, reset=None):
    """wkv7 through the kernel interface `ext`: pad T to a multiple of SNAPSHOT_INTERVAL, cast, call, crop.

    Padding and casts are ordinary autograd ops, so gradients come back unpadded in the input dtypes.
    """
    B, T, H, N = r.shape
    kdt = kernel_dtype(r)
    T_pad = -(-T // SNAPSHOT_INTERVAL) * SNAPSHOT_INTERVAL
    # Pad with λ = 0 (decay 1) and zeros: outputs and final state are unchanged (docs/model-spec.md §3.4).
    r, w, k, v, a, b = (pad_time(x.to(kdt), T_pad).contiguous() for x in (r, w, k, v, a, b))
    s0 = (zero_state(B, H, N, torch.float32, r.device) if state is None
          else state.to(torch.float32).contiguous())
    rst = None if reset is None else pad_time(reset, T_pad, value=False).contiguous()
    y, sT = _WKV7State.apply(ext, r, w, k, v, a, b, s0, rst)
    return y[:, :T], sT


def wkv7_cuda(r, w, k, v, a, b, state=None, reset=None, **kw):
    """`rwkv.ops.wkv7` with backend='cuda'. Head sizes other than HEAD_SIZE (and CPU tensors) fall
    back to `chunked`, warned once, so that `auto` never fails for a model the kernel was not
    compiled for."""
    from ..dispatch import cuda_or_fallback

    return cuda_or_fallback("wkv7", wkv7_with, r, w, k, v, a, b, state=state, reset=reset, **kw)


# ------------------------------------------------------------------------------------------ self-check
def inputs(B, T, H, N, device, gen):
    """Random inputs in the real value range (docs/model-spec.md §1.3): λ = −e^{−1/2}σ(ω) (incl. values near
    the clamp), a = −κ̂, b = κ̂⊙α with κ̂ unit-norm per head, α ∈ (0,1), r/k/v of order 1."""
    def randn(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    r, k, v = randn(B, T, H, N), randn(B, T, H, N) * 0.5, randn(B, T, H, N)
    w = -math.exp(-0.5) * torch.sigmoid(randn(B, T, H, N) * 3.0)
    kappa = randn(B, T, H, N)
    kappa = kappa / kappa.norm(dim=-1, keepdim=True)
    alpha = torch.sigmoid(randn(B, T, H, N))
    a, b = -kappa, kappa * alpha
    s0 = randn(B, H, N, N) * 0.5
    dy, dsT = randn(B, T, H, N), randn(B, H, N, N) * 0.1
    return [x.to(device) for x in (r, w, k, v, a, b, s0, dy, dsT)]


def check(ext, device, dtype=torch.float32, reset: bool = False, B=2, T=37, H=2, N=HEAD_SIZE,
          seed=1234) -> dict:
    """`ext` through `wkv7_with` vs the oracle (`chunked`) in fp64: relative max error of y, the final
    state and every gradient. T = 37 is not a multiple of SNAPSHOT_INTERVAL; the initial state is non-zero.
    Uses its own generator: the global RNG is untouched."""
    from ..dispatch import oracle

    gen = torch.Generator().manual_seed(seed)
    r, w, k, v, a, b, s0, dy, dsT = inputs(B, T, H, N, device, gen)
    rst = reset_mask(B, T, device, SNAPSHOT_INTERVAL) if reset else None
    out = compare_with_oracle(oracle("wkv7")[1], lambda *x, **kw: wkv7_with(ext, *x, **kw),
                              [r, w, k, v, a, b, s0], 6, dy, dsT, dtype, rst, [True] * 6 + [False])
    names = ["y", "state", "dr", "dw", "dk", "dv", "da", "db", "ds0"]
    return {n: rel_err(g, e) for n, g, e in zip(names, out["cuda"], out["oracle"])}
