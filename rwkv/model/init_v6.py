"""Official init for x060 (docs/model-spec.md §2.1) and x052 (§2.2).

In the official flow `generate_init_weight()` keeps the module's own init for everything named
`time_*` / `*_w1` / `*_w2` / `ln*`, sets `ln_x.weight = ((l+1)/L)^0.7`, and overrides every other 2-D
`*.weight`: emb U(±1e-4), head orthogonal (as x070), and the linears orthogonal with a per-name gain,
zero where the gain is 0 (docs/model-spec.md §2.1). Unlike x070's LoRA case, the gain is used as-is (no √(rows/cols)).
"""

from __future__ import annotations

import torch
from torch import nn

from .init import _set, channel_ramps, init_common, layer_ratios, orthogonal_

# gain per linear layer (docs/model-spec.md §2.1 "Init", the same for x052 per §2.2); 0 means zeros
LINEAR_GAINS = {
    "att.receptance": 1.0, "att.key": 0.1, "att.value": 1.0, "att.gate": 0.1, "att.output": 0.0,
    "ffn.key": 1.0, "ffn.receptance": 0.0, "ffn.value": 0.0,
}


def decay_and_bonus(C: int, r01: float):
    """time_decay_n = −6 + 5·(n/(C−1))^(0.7 + 1.3·r01);  time_faaaa_n = r01·(1 − n/(C−1)) + zigzag_n with
    zigzag_n = ((n+1) mod 3 − 1)·0.1 (docs/model-spec.md §2.1; x052 uses the same values shaped [H,N], §2.2)."""
    n = torch.arange(C, dtype=torch.float64)
    ramp = n / (C - 1)
    decay = -6 + 5 * ramp ** (0.7 + 1.3 * r01)
    bonus = r01 * (1 - ramp) + (((n + 1) % 3) - 1) * 0.1
    return decay, bonus


@torch.no_grad()
def _init_linears_and_ln_x(block, layer_id: int, n_layer: int) -> None:
    for name, gain in LINEAR_GAINS.items():
        part, lin = name.split(".")
        weight = getattr(getattr(block, part), lin).weight
        if gain == 0:
            nn.init.zeros_(weight)
        else:
            orthogonal_(weight, gain)
    block.att.ln_x.weight.fill_(((layer_id + 1) / n_layer) ** 0.7)
    nn.init.zeros_(block.att.ln_x.bias)  # GroupNorm's own init, kept by generate_init_weight


@torch.no_grad()
def init_x060(model) -> None:
    """x060 init, docs/model-spec.md §2.1."""
    C, L = model.cfg.n_embd, model.cfg.n_layer
    ddd = channel_ramps(C, model.cfg.head_size)[0]  # ddd_n = n/C (docs/model-spec.md §1.4)
    init_common(model)
    for l, block in enumerate(model.blocks):
        r01, r10 = layer_ratios(l, L)
        att, ffn = block.att, block.ffn
        for name in ("time_maa_x", "time_maa_w", "time_maa_k"):
            _set(getattr(att, name), 1 - ddd ** r10)
        _set(att.time_maa_v, 1 - (ddd ** r10 + 0.3 * r01))
        _set(att.time_maa_r, 1 - ddd ** (0.5 * r10))
        _set(att.time_maa_g, 1 - ddd ** (0.5 * r10))
        nn.init.zeros_(att.time_maa_w1)
        nn.init.uniform_(att.time_maa_w2, -0.01, 0.01)
        decay, bonus = decay_and_bonus(C, r01)
        _set(att.time_decay, decay)
        nn.init.zeros_(att.time_decay_w1)
        nn.init.uniform_(att.time_decay_w2, -0.01, 0.01)
        _set(att.time_faaaa, bonus)
        _set(ffn.time_maa_k, 1 - ddd ** (r10 ** 3))
        _set(ffn.time_maa_r, 1 - ddd ** (r10 ** 3))
        _init_linears_and_ln_x(block, l, L)


@torch.no_grad()
def init_x052(model) -> None:
    """x052 init, docs/model-spec.md §2.2 ("mix" = 1 − "maa", so these are the complements of ddd powers)."""
    C, L = model.cfg.n_embd, model.cfg.n_layer
    ddd = channel_ramps(C, model.cfg.head_size)[0]  # ddd_n = n/C (docs/model-spec.md §1.4)
    init_common(model)
    for l, block in enumerate(model.blocks):
        r01, r10 = layer_ratios(l, L)
        att, ffn = block.att, block.ffn
        _set(att.time_mix_k, ddd ** r10)
        _set(att.time_mix_v, ddd ** r10 + 0.3 * r01)
        _set(att.time_mix_r, ddd ** (0.5 * r10))
        _set(att.time_mix_g, ddd ** (0.5 * r10))
        decay, bonus = decay_and_bonus(C, r01)
        _set(att.time_decay, decay)
        _set(att.time_faaaa, bonus)
        _set(ffn.time_mix_k, ddd ** r10)
        _set(ffn.time_mix_r, ddd ** r10)
        _init_linears_and_ln_x(block, l, L)
