"""A step-by-step PyTorch emulation of rwkv/ops/csrc/wkv7_state.cu, for CPU tests only (not in the package).

It mirrors the kernels' loop structure and buffers so the algorithm can be validated here, where the
.cu cannot run: per (batch, head) block and per thread i, the same per-step operations in the same
order, the same fp32 state snapshots every SNAPSHOT_INTERVAL steps, the same saved `sa`, and the same
back-stepping backward (divide by the decay, restart at chunk ends, recompute from the chunk start
at a reset). Blocks and threads are vectorised: a per-thread register row becomes row i of a
[B, H, N(thread), N] tensor, a shared-memory vector a [B, H, N] tensor. Sums over j run in torch's
order, not the kernel's sequential order (a rounding-level difference only).

Interface = the C++ binding (rwkv/ops/csrc/wkv7_state_op.cpp): `forward(r, w, k, v, a, b, s0, reset) ->
[y, sT, snaps, sa]` and `backward(r, w, k, v, a, b, dy, s0, reset, snaps, sa, dsT) -> [dr, dw, dk,
dv, da, db, ds0]`, so `rwkv.ops.v7.cuda.wkv7_with(Wkv7Emulation(), ...)` runs the real Python
wrapper (padding, casts, autograd.Function) on top of it.
"""

from __future__ import annotations

import torch

SNAPSHOT_INTERVAL = 16  # -D_SNAPSHOT_INTERVAL_


