"""Chunked WKV-7 in pure PyTorch (docs/model-spec.md §3.4): parallel inside a chunk, sequential across chunks.

Per head and chunk of c tokens, with incoming state S₀ ([value, key]) and the inclusive cumulative
log-decay G_t = Σ_{s≤t} λ_s (exclusive Ḡ_t = G_t − λ_t), the rows u_t = S_{t−1} a_t satisfy

    (I − M^{ab}) U = Â S₀ᵀ + M^{ak} V
    Y   = R̂ S₀ᵀ + M^{rk} V + M^{rb} U
    S_c = S₀ diag(e^{G_c}) + Uᵀ (B ⊙ e^{G_c − G}) + Vᵀ (K ⊙ e^{G_c − G})

Everything that does not depend on S₀ is computed for all chunks of a block at once; only a c×N×N
update per chunk runs in the sequential loop. The pairwise decays e^{G_t − G_j} are factorised around
the mid-chunk value (docs/model-spec.md §3.4: "choosing G_ref = mid-chunk halves the exponent"), which is safe
because |λ| ≤ e^{-1/2} for RWKV-7.

A `reset` mask (a document starts at token t: the state before t is zero) is handled exactly by
restricting every pairwise term to positions of the same document inside the chunk.

Execution (`blockwise_scan`, shared with wkv6_chunked): the sequence is processed in blocks of a few
chunks, forward without an autograd graph, keeping only each block's start state; backward recomputes
one block at a time with autograd and walks the blocks in reverse, carrying dS. Why: on the 2-core CPU
(docs/benchmarks.md, "WKV kernels") the whole-sequence graph at B=4, T=4096 allocated dozens of
50 MB temporaries, and every fresh allocation above glibc's 32 MB mmap threshold page-faults anew
(1.2–1.5 M minor faults, 2–2.7 s of system time per call); blocks of ~4 MB are reused from the heap
and stay in cache: 1.4 s instead of 2.6–3.4 s per call, the second forward included. Gradients are
autograd's, so exactness is unchanged; double backward is not supported. A sequence that fits in one
block runs with plain autograd.
"""

from __future__ import annotations

import torch

from ..common import check_log_decay, compute_dtype, pad_time, zero_state

# RWKV-7's decay clamp gives λ = −e^{−1/2}·σ(ω) ∈ (−0.6066, 0) (docs/model-spec.md §1.3). The factorised form below
# multiplies e^{±(G − G_ref)} factors; they stay finite in fp32 while c·|λ| < ~88. We accept a margin
# above the clamp and refuse values that could overflow instead of returning NaN.
MAX_ABS_LOG_DECAY = 1.0

# Chunk length (docs/model-spec.md §3.4 recommends 32 or 64). Measured c = 16/32/64, fp32 forward+backward, H=12,
# N=64, T=4096 (docs/benchmarks.md, "WKV kernels"): B=4 1.49/1.26/1.27 s, B=1 0.42/0.35/0.33 s (an
# earlier run: 1.60/1.42/1.48 and 0.45/0.39/0.39). 32 and 64 tie within the machine's noise; 16 is
# ~15% slower. 32 keeps half the factorised exponent range and half the fp32 error (9.7e-7 vs 1.9e-6).
DEFAULT_CHUNK = 32

# Elements (B·H·block_len·N) per block of `blockwise_scan` on CPU: ~4 MB of fp32 per [B,H,block,N]
# tensor keeps every temporary under glibc's mmap threshold and in the last-level cache.
BLOCK_ELEMS_CPU = 1 << 20


