"""Reference WKV-7: the per-token recurrence of docs/model-spec.md §1.3, written for clarity, not speed.

Every fast backend is tested against this function (docs/design.md §5.1).
"""

from __future__ import annotations

import torch

from ..common import compute_dtype, zero_state


def wkv7_reference(r, w, k, v, a, b, state=None, reset=None):
    """Per-token WKV-7. See `rwkv.ops.wkv7` for the contract.

    State S is [B, H, N(value), N(key)]; one step (docs/model-spec.md §1.3):
        sa = S a_t;  S = S diag(exp(w_t)) + sa b_tᵀ + v_t k_tᵀ;  y_t = S r_t
    `reset[b, t]` zeroes S before step t (a new document starts at token t).
    """
    B, T, H, N = r.shape
    dt = compute_dtype(r)
    r, w, k, v, a, b = (x.to(dt) for x in (r, w, k, v, a, b))
    S = zero_state(B, H, N, dt, r.device) if state is None else state.to(dt)
    decay = torch.exp(w)
    ys = []
    for t in range(T):
        if reset is not None:
            S = S * (~reset[:, t]).to(dt).view(B, 1, 1, 1)
        sa = torch.einsum("bhij,bhj->bhi", S, a[:, t])
        S = (S * decay[:, t, :, None, :]
             + sa[..., None] * b[:, t, :, None, :]
             + v[:, t, :, :, None] * k[:, t, :, None, :])
        ys.append(torch.einsum("bhij,bhj->bhi", S, r[:, t]))
    return torch.stack(ys, dim=1), S
