"""Token-shift mixes (docs/model-spec.md §1.3): `x + (z_{t−1} − x) ⊙ m` for several mix vectors m at once.

`token_shift_mix(x, x_prev, reset, mixes)` takes x [B, T, C], the carried previous token x_prev [B, C]
(z_{−1}), an optional bool reset [B, T] (z_{t−1} = 0 where a document starts) and a sequence of mix
vectors broadcastable to [C] (the x_r … x_g parameters, [1, 1, C]); it returns one [B, T, C] tensor per
mix vector. This is the spec's formula in PyTorch; under `auto` (rwkv/ops/dispatch.py) fp32 CPU tensors go
through the C kernel (rwkv/ops/mix/cpu.py) once it built and passed its self-check against this formula.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def shifted(x: torch.Tensor, x_prev: torch.Tensor, reset: torch.Tensor | None) -> torch.Tensor:
    """z_{t−1} for every t, with z_{−1} = the carried x_prev; zero context where a document starts."""
    prev = torch.cat([x_prev.unsqueeze(1).to(x.dtype), x[:, :-1]], dim=1)
    if reset is not None:
        prev = prev.masked_fill(reset.unsqueeze(-1), 0.0)
    return prev


def token_shift_mix_reference(x, x_prev, reset, mixes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    xx = shifted(x, x_prev, reset) - x
    return [x + xx * m for m in mixes]