class Wkv7Emulation:
    """`acc` is the arithmetic dtype: float32 like the kernel, or float64 to check the maths exactly
    (then the state/sa buffers are fp64 too; the kernel's are always fp32)."""

    def __init__(self, acc: torch.dtype = torch.float32, chunk: int = SNAPSHOT_INTERVAL):
        self.acc = acc
        self.buf = torch.float64 if acc == torch.float64 else torch.float32
        self.chunk = chunk

    def _f(self, x):  # to_f: storage dtype -> arithmetic dtype
        return x.to(self.acc)

    def forward(self, r, w, k, v, a, b, s0, reset):
        B, T, H, N = r.shape
        C = self.chunk
        assert T % C == 0
        f = self._f
        state = f(s0).clone()  # [B,H,i,j]: thread i's register row S[i,:]   (change 1)
        y = torch.empty(B, T, H, N, dtype=r.dtype)
        sa_buf = torch.empty(B, T, H, N, dtype=self.buf)
        snaps = torch.empty(B, H, T // C, N, N, dtype=self.buf)
        for t in range(T):
            # shared vectors of step t, [B,H,N] (indexed by j)
            rs, dec, ks, as_, bs = f(r[:, t]), torch.exp(f(w[:, t])), f(k[:, t]), f(a[:, t]), f(b[:, t])
            if reset is not None:
                state = torch.where(reset[:, t].view(B, 1, 1, 1), torch.zeros_like(state), state)
            sa = (as_[:, :, None, :] * state).sum(-1)  # thread i: Σ_j a[j] state[j]
            sa_buf[:, t] = sa.to(self.buf)
            vi = f(v[:, t])  # thread i's own v[i]
            state = (state * dec[:, :, None, :] + sa[..., None] * bs[:, :, None, :]
                     + vi[..., None] * ks[:, :, None, :])
            y[:, t] = (state * rs[:, :, None, :]).sum(-1).to(r.dtype)
            if (t + 1) % C == 0:
                snaps[:, :, t // C] = state.to(self.buf)
        return [y, state.to(self.buf).clone(), snaps, sa_buf]  # state after T: sT   (change 2)

    def backward(self, r, w, k, v, a, b, dy, s0, reset, snaps, sa_buf, dsT):
        B, T, H, N = r.shape
        C = self.chunk
        f = self._f
        dS = f(dsT).clone()  # thread i: row i of dL/dS_t           (change 3)
        dST = f(dsT).transpose(-1, -2).clone()  # thread i: column i of dL/dS_t
        stT = None  # thread i: column i of S_t (row i of S_tᵀ)
        outs = {n: torch.empty(B, T, H, N, dtype=r.dtype) for n in ("dr", "dw", "dk", "dv", "da", "db")}
        for t in range(T - 1, -1, -1):
            rs, dec, ks, vs, as_, bs = (f(r[:, t]), torch.exp(f(w[:, t])), f(k[:, t]), f(v[:, t]),
                                        f(a[:, t]), f(b[:, t]))
            sas, dys = f(sa_buf[:, t]), f(dy[:, t])
            if (t + 1) % C == 0:
                stT = f(snaps[:, :, t // C]).transpose(-1, -2).clone()
            # per-thread scalars (own channel i) as [B,H,N,1]; shared vectors over j as [B,H,1,N]
            ri, deci, ki, bi, ai, dyi = (x[..., None] for x in (rs, dec, ks, bs, as_, dys))
            rj, kj, vj, bj, aj, saj, dyj, decj = (x[:, :, None, :]
                                                  for x in (rs, ks, vs, bs, as_, sas, dys, dec))
            inv = 1.0 / deci
            # the fused pass over j
            dr = (stT * dyj).sum(-1)
            gr = dS + dyi * rj
            gc = dST + dyj * ri
            dS, dST = gr, gc
            dv = (gr * kj).sum(-1)
            dsa = (gr * bj).sum(-1)
            dk = (gc * vj).sum(-1)
            db = (gc * saj).sum(-1)
            stT = (stT - vj * ki - saj * bi) * inv  # back-step
            dw = (gc * stT).sum(-1) * dec

            if reset is not None and bool(reset[:, t].any()):
                rst = reset[:, t].view(B, 1, 1)
                dw = torch.where(rst, torch.zeros_like(dw), dw)
                # recompute S_{t-1} (column form) from the state entering the chunk, with saved sa
                c = t // C
                start = f(s0) if c == 0 else f(snaps[:, :, c - 1])
                rec = start.transpose(-1, -2).clone()
                for u in range(c * C, t):
                    rec = torch.where(reset[:, u].view(B, 1, 1, 1), torch.zeros_like(rec), rec)
                    du, ku, bu = (x[..., None] for x in (torch.exp(f(w[:, u])), f(k[:, u]), f(b[:, u])))
                    rec = rec * du + f(sa_buf[:, u])[:, :, None, :] * bu + f(v[:, u])[:, :, None, :] * ku
                stT = torch.where(rst[..., None], rec, stT)
            else:
                rst = torch.zeros(B, 1, 1, dtype=torch.bool)

            # dsa goes through shared memory: dsaj[j] is thread j's value
            dsaj = dsa[:, :, None, :]
            da = (dsaj * stT).sum(-1)
            dS_new = dS * decj + dsa[..., None] * aj
            dST_new = dST * deci + dsaj * ai
            da = torch.where(rst, torch.zeros_like(da), da)
            dS = torch.where(rst[..., None], torch.zeros_like(dS_new), dS_new)
            dST = torch.where(rst[..., None], torch.zeros_like(dST_new), dST_new)
            for name, val in zip(("dr", "dw", "dk", "dv", "da", "db"), (dr, dw, dk, dv, da, db)):
                outs[name][:, t] = val.to(r.dtype)
        ds0 = dS.to(self.buf).clone()  # dL/dS_{-1}                            (change 4)
        return [outs["dr"], outs["dw"], outs["dk"], outs["dv"], outs["da"], outs["db"], ds0]


class BrokenWkv7Emulation(Wkv7Emulation):
    """A deliberately wrong kernel (forgets the incoming final-state gradient) for self-check tests."""

    def backward(self, r, w, k, v, a, b, dy, s0, reset, snaps, sa_buf, dsT):
        return super().backward(r, w, k, v, a, b, dy, s0, reset, snaps, sa_buf, torch.zeros_like(dsT))
