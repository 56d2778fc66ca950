"""RWKV-7 "Goose" (x070) as a plain nn.Module (docs/model-spec.md §1) on the shared skeleton of base.py.

Parameter names, shapes and registration order are exactly the official `.pth` keys (docs/model-spec.md §1.2), so a
state_dict is a checkpoint. `forward(idx, state=None, reset=None) -> (logits, state)` works for any T;
the state is a value (see rwkv.model.state) and is never modified in place.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import wkv7
from ..ops.keys import wkv7_keys
from ..ops.mix import token_shift_mix
from .base import GROUPNORM_EPS, RWKVModel, last_token, relu_square
from .config import RWKVConfig
from .state import wkv_from_initial

# λ = −e^{−1/2}·σ(ω): the decay clamp of the current official kernel, docs/model-spec.md §1.3.
NEG_EXP_HALF = -0.6065306597126334


class TimeMix(nn.Module):
    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        vec = lambda: nn.Parameter(torch.empty(1, 1, C))
        lora = lambda d_in, d_out: nn.Parameter(torch.empty(d_in, d_out))
        # registration order = official key order (docs/model-spec.md §1.2)
        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (vec() for _ in range(6))
        self.w1, self.w2, self.w0 = lora(C, cfg.d_decay_lora), lora(cfg.d_decay_lora, C), vec()
        self.a1, self.a2, self.a0 = lora(C, cfg.d_aaa_lora), lora(cfg.d_aaa_lora, C), vec()
        self.v1, self.v2, self.v0 = lora(C, cfg.d_mv_lora), lora(cfg.d_mv_lora, C), vec()
        self.g1, self.g2 = lora(C, cfg.d_gate_lora), lora(cfg.d_gate_lora, C)
        self.k_k, self.k_a = vec(), vec()
        self.r_k = nn.Parameter(torch.empty(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=GROUPNORM_EPS)

    def forward(self, x, x_prev, S, v_first, reset=None):
        B, T, C = x.shape
        H, N = self.r_k.shape
        # x + (z_{t−1} − x) ⊙ x_*, docs/model-spec.md §1.3 (one fused pass on CPU, rwkv/ops/mix/)
        xr, xw, xk, xv, xa, xg = token_shift_mix(
            x, x_prev, reset, (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))

        r = self.receptance(xr)
        # log-decay in fp32 even under bf16 (the official kernel also applies σ in fp32), docs/model-spec.md §1.3
        w = NEG_EXP_HALF * torch.sigmoid((self.w0 + torch.tanh(xw @ self.w1) @ self.w2).float())
        k = self.key(xk)
        v = self.value(xv)
        if self.layer_id == 0:
            v_first = v
        else:  # value residual towards layer 0's value (no tanh), docs/model-spec.md §1.3
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        # kk = normalize(k ⊙ k_k) per head, k ⊙ (1 + (a − 1) ⊙ k_a), and the kernel's a = −kk, b = kk ⊙ a
        # (docs/model-spec.md §1.3; one fused pass on CPU, rwkv/ops/keys/)
        k, a_in, b_in = wkv7_keys(k, a, self.k_k, self.k_a, H)

        shape = (B, T, H, N)
        # a learned initial state (state tuning, rwkv/peft) is stored [H, value, key], this kernel's layout
        y, S = wkv_from_initial(wkv7, (r.view(shape), w.view(shape), k.view(shape), v.view(shape),
                                       a_in.view(shape), b_in.view(shape)), S, reset,
                                getattr(self, "time_state", None))
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        bonus = (r.view(shape) * k.view(shape) * self.r_k).sum(-1, keepdim=True) * v.view(shape)
        out = self.output((y + bonus.view(B, T, C)) * g)
        return out, last_token(x), S, v_first


class ChannelMix(nn.Module):
    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        self.x_k = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, cfg.dim_ffn, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, C, bias=False)

    def forward(self, x, x_prev, reset=None):
        (xk,) = token_shift_mix(x, x_prev, reset, (self.x_k,))
        return self.value(relu_square(self.key(xk))), last_token(x)


class RWKV7(RWKVModel):
    """x070 language model."""

    version = "x070"
    time_mix = TimeMix
    channel_mix = ChannelMix

    def __init__(self, cfg: RWKVConfig, grad_cp: bool = False):
        super().__init__(cfg, grad_cp)
        # Layer 0 stores v0/v1/v2 like the official files (docs/model-spec.md §1.2) but never uses them: freeze them so
        # DDP does not wait for gradients that never come and optimizers skip them.
        for name in ("v0", "v1", "v2"):
            getattr(self.blocks[0].att, name).requires_grad_(False)
