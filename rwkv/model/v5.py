"""RWKV-5.2 "Eagle" (x052) as a plain nn.Module (docs/model-spec.md §2.2).

x052 is x060 without the data-dependent parts: a static "mix" token shift and a time-invariant
per-channel decay `time_decay` [H,N]. Everything else (block skeleton, r/k/v/gate/output/ln_x tail,
gated channel-mix, the [key, value] WKV state layout, the forward/state/reset/grad_cp contract) is
shared with rwkv.model.v6 and rwkv.model.base; only the version-specific hooks are overridden here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import wkv5
from .base import RWKVModel
from .config import RWKVConfig
from .state import wkv_from_initial
from .v6 import ChannelMix as ChannelMix6
from .v6 import TimeMix as TimeMix6


class TimeMix(TimeMix6):
    """x052 time-mix. The official module computes GroupNorm(y / head_size_divisor, eps = 1e-5); that is
    the same function as GroupNorm(y, eps = 64e-5), which pip uses and the shared tail applies
    (docs/model-spec.md §2.2)."""

    def _init_time_params(self, cfg: RWKVConfig) -> None:
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        vec = lambda: nn.Parameter(torch.empty(1, 1, C))
        # official order: time_mix_k, _v, _r, _g, time_decay, time_faaaa
        self.time_mix_k, self.time_mix_v, self.time_mix_r, self.time_mix_g = vec(), vec(), vec(), vec()
        # ω per channel; 2-D is what marks v5.2 (docs/model-spec.md §4.2)
        self.time_decay = nn.Parameter(torch.empty(H, N))
        self.time_faaaa = nn.Parameter(torch.empty(H, N))

    def _project(self, x, prev):
        # "mix" convention z·mix + z_prev·(1 − mix), the complement of "maa" (docs/model-spec.md §2.2); written in this
        # form (not z + δ⊙(1 − mix)) because the official trainer and pip round it this way
        xk = x * self.time_mix_k + prev * (1 - self.time_mix_k)
        xv = x * self.time_mix_v + prev * (1 - self.time_mix_v)
        xr = x * self.time_mix_r + prev * (1 - self.time_mix_r)
        xg = x * self.time_mix_g + prev * (1 - self.time_mix_g)
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        g = F.silu(self.gate(xg))
        return r, k, v, g, -torch.exp(self.time_decay.float())  # λ = −exp(ω), time-invariant [H,N]

    def _wkv(self, r, w, k, v, S, reset):
        B, T, C = r.shape
        H, N = self.time_faaaa.shape
        shape = (B, T, H, N)
        return wkv_from_initial(lambda r, k, v, **kw: wkv5(r, w, k, v, self.time_faaaa, **kw),
                                (r.view(shape), k.view(shape), v.view(shape)), S, reset, self.initial_state())


class ChannelMix(ChannelMix6):
    """x052 channel-mix: the x060 one with "mix"-convention shift coefficients (docs/model-spec.md §2.2)."""

    def _init_mix(self, C: int) -> None:
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C))

    def _mix(self, x, prev):
        mk, mr = self.time_mix_k, self.time_mix_r
        return x * mk + prev * (1 - mk), x * mr + prev * (1 - mr)


class RWKV5(RWKVModel):
    """x052 language model."""

    version = "x052"
    time_mix = TimeMix
    channel_mix = ChannelMix
