"""The token-shift mix reference (rwkv/ops/mix/reference.py), the fp64 formula the C kernel is held to in
tests/ops/mix/test_cpu.py, against docs/model-spec.md §1.3 written out per token."""

from __future__ import annotations

import torch

from rwkv.ops.mix import token_shift_mix_reference
from tests.ops.mix.test_cpu import _case


def test_reference_is_the_formula_token_by_token():
    """The fp64 reference the C kernel is held to, against docs/model-spec.md §1.3's token shift written out per
    token: z_{t-1} is x_prev at t = 0 and 0 where a document starts, out_k = x + (z_{t-1} − x)·m_k."""
    B, T, C, K = 3, 6, 8, 3
    x, x_prev, m, _ = _case(B, T, C, K, seed=4)
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, 0] = reset[1, 3] = reset[2, T - 1] = True
    want = torch.empty(K, B, T, C, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            prev = torch.zeros(C, dtype=torch.float64) if reset[b, t] else (x_prev[b] if t == 0 else x[b, t - 1])
            for j in range(K):
                want[j, b, t] = x[b, t] + (prev - x[b, t]) * m[j].flatten()
    got = torch.stack(token_shift_mix_reference(x, x_prev, reset, list(m)))
    torch.testing.assert_close(got, want, atol=1e-14, rtol=0)
