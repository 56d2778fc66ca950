"""Chunked WKV-7 in pure PyTorch (model-spec §3.4): parallel inside a chunk, sequential across chunks.

Per head and chunk of c tokens, with incoming state S₀ ([value, key]) and the inclusive cumulative
log-decay G_t = Σ_{s≤t} λ_s (exclusive Ḡ_t = G_t − λ_t), the rows u_t = S_{t−1} a_t satisfy

    (I − M^{ab}) U = Â S₀ᵀ + M^{ak} V
    Y   = R̂ S₀ᵀ + M^{rk} V + M^{rb} U
    S_c = S₀ diag(e^{G_c}) + Uᵀ (B ⊙ e^{G_c − G}) + Vᵀ (K ⊙ e^{G_c − G})

Everything that does not depend on S₀ is computed for all chunks at once; only a c×N×N update per
chunk runs in the sequential loop. Gradients (including d S₀ and through the final state) come from
autograd. The pairwise decays e^{G_t − G_j} are factorised around the mid-chunk value (spec §3.4:
"choosing G_ref = mid-chunk halves the exponent"), which is safe because |λ| ≤ e^{-1/2} for RWKV-7.

A `reset` mask (a document starts at token t: the state before t is zero) is handled exactly by
restricting every pairwise term to positions of the same document inside the chunk.
"""

from __future__ import annotations

import math

import torch

from .common import compute_dtype, pad_time, zero_state

# RWKV-7's decay clamp gives λ = −e^{−1/2}·σ(ω) ∈ (−0.6066, 0) (spec §1.3). The factorised form below
# multiplies e^{±(G − G_ref)} factors; they stay finite in fp32 while c·|λ| < ~88. We accept a margin
# above the clamp and refuse values that could overflow instead of returning NaN.
MAX_ABS_LOG_DECAY = 1.0

DEFAULT_CHUNK = 32


def _to_chunks(x: torch.Tensor, T_pad: int, NC: int, c: int) -> torch.Tensor:
    """[B, T, H, N] -> [B, H, NC, c, N] (padded at the end with zeros)."""
    B, _, H, N = x.shape
    return pad_time(x, T_pad).view(B, NC, c, H, N).permute(0, 3, 1, 2, 4)


def _document_masks(reset: torch.Tensor, T_pad: int, NC: int, c: int, dt):
    """Masks that confine every term to one document inside each chunk.

    d_t = number of resets at positions ≤ t inside the chunk. A pair (t, j) interacts only when
    d_t == d_j; S₀ reaches position t only when d_t == 0; token j reaches the chunk's final state only
    when d_j == d_last; S₀ reaches the final state only when d_last == 0.
    """
    B = reset.shape[0]
    d = pad_time(reset, T_pad, value=False).view(B, 1, NC, c).to(torch.int32).cumsum(-1)
    same = (d[..., :, None] == d[..., None, :]).to(dt)  # [B,1,NC,c,c]
    first = (d == 0).to(dt)[..., None]  # [B,1,NC,c,1]
    last_doc = (d == d[..., -1:]).to(dt)[..., None]  # [B,1,NC,c,1]
    keep_s0 = (d[..., -1:] == 0).to(dt)[..., None]  # [B,1,NC,1,1]
    return same, first, last_doc, keep_s0


def wkv7_chunked(r, w, k, v, a, b, state=None, reset=None, chunk_size: int | None = None):
    """Chunked WKV-7. See `rwkv.ops.wkv7` for the contract; returns (y in compute dtype, final state)."""
    B, T, H, N = r.shape
    dt = compute_dtype(r)
    if not w.is_cuda:  # a device sync on GPU; on CPU the check is one cheap pass
        lo = float(w.detach().min())
        if not math.isfinite(lo) or lo < -MAX_ABS_LOG_DECAY or float(w.detach().max()) > 0:
            raise ValueError(
                f"wkv7 chunked: log-decay w must lie in [-{MAX_ABS_LOG_DECAY}, 0] (RWKV-7 clamps it to "
                f"(-0.6066, 0), model-spec §1.3); got min {lo:.4g}, max {float(w.detach().max()):.4g}. "
                "Pass the log-decay λ, not the raw ω or the decay exp(λ); or use backend='reference'.")
    c = min(chunk_size or DEFAULT_CHUNK, T)
    NC = -(-T // c)
    T_pad = NC * c
    r, w, k, v, a, b = (_to_chunks(x.to(dt), T_pad, NC, c) for x in (r, w, k, v, a, b))

    G = w.cumsum(dim=-2)  # inclusive cumulative log-decay, padded positions have λ = 0
    Gbar = G - w  # exclusive
    G_last = G[..., -1:, :]
    G_ref = G[..., c // 2: c // 2 + 1, :]

    r_in = r * torch.exp(G - G_ref)  # factorised pairwise decays, masked after the product
    a_in = a * torch.exp(Gbar - G_ref)
    k_out = k * torch.exp(G_ref - G)
    b_out = b * torch.exp(G_ref - G)
    strict = torch.ones(c, c, dtype=torch.bool, device=r.device).tril(-1).to(dt)
    incl = torch.ones(c, c, dtype=torch.bool, device=r.device).tril(0).to(dt)

    A_hat = a * torch.exp(Gbar)
    R_hat = r * torch.exp(G)
    to_end = torch.exp(G_last - G)
    B_end = b * to_end
    K_end = k * to_end
    decay_chunk = torch.exp(G_last)  # [B,H,NC,1,N]
    if reset is not None:
        same, first, last_doc, keep_s0 = _document_masks(reset, T_pad, NC, c, dt)
        strict = strict * same
        incl = incl * same
        A_hat = A_hat * first
        R_hat = R_hat * first
        B_end = B_end * last_doc
        K_end = K_end * last_doc
        decay_chunk = decay_chunk * keep_s0

    M_ab = (a_in @ b_out.transpose(-1, -2)) * strict
    M_ak = (a_in @ k_out.transpose(-1, -2)) * strict
    M_rb = (r_in @ b_out.transpose(-1, -2)) * incl
    M_rk = (r_in @ k_out.transpose(-1, -2)) * incl

    eye = torch.eye(c, dtype=dt, device=r.device)
    L = eye - M_ab  # unit lower triangular
    W_a = torch.linalg.solve_triangular(L, A_hat, upper=False, unitriangular=True)  # U = W_a S₀ᵀ + U_0
    U_0 = torch.linalg.solve_triangular(L, M_ak @ v, upper=False, unitriangular=True)
    BK_end = torch.cat([B_end, K_end], dim=-2)  # [.., 2c, N_key]

    S = zero_state(B, H, N, dt, r.device) if state is None else state.to(dt)
    starts, Us = [], []
    for i in range(NC):
        starts.append(S)
        U_i = U_0[:, :, i] + W_a[:, :, i] @ S.transpose(-1, -2)
        Us.append(U_i)
        UV = torch.cat([U_i, v[:, :, i]], dim=-2)  # [B,H,2c,N_val]
        S = S * decay_chunk[:, :, i] + UV.transpose(-1, -2) @ BK_end[:, :, i]
    S_start = torch.stack(starts, dim=2)  # [B,H,NC,N,N]
    U = torch.stack(Us, dim=2)
    Y = R_hat @ S_start.transpose(-1, -2) + M_rk @ v + M_rb @ U
    y = Y.permute(0, 2, 3, 1, 4).reshape(B, T_pad, H, N)[:, :T]
    return y, S
