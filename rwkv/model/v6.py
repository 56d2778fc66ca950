"""RWKV-6 "Finch" (x060) as a plain nn.Module (docs/model-spec.md §2.1).

Parameter names, shapes and registration order are the official `.pth` keys, so a state_dict is a
checkpoint. The block skeleton and the forward/state/reset/grad_cp contract are the shared ones of
rwkv.model.base; only the time-mix and channel-mix differ. The per-layer state is
`(att_x_prev [B,C], S [B,H,N,N] fp32, ffn_x_prev [B,C])` with S **key-major** `S[key, value]`, the
layout of the `rwkv` pip package and the official kernels for v5/v6 (docs/model-spec.md §2), so a state converts to
pip's list without transposes.

The x052 classes in rwkv.model.v5 subclass the ones here and override the version-specific hooks
(`_init_time_params`, `_project`, `_wkv`, `_init_mix`, `_mix`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import wkv6
from ..ops.mix import shifted
from .base import GROUPNORM_EPS, RWKVModel, last_token, relu_square
from .config import RWKVConfig
from .state import wkv_from_initial

# time_maa_w2 slot order: the LoRA produces the data-dependent mix offsets for w, k, v, r, g (docs/model-spec.md §2.1)
MAA_SLOTS = ("w", "k", "v", "r", "g")


class TimeMix(nn.Module):
    """x060 time-mix (docs/model-spec.md §2.1). Shared tail with x052: r/k/v/gate/output linears, GroupNorm `ln_x`
    (eps = 1e-5·head_size_divisor² = 64e-5, head_size_divisor = 8), output = (ln_x(y) ⊙ SiLU(gate)) Woᵀ."""

    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        C, H = cfg.n_embd, cfg.n_head
        self._init_time_params(cfg)  # the time_* tensors come first in the official order
        # then, in the official registration order: receptance, key, value, output, gate, ln_x
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.gate = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=GROUPNORM_EPS)

    def _init_time_params(self, cfg: RWKVConfig) -> None:
        C, H, N, D = cfg.n_embd, cfg.n_head, cfg.head_size, cfg.d_mix_lora
        vec = lambda: nn.Parameter(torch.empty(1, 1, C))
        self.time_maa_x, self.time_maa_w, self.time_maa_k = vec(), vec(), vec()
        self.time_maa_v, self.time_maa_r, self.time_maa_g = vec(), vec(), vec()
        self.time_maa_w1 = nn.Parameter(torch.empty(C, len(MAA_SLOTS) * D))
        self.time_maa_w2 = nn.Parameter(torch.empty(len(MAA_SLOTS), D, C))
        self.time_decay = vec()
        self.time_decay_w1 = nn.Parameter(torch.empty(C, cfg.d_decay_lora))
        self.time_decay_w2 = nn.Parameter(torch.empty(cfg.d_decay_lora, C))
        self.time_faaaa = nn.Parameter(torch.empty(H, N))  # the bonus u; pip reads n_head from it

    def _project(self, x, prev):
        """Normalised input x and the previous token's `prev` -> (r, k, v, g, λ), all [B,T,C]
        (docs/model-spec.md §2.1)."""
        B, T, C = x.shape
        xx = prev - x  # δ: the "maa" convention mixes z + δ ⊙ μ
        D = self.time_maa_w2.shape[1]
        # data-dependent token shift: five LoRA offsets from one shared down-projection
        m = torch.tanh((x + xx * self.time_maa_x) @ self.time_maa_w1).view(B * T, len(MAA_SLOTS), D)
        m = torch.bmm(m.transpose(0, 1), self.time_maa_w2).view(len(MAA_SLOTS), B, T, C)
        mw, mk, mv, mr, mg = m.unbind(0)
        xw = x + xx * (self.time_maa_w + mw)
        xk = x + xx * (self.time_maa_k + mk)
        xv = x + xx * (self.time_maa_v + mv)
        xr = x + xx * (self.time_maa_r + mr)
        xg = x + xx * (self.time_maa_g + mg)
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        g = F.silu(self.gate(xg))
        # λ = −exp(ω) in fp32 (pip and the kernels take ω to fp32 first); unbounded below, docs/model-spec.md §2.1/§3.6
        omega = self.time_decay.float() + (torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2).float()
        return r, k, v, g, -torch.exp(omega)

    def _wkv(self, r, w, k, v, S, reset):
        B, T, C = r.shape
        H, N = self.time_faaaa.shape
        shape = (B, T, H, N)
        return wkv_from_initial(lambda r, w, k, v, **kw: wkv6(r, w, k, v, self.time_faaaa, **kw),
                                (r.view(shape), w.view(shape), k.view(shape), v.view(shape)), S, reset,
                                self.initial_state())

    def initial_state(self):
        """The learned initial state (state tuning, rwkv/peft) in this version's [key, value] layout: it
        is stored [H, value, key] like pip's state files (docs/model-spec.md §4.2), hence the transpose."""
        ts = getattr(self, "time_state", None)
        return None if ts is None else ts.transpose(-1, -2)

    def forward(self, x, x_prev, S, v_first, reset=None):
        """Same signature as the x070 time-mix; `v_first` (x070 only) is passed through unchanged."""
        B, T, C = x.shape
        r, k, v, g, w = self._project(x, shifted(x, x_prev, reset))
        y, S = self._wkv(r, w, k, v, S, reset)
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        return self.output(y * g), last_token(x), S, v_first


class ChannelMix(nn.Module):
    """x060/x052 channel-mix with a receptance gate: σ(z_r Wrᵀ) ⊙ (relu(z_k Wkᵀ)² Wvᵀ) (docs/model-spec.md §2.1)."""

    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        self._init_mix(C)  # official order: the two mix vectors, then key, receptance, value
        self.key = nn.Linear(C, cfg.dim_ffn, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, C, bias=False)

    def _init_mix(self, C: int) -> None:
        self.time_maa_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.empty(1, 1, C))

    def _mix(self, x, prev):
        """x060 "maa" convention: z_• = z + δ ⊙ maa_• with δ = z_prev − z (docs/model-spec.md §2.1)."""
        xx = prev - x
        return x + xx * self.time_maa_k, x + xx * self.time_maa_r

    def forward(self, x, x_prev, reset=None):
        xk, xr = self._mix(x, shifted(x, x_prev, reset))
        kv = self.value(relu_square(self.key(xk)))
        return torch.sigmoid(self.receptance(xr)) * kv, last_token(x)


class RWKV6(RWKVModel):
    """x060 language model (no unused parameters, so nothing is frozen)."""

    version = "x060"
    time_mix = TimeMix
    channel_mix = ChannelMix
