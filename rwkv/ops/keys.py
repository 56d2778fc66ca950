"""RWKV-7's key preparation for the WKV kernel (docs/model-spec.md §1.3).

`wkv7_keys(k, a, k_k, k_a, n_head) -> (k', a_in, b_in)`, all [B, T, C]: with kk = normalize(k ⊙ k_k) over
each head's N channels, k' = k ⊙ (1 + (a − 1) ⊙ k_a) (the key the kernel sees), a_in = −kk and
b_in = kk ⊙ a (the in-context-learning rate terms of the state update). The reference is the spec's
formula in PyTorch; fp32 CPU tensors go through rwkv/ops/csrc/kk_cpu.c (one pass forward, one
backward) once it built and passed its self-check (cpu_backend.ready("keys")).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import cpu_or_reference

NORM_EPS = 1e-12  # F.normalize's default, as the official model


def wkv7_keys_reference(k, a, k_k, k_a, n_head: int):
    B, T, C = k.shape
    kk = F.normalize((k * k_k).view(B, T, n_head, C // n_head), dim=-1, p=2.0, eps=NORM_EPS).view(B, T, C)
    return k * (1 + (a - 1) * k_a), -kk, kk * a


def wkv7_keys(k, a, k_k, k_a, n_head: int, backend: str = "auto"):
    """See the module docstring; `backend` is `auto`, `reference` or `cpu`."""
    fast_ok = (k.device.type == "cpu" and all(t.dtype == torch.float32 for t in (k, a, k_k, k_a))
               and a.shape == k.shape and k_k.numel() == k_a.numel() == k.shape[-1])
    if cpu_or_reference("wkv7_keys", "keys", backend, fast_ok) == "cpu":
        from . import cpu_backend

        return cpu_backend.wkv7_keys_cpu(k, a, k_k, k_a, n_head)
    return wkv7_keys_reference(k, a, k_k, k_a, n_head)
