"""Reference WKV-6 and WKV-5: the per-token recurrence of docs/model-spec.md §2.1/§2.2, written for clarity.

Every fast backend is tested against these functions (docs/design.md §5.1).
"""

from __future__ import annotations

import torch

from ..common import compute_dtype, zero_state


def check_v56_params(name: str, w, u, shape) -> None:
    """Shapes of the log-decay `w` ([B,T,H,N] for wkv6, [H,N] for wkv5) and the bonus `u` ([H,N]),
    which the dispatcher's common check does not cover; λ must be ≤ 0 (NaN is refused too)."""
    B, T, H, N = shape
    want = (B, T, H, N) if name == "wkv6" else (H, N)
    if tuple(w.shape) != want:
        raise ValueError(f"{name}: log-decay `w` has shape {tuple(w.shape)}, expected {want}")
    if tuple(u.shape) != (H, N):
        raise ValueError(f"{name}: bonus `u` (time_faaaa) has shape {tuple(u.shape)}, expected {(H, N)}")
    hi = float(w.detach().max())
    if not hi <= 0:
        raise ValueError(f"{name}: log-decay `w` must be ≤ 0 (λ = −exp(ω), docs/model-spec.md §2), got max {hi:.4g}. "
                         "Pass λ = −exp(time_decay …), not ω or the decay exp(λ).")


def wkv6_reference(r, w, k, v, u, state=None, reset=None):
    """Per-token WKV-6. See `rwkv.ops.wkv6` for the contract.

    State S is [B, H, N(key), N(value)] (key-major, the pip layout for v5/v6); one step (docs/model-spec.md §2.1):
        y_t = r_tᵀ (S + diag(u) k_t v_tᵀ);   S = diag(exp(λ_t)) S + k_t v_tᵀ
    with λ_t = `w[:, t]` the log-decay (≤ 0, unbounded below). `reset[b, t]` zeroes S before step t.
    """
    B, T, H, N = r.shape
    check_v56_params("wkv6", w, u, (B, T, H, N))
    dt = compute_dtype(r)
    r, w, k, v, u = (x.to(dt) for x in (r, w, k, v, u))
    S = zero_state(B, H, N, dt, r.device) if state is None else state.to(dt)
    keep = None if reset is None else (~reset).to(dt).view(B, T, 1, 1, 1).unbind(1)
    ys = []
    # unbind (not r[:, t]) so that backward assembles each input's gradient once, in O(T)
    for t, (r_t, w_t, k_t, v_t) in enumerate(zip(r.unbind(1), w.unbind(1), k.unbind(1), v.unbind(1))):
        if keep is not None:
            S = S * keep[t]
        kv = k_t[..., :, None] * v_t[..., None, :]  # [B,H,N(key),N(value)]
        ys.append(torch.einsum("bhi,bhij->bhj", r_t, S + u[..., None] * kv))
        S = torch.exp(w_t)[..., None] * S + kv
    return torch.stack(ys, dim=1), S


def wkv5_reference(r, w, k, v, u, state=None, reset=None):
    """Per-token WKV-5.2 (docs/model-spec.md §2.2): WKV-6 with the time-invariant log-decay `w` of shape [H, N]."""
    B, T, H, N = r.shape
    check_v56_params("wkv5", w, u, (B, T, H, N))
    return wkv6_reference(r, w.expand(B, T, H, N), k, v, u, state=state, reset=reset)
