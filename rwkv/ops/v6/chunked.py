"""Chunked WKV-6 / WKV-5 in pure PyTorch (docs/model-spec.md §3.6): parallel inside a chunk, sequential across.

Per head and chunk of c tokens with incoming state S₀ ([key, value]), inclusive cumulative log-decay
G_t = Σ_{s≤t} λ_s and exclusive Ḡ_t = G_{t−1} (G_0 = 0):

    Y   = (R ⊙ e^{Ḡ}) S₀ + (A + diag(Σ_n r_t u k_t)) V
    A[t,j] = Σ_n r_t[n] k_j[n] e^{Ḡ_t[n] − G_j[n]}  for j < t
    S_c = diag(e^{G_c}) S₀ + (K ⊙ e^{G_c − G})ᵀ V

Every exponent above is ≤ 0 except inside A's factorised form. The v6 decay λ = −exp(ω) is unbounded
below, so (docs/model-spec.md §3.6) the cumulative sums are taken in fp64, and A is built per chunk and channel in one
of two exact ways:

* factorised: A = (R ⊙ e^{Ḡ − G_ref}) (K ⊙ e^{G_ref − G})ᵀ masked after the product, G_ref = mid-chunk.
  Both plain matmuls. Safe when the channel's decay over the chunk, span = −G_c, is at most
  `FACTOR_SPAN[dtype]`: then every factor and every (discarded) upper-triangle product is ≤ e^{span}.
* pairwise: the exponent Ḡ_t − G_j on a [c, c, m] tensor, masked with −∞ before exp (never inf/NaN,
  exact for any λ). Used only for the m channels per chunk whose span exceeds the bound (picked by
  top-k, so the rest of the chunk keeps the matmul form); m = 0 for freshly initialised models.

WKV-5 (docs/model-spec.md §2.2) is the same with a time-invariant λ [H, N]. Blocks, recomputation in backward and the
document masks for `reset` are shared with wkv7_chunked (see its docstring).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common import compute_dtype, pad_time, zero_state
from ..v7.chunked import blockwise_scan, document_masks, from_chunks, to_chunks
from .reference import check_v56_params

# Chunk length: the A-matrices cost c·N per token, the state terms N² per token. Measured (fp32
# forward+backward, B=4, T=4096, H=12, N=64; docs/benchmarks.md "WKV kernels"), c = 16/32/64:
# init-range decays 1.00/0.84/0.80 s, two fast channels per head 1.34/1.37/1.57 s. 32 is within 5%
# of the best in both and keeps the factorised form for a mean |λ| up to 1.25 per token (fp32), twice
# the range of c = 64, which matters for trained models.
DEFAULT_CHUNK = 32

# Largest per-chunk decay span (−G_c, in e-folds) that the factorised form may use, per compute
# dtype. Discarded upper-triangle products reach e^{span}·Σ_n|r k| and the factors' gradients
# e^{span}·|dA|·|k|: e^{40} ≈ 2e17 leaves fp32 (max e^{88.7}) ~20 orders of magnitude for the data
# and loss scales; e^{400} leaves fp64 (max e^{709}) ~130. docs/model-spec.md §3.6. Precision does not depend on
# it beyond fp32 rounding of the exponent (≤ 40·6e-8 ≈ 2.4e-6 relative per factor).
FACTOR_SPAN = {torch.float32: 40.0, torch.float64: 400.0}

# λ below this decays a state to exactly 0 in one step in fp64 and fp32 (e^{−1000} underflows), so
# clamping there changes no output and no gradient (both are exactly 0 either way), while keeping G
# finite: fp64 cumulative sums then stay ≤ 1000·c in magnitude and their differences accurate to
# ~1e-11 (docs/model-spec.md §3.6). It also turns λ = −inf into a finite number.
MIN_LOG_DECAY = -1000.0


def _pairwise_scores(r, k, Gbar, G, mask):
    """A[t,j] = Σ_n r_t[n] k_j[n] e^{Ḡ_t[n] − G_j[n]} for mask[t,j]; the exponent, a difference of
    fp64 cumulative sums, is masked with −∞ before exp (docs/model-spec.md §3.6), so any λ ≤ 0 is safe."""
    X = (Gbar[..., :, None, :] - G[..., None, :, :]).to(r.dtype)  # [.., c(t), c(j), m]
    E = torch.exp(X.masked_fill(~mask[..., None], float("-inf")))
    return (E * k[..., None, :, :]) @ r[..., :, :, None]  # [.., c, c, 1]: Σ_n over the last axis


def _scores(r, k, Gbar, G, strict, limit):
    """The strictly-lower c×c matrices A of every chunk (module docstring), exact for any λ ≤ 0."""
    dt = r.dtype
    span = -G[..., -1, :]  # [B,H,NC,N] decay over each chunk, ≥ 0
    unsafe = span > limit
    m = int(unsafe.sum(-1).max()) if unsafe.any() else 0
    N = r.shape[-1]
    if m == N:  # every channel pairwise (e.g. very fast decays everywhere)
        return _pairwise_scores(r, k, Gbar, G, strict).squeeze(-1)
    c = r.shape[-2]
    G_ref = G[..., c // 2: c // 2 + 1, :]
    e_r, e_k = Gbar - G_ref, G_ref - G
    if m:
        # the m largest spans of each chunk go pairwise (this includes every unsafe channel); their
        # exponents are zeroed before exp so the factorised matmul sees only bounded factors
        idx = span.topk(m, dim=-1).indices  # [B,H,NC,m]
        sel = torch.zeros_like(unsafe).scatter_(-1, idx, True)[..., None, :]  # [B,H,NC,1,N]
        e_r, e_k = e_r.masked_fill(sel, 0.0), e_k.masked_fill(sel, 0.0)
    r_in = r * torch.exp(e_r.to(dt))
    k_out = k * torch.exp(e_k.to(dt))
    if m:
        r_in = r_in.masked_fill(sel, 0.0)
    A = (r_in @ k_out.transpose(-1, -2)) * strict.to(dt)
    if m:
        ix = idx[..., None, :].expand(*idx.shape[:-1], c, m)
        pick = lambda x: x.gather(-1, ix)
        A = A + _pairwise_scores(pick(r), pick(k), pick(Gbar), pick(G), strict).squeeze(-1)
    return A


def _wkv6_block(r, lam, k, v, u, S, reset, c):
    """docs/model-spec.md §3.6 on one block of whole chunks: r, k, v [B,Tb,H,N] in the compute dtype, lam [B,Tb,H,N]
    the log-decay (any float dtype), u [H,N], S [B,H,N(key),N(value)]."""
    r, k, v = (to_chunks(x, c) for x in (r, k, v))
    dt = r.dtype
    H, N = u.shape
    # fp64 cumulative log-decay (docs/model-spec.md §3.6: in fp32 |G| in the thousands loses the differences)
    lam = to_chunks(lam.to(torch.float64).clamp(min=MIN_LOG_DECAY), c)
    G = lam.cumsum(-2)  # inclusive
    Gbar = F.pad(G[..., :-1, :], (0, 0, 1, 0))  # exclusive, exactly G_{t−1}
    G_last = G[..., -1:, :]
    strict = torch.ones(c, c, dtype=torch.bool, device=r.device).tril(-1)

    R_hat = r * torch.exp(Gbar.to(dt))
    K_end = k * torch.exp((G_last - G).to(dt))
    decay = torch.exp(G_last.to(dt)).transpose(-1, -2)  # [B,H,NC,N(key),1]
    if reset is not None:
        same, first, last_doc, keep_s0 = document_masks(reset, r.shape[2], c)
        strict = strict & same
        R_hat = R_hat * first
        K_end = K_end * last_doc
        decay = decay * keep_s0

    A = _scores(r, k, Gbar, G, strict, FACTOR_SPAN[dt])
    A = A + torch.diag_embed((r * u.view(1, H, 1, 1, N).to(dt) * k).sum(-1))  # bonus: y_t ∋ (r_t·u·k_t) v_t
    P = K_end.transpose(-1, -2) @ v  # [B,H,NC,N,N]: each chunk's own contribution to its final state

    starts = []
    for d_i, P_i in zip(decay.unbind(2), P.unbind(2)):  # unbind: see wkv7_chunked's loop
        starts.append(S)
        S = d_i * S + P_i
    Y = R_hat @ torch.stack(starts, dim=2) + A @ v
    return from_chunks(Y), S


def wkv6_chunked(r, w, k, v, u, state=None, reset=None, chunk_size: int | None = None):
    """Chunked WKV-6. See `rwkv.ops.wkv6` for the contract; returns (y in compute dtype, final state)."""
    B, T, H, N = r.shape
    check_v56_params("wkv6", w, u, (B, T, H, N))
    dt = compute_dtype(r)
    c = min(chunk_size or DEFAULT_CHUNK, T)
    T_pad = -(-T // c) * c
    # padding: r = k = v = 0 and λ = 0 (decay 1) leave outputs and the final state unchanged (docs/model-spec.md §3.4)
    seq = [pad_time(x.to(dt), T_pad) for x in (r, k, v)] + [pad_time(w, T_pad)]
    reset = None if reset is None else pad_time(reset, T_pad, value=False)
    S = zero_state(B, H, N, dt, r.device) if state is None else state.to(dt)
    fn = lambda xs, st, S, rs: _wkv6_block(xs[0], xs[3], xs[1], xs[2], st[0], S, rs, c)
    y, S = blockwise_scan(fn, seq, [u], S, reset, c)
    return y[:, :T], S


def wkv5_chunked(r, w, k, v, u, state=None, reset=None, chunk_size: int | None = None):
    """Chunked WKV-5.2 (docs/model-spec.md §2.2): WKV-6 with the time-invariant log-decay `w` [H, N]."""
    B, T, H, N = r.shape
    check_v56_params("wkv5", w, u, (B, T, H, N))
    dt = compute_dtype(r)
    c = min(chunk_size or DEFAULT_CHUNK, T)
    T_pad = -(-T // c) * c
    seq = [pad_time(x.to(dt), T_pad) for x in (r, k, v)]
    # λ is w at real tokens and 0 at the padding (which must not decay the final state)
    real = (torch.arange(T_pad, device=r.device) < T).to(torch.float64).view(1, T_pad, 1, 1)
    reset = None if reset is None else pad_time(reset, T_pad, value=False)
    S = zero_state(B, H, N, dt, r.device) if state is None else state.to(dt)

    def fn(xs, st, S, rs):
        r_b, k_b, v_b, real_b = xs
        lam = (real_b * st[0].to(torch.float64)).expand(r_b.shape)
        return _wkv6_block(r_b, lam, k_b, v_b, st[1], S, rs, c)

    y, S = blockwise_scan(fn, seq + [real], [w, u], S, reset, c)
    return y[:, :T], S
