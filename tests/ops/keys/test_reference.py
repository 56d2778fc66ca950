"""The x070 key-preparation reference (rwkv/ops/keys/reference.py), the fp64 formula the C kernel is held to
in tests/ops/keys/test_cpu.py, against the formula written out per token and head."""

from __future__ import annotations

import torch

from rwkv.ops.keys import wkv7_keys_reference
from tests.ops.keys.test_cpu import _case


def test_reference_is_the_formula_per_head():
    """The fp64 reference the C kernel is held to, against the formula of the module docstring written out per
    token and head (normalize = u / max(‖u‖₂, 1e-12), F.normalize's default that the official model uses),
    including a head whose k ⊙ k_k is zero."""
    B, T, H, N = 2, 3, 2, 8
    k, a, k_k, k_a, _ = _case(B, T, H, N, seed=6)
    k[1, 2, N:] = 0.0
    kp, a_in, b_in = (torch.empty_like(k) for _ in range(3))
    for b in range(B):
        for t in range(T):
            for h in range(H):
                s = slice(h * N, (h + 1) * N)
                u = k[b, t, s] * k_k[0, 0, s]
                kk = u / max(u.norm().item(), 1e-12)
                kp[b, t, s] = k[b, t, s] * (1 + (a[b, t, s] - 1) * k_a[0, 0, s])
                a_in[b, t, s], b_in[b, t, s] = -kk, kk * a[b, t, s]
    for got, want in zip(wkv7_keys_reference(k, a, k_k, k_a, H), (kp, a_in, b_in), strict=True):
        torch.testing.assert_close(got, want, atol=1e-14, rtol=0)
    assert a_in[1, 2, N:].abs().max() == 0