class _BlockScan(torch.autograd.Function):
    """Sequential scan over time blocks; backward recomputes each block (activation checkpointing).

    fn(seq_blocks, static, S, reset_block) -> (y_block [B, Tb, H, N], S_next); `seq` tensors are
    [B, T, ...] and are sliced along dim 1 at `bounds`; `static` tensors go whole to every block.
    """

    @staticmethod
    def forward(ctx, fn, bounds, n_seq, reset, S0, *tensors):
        seq, static = tensors[:n_seq], tensors[n_seq:]
        S, starts, y = S0, [], None
        for t0, t1 in bounds:
            starts.append(S)
            y_b, S = fn([x[:, t0:t1] for x in seq], static, S, None if reset is None else reset[:, t0:t1])
            if y is None:
                y = y_b.new_empty((y_b.shape[0], bounds[-1][1], *y_b.shape[2:]))
            y[:, t0:t1] = y_b
        ctx.fn, ctx.bounds, ctx.n_seq, ctx.reset = fn, bounds, n_seq, reset
        ctx.save_for_backward(*tensors, *starts)
        return y, S

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dS):
        saved = ctx.saved_tensors
        n_in = len(saved) - len(ctx.bounds)
        tensors, starts = saved[:n_in], saved[n_in:]
        need = ctx.needs_input_grad[5:]
        # e.g. loss = y.sum() hands in stride-0 gradients, which batched matmul backward would copy
        # matrix by matrix; one dense copy here is cheaper
        dy, dS = dy.contiguous(), dS.contiguous()
        # sequence inputs: each block writes its slice; static inputs: summed over blocks
        grads = [(x.new_empty(x.shape) if i < ctx.n_seq else torch.zeros_like(x)) if need[i] else None
                 for i, x in enumerate(tensors)]
        for (t0, t1), S_in in zip(reversed(ctx.bounds), reversed(starts)):
            with torch.enable_grad():
                leaves = [(x[:, t0:t1] if i < ctx.n_seq else x).detach().requires_grad_(need[i])
                          for i, x in enumerate(tensors)]
                S_leaf = S_in.detach().requires_grad_()
                reset = None if ctx.reset is None else ctx.reset[:, t0:t1]
                y_b, S_out = ctx.fn(leaves[:ctx.n_seq], leaves[ctx.n_seq:], S_leaf, reset)
                wrt = [x for x in leaves if x.requires_grad] + [S_leaf]
                g = list(torch.autograd.grad((y_b, S_out), wrt, (dy[:, t0:t1], dS), allow_unused=True))
            dS = g.pop()
            if dS is None:
                dS = torch.zeros_like(S_in)
            for i in (i for i in range(n_in) if need[i]):
                gi = g.pop(0)
                if i < ctx.n_seq:
                    grads[i][:, t0:t1] = 0 if gi is None else gi
                elif gi is not None:
                    grads[i] += gi
        return (None, None, None, None, dS if ctx.needs_input_grad[4] else None, *grads)


