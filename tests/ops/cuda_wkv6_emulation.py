"""A step-by-step PyTorch emulation of rwkv/ops/csrc/wkv6_state.cu, for CPU tests only (not in the package).

Mirrors the kernels' loops per (batch, head) block and per thread (vectorised, as in
cuda_wkv7_emulation.py): the forward with thread i = value column i, the backward's forward sweep
(thread i = key row i: ∂r and q) and reverse sweep (row and column i of G = ∂L/∂S: ∂k, ∂v, ∂u, ∂s0),
and ∂λ from the pair-sum identity with fp64 accumulators restarted at resets.

Interface = the C++ binding (rwkv/ops/csrc/wkv6_state_op.cpp): `forward(r, w, k, v, u, s0, reset) -> [y, sT]`,
`backward(r, w, k, v, u, dy, s0, reset, dsT) -> [dr, dw, dk, dv, du [B,H,N], ds0]`.
"""

from __future__ import annotations

import torch


class Wkv6Emulation:
    """`acc` is the arithmetic dtype: float32 like the kernel, or float64 to check the maths exactly."""

    def __init__(self, acc: torch.dtype = torch.float32):
        self.acc = acc
        self.buf = torch.float64 if acc == torch.float64 else torch.float32

    def _f(self, x):
        return x.to(self.acc)

    def _reset_at(self, reset, t, B):
        if reset is None:
            return None
        return reset[:, t].view(B, 1, 1, 1)

    def forward(self, r, w, k, v, u, s0, reset):
        B, T, H, N = r.shape
        f = self._f
        state = f(s0).transpose(-1, -2).clone()  # [B,H,i,j]: thread i (value) holds S[:, i]
        uk_u = f(u)  # [H,N]
        y = torch.empty(B, T, H, N, dtype=r.dtype)
        for t in range(T):
            rs, dec, ks = f(r[:, t]), torch.exp(f(w[:, t])), f(k[:, t])
            uk = uk_u * ks
            m = self._reset_at(reset, t, B)
            if m is not None:
                state = torch.where(m, torch.zeros_like(state), state)
            vi = f(v[:, t])[..., None]  # thread i's v[i]
            y[:, t] = (rs[:, :, None, :] * (state + uk[:, :, None, :] * vi)).sum(-1).to(r.dtype)
            state = dec[:, :, None, :] * state + ks[:, :, None, :] * vi
        return [y, state.transpose(-1, -2).to(self.buf).clone()]

    def backward(self, r, w, k, v, u, dy, s0, reset, dsT):
        B, T, H, N = r.shape
        f = self._f
        ui = f(u)[None, :, :]  # [1,H,N]: thread i's u[i]
        dsT_ = f(dsT)
        dr = torch.empty(B, T, H, N, dtype=r.dtype)
        q = torch.empty(B, T, H, N, dtype=self.buf)
        # sweep 1: thread i = key row i of S
        srow = f(s0).clone()
        for t in range(T):
            vs, dys = f(v[:, t]), f(dy[:, t])
            m = self._reset_at(reset, t, B)
            if m is not None:
                srow = torch.where(m, torch.zeros_like(srow), srow)
            ri, ki, di = f(r[:, t]), f(k[:, t]), torch.exp(f(w[:, t]))
            sdy = (srow * dys[:, :, None, :]).sum(-1)
            vdy = (vs * dys).sum(-1, keepdim=True)
            srow = di[..., None] * srow + ki[..., None] * vs[:, :, None, :]
            dr[:, t] = (sdy + ui * ki * vdy).to(r.dtype)
            q[:, t] = (ri * sdy).to(self.buf)
        F_i = (dsT_ * srow).sum(-1)
        # sweep 2: row and column i of G_t
        grow, gcol = dsT_.clone(), dsT_.transpose(-1, -2).clone()
        qacc = torch.zeros(B, H, N, dtype=torch.float64)
        kacc = torch.zeros_like(qacc)
        facc = F_i.double()
        du = torch.zeros(B, H, N, dtype=self.acc)
        dk = torch.empty(B, T, H, N, dtype=r.dtype)
        dv = torch.empty_like(dk)
        dw = torch.empty(B, T, H, N, dtype=self.buf)
        for t in range(T - 1, -1, -1):
            rs, dec, ks, vs, dys = (f(r[:, t]), torch.exp(f(w[:, t])), f(k[:, t]), f(v[:, t]),
                                    f(dy[:, t]))
            ruk = rs * ui * ks
            rst = (torch.zeros(B, dtype=torch.bool) if reset is None else reset[:, t]).view(B, 1, 1)
            keep = (~rst).to(self.acc)[..., None]
            gv = (grow * vs[:, :, None, :]).sum(-1)
            gk = (gcol * ks[:, :, None, :]).sum(-1)
            vdy = (vs * dys).sum(-1, keepdim=True)
            sruk = ruk.sum(-1, keepdim=True)
            grow = keep * (dec[..., None] * grow + rs[..., None] * dys[:, :, None, :])
            gcol = keep * (dec[:, :, None, :] * gcol + rs[:, :, None, :] * dys[..., None])
            dk[:, t] = (gv + ui * rs * vdy).to(r.dtype)
            dv[:, t] = (gk + dys * sruk).to(r.dtype)
            du = du + rs * ks * vdy
            kacc = kacc + (ks * gv).double()
            dw[:, t] = torch.where(rst, torch.zeros_like(qacc), qacc + facc - kacc).to(self.buf)
            qacc = qacc + q[:, t].double()
            zero = torch.zeros_like(qacc)
            qacc, kacc, facc = (torch.where(rst, zero, x) for x in (qacc, kacc, facc))
        return [dr, dw, dk, dv, du.to(self.buf), grow.to(self.buf).clone()]
