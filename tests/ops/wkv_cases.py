"""Shared helpers of the WKV op tests: realistic inputs, one forward+backward, error measures.

Inputs are built in fp64 and cast, so the fp64 and fp32 cases of a test see the same values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

T_CASES = [1, 15, 16, 17, 63, 100, 256]
CHUNKS = [16, 32, 64]
TOL_ABS_FP64 = 1e-10
TOL_REL_FP32 = 1e-4


def v7_inputs(B, T, H, N, seed=0):
    """RWKV-7 kernel inputs in their real range (docs/model-spec.md §1.3): λ = −e^{−½}σ(ω), a = −κ̂, b = κ̂⊙α."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    omega = 2.0 * rnd(B, T, H, N)
    omega[..., 0] = 30.0  # decay at the clamp's strong end, λ → −0.6065
    omega[..., 1] = -30.0  # almost no decay, λ → 0
    kappa = F.normalize(rnd(B, T, H, N), dim=-1)
    alpha = torch.rand(B, T, H, N, generator=g, dtype=torch.float64)
    return dict(r=rnd(B, T, H, N), w=-math.exp(-0.5) * torch.sigmoid(omega), k=rnd(B, T, H, N),
                v=rnd(B, T, H, N), a=-kappa, b=kappa * alpha)


def v6_omega(B, T, H, N, g, strong=True):
    """ω for x060 as initialised (docs/model-spec.md §2.1: time_decay_n = −6 + 5·(n/(C−1))^(0.7+1.3·r01), plus a small
    data-dependent LoRA term), and, when `strong`, a few channels pushed to fast decays as in trained
    models: λ = −exp(ω) down to about −1e4."""
    C = H * N
    n = torch.arange(C, dtype=torch.float64)
    base = (-6 + 5 * (n / max(C - 1, 1)) ** 1.35).view(H, N)
    omega = base + 0.3 * torch.randn(B, T, H, N, generator=g, dtype=torch.float64)
    if strong:
        omega[..., 0] += 4.0  # λ ≈ −e^{−2…−1}·e^4: tens of e-folds per chunk, forces the pairwise path
        omega[..., 1] = 9.2 + torch.randn(B, T, H, generator=g, dtype=torch.float64)  # λ ≈ −1e4
    return omega


def v6_inputs(B, T, H, N, seed=0, strong=True):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    u = 0.5 * rnd(H, N)  # time_faaaa: r01·(1 − n/(C−1)) ± 0.1 at init, trained values wander further
    return dict(r=rnd(B, T, H, N), w=-torch.exp(v6_omega(B, T, H, N, g, strong)), k=rnd(B, T, H, N),
                v=rnd(B, T, H, N), u=u)


def v5_inputs(B, T, H, N, seed=0, strong=True):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    omega = v6_omega(1, 1, H, N, g, strong)[0, 0]
    return dict(r=rnd(B, T, H, N), w=-torch.exp(omega), k=rnd(B, T, H, N), v=rnd(B, T, H, N),
                u=0.5 * rnd(H, N))


def cast(inputs: dict, dtype) -> dict:
    return {name: x.to(dtype) for name, x in inputs.items()}


def forward_backward(fn, inputs: dict, state=None, reset=None, seed=1, **kw):
    """Run fn(**inputs, state, reset) and backpropagate a fixed random linear loss of y and the final
    state; returns dict y, S and d<name> for every input (d_state when `state` is given)."""
    leaves = {name: x.detach().clone().requires_grad_() for name, x in inputs.items()}
    s0 = None if state is None else state.detach().clone().requires_grad_()
    y, S = fn(**leaves, state=s0, reset=reset, **kw)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    gS = torch.randn(S.shape, generator=g, dtype=torch.float64).to(S.dtype)
    wrt = list(leaves.values()) + ([s0] if s0 is not None else [])
    grads = torch.autograd.grad((y * gy).sum() + (S * gS).sum(), wrt)
    out = {"y": y.detach(), "S": S.detach()}
    out.update({f"d{name}": gr for name, gr in zip(list(leaves) + ["_state"], grads)})
    return out


def max_abs(a: dict, b: dict) -> dict:
    return {key: (a[key].double() - b[key].double()).abs().max().item() for key in b}


def max_rel(a: dict, b: dict) -> dict:
    """max |a − b| / max |b| per tensor (the unit of the fp32 tolerances in these tests)."""
    return {key: (a[key].double() - b[key].double()).abs().max().item()
            / max(b[key].abs().max().item(), 1e-30) for key in b}


def max_abs_scaled(a: dict, b: dict) -> dict:
    """max |a − b| / max(1, max |b|): the absolute error for tensors of order one; for larger ones (the
    WKV-5 dw sums B·T terms and reaches ~1e5 with slow decays) the same bound relative to their size,
    since fp64 rounding alone exceeds 1e-10 absolute there."""
    return {key: (a[key].double() - b[key].double()).abs().max().item()
            / max(b[key].abs().max().item(), 1.0) for key in b}


def assert_close(got: dict, ref: dict, dtype, what=""):
    if dtype == torch.float64:
        err, tol, unit = max_abs_scaled(got, ref), TOL_ABS_FP64, "abs (scaled by max(1, |ref|))"
    else:
        err, tol, unit = max_rel(got, ref), TOL_REL_FP32, "rel"
    bad = {key: f"{e:.2e}" for key, e in err.items() if not e <= tol}
    assert not bad, f"{what}: {unit} error above {tol:g}: {bad}"
    return err
