"""RWKV-7's key preparation for the WKV kernel (docs/model-spec.md §1.3).

`wkv7_keys(k, a, k_k, k_a, n_head) -> (k', a_in, b_in)`, all [B, T, C]: with kk = normalize(k ⊙ k_k) over
each head's N channels, k' = k ⊙ (1 + (a − 1) ⊙ k_a) (the key the kernel sees), a_in = −kk and
b_in = kk ⊙ a (the in-context-learning rate terms of the state update). This is the spec's formula in
PyTorch; under `auto` (rwkv/ops/dispatch.py) fp32 CPU tensors go through the C kernel (rwkv/ops/keys/cpu.py)
once it built and passed its self-check against this formula.
"""

from __future__ import annotations

import torch.nn.functional as F

NORM_EPS = 1e-12  # F.normalize's default, as the official model


def wkv7_keys_reference(k, a, k_k, k_a, n_head: int):
    B, T, C = k.shape
    kk = F.normalize((k * k_k).view(B, T, n_head, C // n_head), dim=-1, p=2.0, eps=NORM_EPS).view(B, T, C)
    return k * (1 + (a - 1) * k_a), -kk, kk * a

