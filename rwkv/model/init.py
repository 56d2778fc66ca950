"""Fresh weights exactly as the official trainer's effective init (docs/model-spec.md §1.4 for x070, §2 for x060/x052).

The official flow builds the module, then `generate_init_weight()` overrides every 2-D `*.weight` except
emb/head/ln; what matters is the resulting tensors, which are reproduced here per parameter family.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def layer_ratios(layer_id: int, n_layer: int) -> tuple[float, float]:
    """r01 = l/(L−1) and r10 = 1 − l/L (docs/model-spec.md §1.4). L = 1 divides by zero in the original; use r01 = 0."""
    r01 = layer_id / (n_layer - 1) if n_layer > 1 else 0.0
    r10 = 1.0 - layer_id / n_layer
    return r01, r10


def channel_ramps(C: int, N: int):
    """ddd_n = n/C, lin_n = n/(C−1) − 0.5, zig_n = zz·|zz| with zz the per-head ramp (docs/model-spec.md §1.4)."""
    n = torch.arange(C, dtype=torch.float64)
    ddd = n / C
    lin = n / (C - 1) - 0.5
    zz = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
    zig = zz * zz.abs()
    return ddd, lin, zig


@torch.no_grad()
def orthogonal_(t: torch.Tensor, gain: float) -> None:
    """torch orthogonal init in fp32 (QR of a Gaussian), then copied into t's dtype."""
    tmp = torch.empty(t.shape, dtype=torch.float32)
    nn.init.orthogonal_(tmp, gain=gain)
    t.copy_(tmp)


@torch.no_grad()
def _set(p: torch.Tensor, values: torch.Tensor) -> None:
    p.copy_(values.to(p.dtype).reshape(p.shape))


@torch.no_grad()
def init_common(model) -> None:
    """emb, head and the LayerNorms, shared by all versions (docs/model-spec.md §1.4 table, last rows)."""
    V, C = model.emb.weight.shape
    nn.init.uniform_(model.emb.weight, -1e-4, 1e-4)
    orthogonal_(model.head.weight, 0.5 * math.sqrt(V / C) if V > C else 0.5)
    for mod in model.modules():
        if isinstance(mod, nn.LayerNorm):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)


@torch.no_grad()
def init_x070(model) -> None:
    """Current x070 init (train_temp since 2025-05-06), docs/model-spec.md §1.4."""
    cfg = model.cfg
    C, N, L = cfg.n_embd, cfg.head_size, cfg.n_layer
    ddd, lin, zig = channel_ramps(C, N)
    init_common(model)
    for l, block in enumerate(model.blocks):
        r01, r10 = layer_ratios(l, L)
        att, ffn = block.att, block.ffn
        _set(att.x_r, 1 - ddd ** (0.2 * r10))
        _set(att.x_w, 1 - ddd ** (0.9 * r10))
        _set(att.x_k, 1 - ddd ** (0.7 * r10))
        _set(att.x_v, 1 - ddd ** (0.7 * r10))
        _set(att.x_a, 1 - ddd ** (0.9 * r10))
        _set(att.x_g, 1 - ddd ** (0.2 * r10))
        www = -6 + 6 * (torch.arange(C, dtype=torch.float64) / (C - 1)) ** (1 + r01 ** 0.3)
        _set(att.w0, www + 0.5 + 2.5 * zig)
        for name in ("w1", "a1", "v1", "g1"):
            nn.init.zeros_(getattr(att, name))
        for name in ("w2", "a2", "v2", "g2"):
            # rows < cols here, so no √(rows/cols) factor (docs/model-spec.md §1.4)
            orthogonal_(getattr(att, name), 0.1)
        _set(att.a0, -0.19 + 0.3 * zig + 0.4 * lin)
        _set(att.v0, 0.73 - 0.4 * lin)
        _set(att.k_k, 0.71 - 0.1 * lin)
        att.k_a.fill_(1.02)
        att.r_k.fill_(-0.04)
        orthogonal_(att.receptance.weight, 1.0)
        orthogonal_(att.key.weight, 0.1)
        orthogonal_(att.value.weight, 1.0)
        nn.init.zeros_(att.output.weight)
        att.ln_x.weight.fill_(((l + 1) / L) ** 0.7)
        nn.init.zeros_(att.ln_x.bias)
        _set(ffn.x_k, 1 - ddd ** (r10 ** 4))
        orthogonal_(ffn.key.weight, 1.0)
        nn.init.zeros_(ffn.value.weight)