def block_bounds(T_pad: int, c: int, B: int, H: int, N: int, device) -> list[tuple[int, int]]:
    """Block limits along time: whole chunks, about BLOCK_ELEMS_CPU elements per [B,H,block,N] on CPU;
    one block on other devices (there the point of blocks, heap reuse and cache, does not apply)."""
    if device.type != "cpu":
        return [(0, T_pad)]
    per_block = max(1, BLOCK_ELEMS_CPU // (B * H * N * c)) * c
    return [(t0, min(t0 + per_block, T_pad)) for t0 in range(0, T_pad, per_block)]


def blockwise_scan(fn, seq, static, state, reset, c):
    """Run `fn` over time blocks of `seq` (see `_BlockScan`); returns (y [B, T_pad, H, N], final S)."""
    B, T_pad, H, N = seq[0].shape
    bounds = block_bounds(T_pad, c, B, H, N, seq[0].device)
    if len(bounds) == 1:  # one block: plain autograd, nothing to gain from recomputing it
        return fn(seq, static, state, reset)
    return _BlockScan.apply(fn, bounds, len(seq), reset, state, *seq, *static)


def document_masks(reset: torch.Tensor, NC: int, c: int):
    """Bool masks that confine every term to one document inside each chunk (`reset` [B, NC·c]).

    d_t = number of resets at positions ≤ t inside the chunk. A pair (t, j) interacts only when
    d_t == d_j; S₀ reaches position t only when d_t == 0; token j reaches the chunk's final state only
    when d_j == d_last; S₀ reaches the final state only when d_last == 0.
    """
    B = reset.shape[0]
    d = reset.reshape(B, 1, NC, c).to(torch.int32).cumsum(-1)
    same = d[..., :, None] == d[..., None, :]  # [B,1,NC,c,c]
    first = (d == 0)[..., None]  # [B,1,NC,c,1]
    last_doc = (d == d[..., -1:])[..., None]  # [B,1,NC,c,1]
    keep_s0 = (d[..., -1:] == 0)[..., None]  # [B,1,NC,1,1]
    return same, first, last_doc, keep_s0


def to_chunks(x: torch.Tensor, c: int) -> torch.Tensor:
    """[B, Tb, H, N] (Tb a multiple of c) -> [B, H, NC, c, N], contiguous: each block input feeds
    several matmuls (forward and backward), which would otherwise copy the permuted view every time."""
    B, Tb, H, N = x.shape
    return x.reshape(B, Tb // c, c, H, N).permute(0, 3, 1, 2, 4).contiguous()


def from_chunks(Y: torch.Tensor) -> torch.Tensor:
    """[B, H, NC, c, N] -> [B, NC·c, H, N] (a view when possible)."""
    B, H, NC, c, N = Y.shape
    return Y.permute(0, 2, 3, 1, 4).reshape(B, NC * c, H, N)


def _wkv7_block(seq, static, S, reset, c):
    """docs/model-spec.md §3.4 on one block of whole chunks; see the module docstring for the formulas."""
    r, w, k, v, a, b = (to_chunks(x, c) for x in seq)
    dt, N = r.dtype, r.shape[-1]
    G = w.cumsum(dim=-2)  # inclusive cumulative log-decay, padded positions have λ = 0
    Gbar = G - w  # exclusive
    G_last = G[..., -1:, :]
    G_ref = G[..., c // 2: c // 2 + 1, :]

    e_in = torch.exp(G - G_ref)  # factorised pairwise decays, masked after the product
    e_out = 1.0 / e_in
    r_in = r * e_in
    a_in = a * torch.exp(Gbar - G_ref)
    k_out = k * e_out
    b_out = b * e_out
    strict = torch.ones(c, c, dtype=torch.bool, device=r.device).tril(-1)
    incl = torch.ones(c, c, dtype=torch.bool, device=r.device).tril(0)

    # The decays from the chunk start and to the chunk end reuse the factorised ones, times per-chunk
    # [.., 1, N] factors: e^{G} = e^{G−G_ref}·e^{G_ref}, e^{G_c−G} = e^{G_ref−G}·e^{G_c−G_ref}. Elementwise
    # passes over [B,H,NC,c,N] dominate this kernel on CPU (docs/benchmarks.md "Training step"); the
    # exponents stay within ±c·|λ|max ≤ 32 e-folds, so fp32 keeps ~1e-7 relative precision.
    from_start, to_end_ref = torch.exp(G_ref), torch.exp(G_last - G_ref)
    A_hat = a_in * from_start
    R_hat = r_in * from_start
    B_end = b_out * to_end_ref
    K_end = k_out * to_end_ref
    decay_chunk = torch.exp(G_last)  # [B,H,NC,1,N]
    if reset is not None:
        same, first, last_doc, keep_s0 = document_masks(reset, r.shape[2], c)
        strict = strict & same
        incl = incl & same
        A_hat = A_hat * first
        R_hat = R_hat * first
        B_end = B_end * last_doc
        K_end = K_end * last_doc
        decay_chunk = decay_chunk * keep_s0
    strict, incl = strict.to(dt), incl.to(dt)

    M_ab = (a_in @ b_out.transpose(-1, -2)) * strict
    M_ak = (a_in @ k_out.transpose(-1, -2)) * strict
    M_rb = (r_in @ b_out.transpose(-1, -2)) * incl
    M_rk = (r_in @ k_out.transpose(-1, -2)) * incl

    # U = W_a S₀ᵀ + U_0 with [W_a | U_0] = (I − M^{ab})⁻¹ [Â | M^{ak} V]: one unit-lower-triangular solve
    L = torch.eye(c, dtype=dt, device=r.device) - M_ab
    rhs = torch.cat([A_hat, M_ak @ v], dim=-1)
    W_a, U_0 = torch.linalg.solve_triangular(L, rhs, upper=False, unitriangular=True).split(N, dim=-1)
    P = v.transpose(-1, -2) @ K_end  # [B,H,NC,N,N]: Vᵀ(K ⊙ e^{G_c − G}), independent of S₀

    starts, Us = [], []
    # unbind once: indexing x[:, :, i] inside the loop makes autograd materialise a full-size zero
    # gradient per chunk (quadratic in T); unbind's backward stacks the pieces once.
    for U0_i, Wa_i, d_i, B_i, P_i in zip(U_0.unbind(2), W_a.unbind(2), decay_chunk.unbind(2),
                                         B_end.unbind(2), P.unbind(2)):
        starts.append(S)
        U_i = U0_i + Wa_i @ S.transpose(-1, -2)
        Us.append(U_i)
        S = S * d_i + U_i.transpose(-1, -2) @ B_i + P_i
    S_start = torch.stack(starts, dim=2)  # [B,H,NC,N,N]
    U = torch.stack(Us, dim=2)
    Y = R_hat @ S_start.transpose(-1, -2) + M_rk @ v + M_rb @ U
    return from_chunks(Y), S


def wkv7_chunked(r, w, k, v, a, b, state=None, reset=None, chunk_size: int | None = None):
    """Chunked WKV-7. See `rwkv.ops.wkv7` for the contract; returns (y in compute dtype, final state)."""
    B, T, H, N = r.shape
    dt = compute_dtype(r)
    check_log_decay("wkv7 chunked", w, -MAX_ABS_LOG_DECAY, hint="; or use backend='reference'")
    c = min(chunk_size or DEFAULT_CHUNK, T)
    T_pad = -(-T // c) * c
    seq = [pad_time(x.to(dt), T_pad) for x in (r, w, k, v, a, b)]
    if reset is not None:
        reset = pad_time(reset, T_pad, value=False)
    S = zero_state(B, H, N, dt, r.device) if state is None else state.to(dt)
    y, S = blockwise_scan(lambda xs, st, S, rs: _wkv7_block(xs, st, S, rs, c), seq, [], S, reset, c)
    return y[:, :T], S
