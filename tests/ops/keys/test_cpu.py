"""RWKV-7 key preparation (rwkv/ops/keys/, rwkv/ops/csrc/kk_cpu.c) against the spec's formula.

kk = normalize(k ⊙ k_k) per head, k' = k ⊙ (1 + (a − 1) ⊙ k_a), a_in = −kk, b_in = kk ⊙ a: the fp32 C
kernel within 1e-6 (relative to the largest value) of the fp64 reference for the three outputs and the
gradients of k, a, k_k and k_a, including a head whose k ⊙ k_k is zero (F.normalize's eps clamp), outputs
that do not reach the loss, and splits over several parts.
"""

from __future__ import annotations

import pytest
import torch

from rwkv.ops import dispatch
from rwkv.ops.keys import cpu as keys_cpu
from rwkv.ops.keys import wkv7_keys, wkv7_keys_reference

TOL = 1e-6


def _case(B, T, H, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    C = H * N
    k, a, k_k, k_a = rnd(B, T, C), torch.sigmoid(rnd(B, T, C)), rnd(1, 1, C), rnd(1, 1, C)
    return k, a, k_k, k_a, rnd(3, B, T, C)


def _run(fn, tensors, gy, H, dtype, used=(0, 1, 2)):
    leaves = [t.detach().to(dtype).clone().requires_grad_() for t in tensors]
    outs = fn(*leaves, H)
    torch.autograd.backward([outs[i] for i in used], [gy[i].to(dtype) for i in used])
    return {"out": torch.stack([o.detach() for o in outs]),
            **{f"d{n}": t.grad for n, t in zip(("k", "a", "k_k", "k_a"), leaves)}}


def _rel(got, ref):
    return {n: ((got[n].double() - ref[n]).abs().max() / ref[n].abs().max()).item() for n in ref}


def _cpu(lib):
    return lambda *t: keys_cpu.wkv7_keys_with(lib, *t)


@pytest.mark.parametrize("B,T,H,N", [(1, 1, 1, 8), (2, 7, 3, 16), (3, 5, 2, 64)])
def test_matches_fp64_reference(lib, B, T, H, N):
    k, a, k_k, k_a, gy = _case(B, T, H, N, seed=T)
    ref = _run(wkv7_keys_reference, (k, a, k_k, k_a), gy, H, torch.float64)
    got = _run(_cpu(lib), (k, a, k_k, k_a), gy, H, torch.float32)
    err = _rel(got, ref)
    assert max(err.values()) < TOL, err


def test_zero_key_head_takes_the_eps_clamp(lib):
    """k ⊙ k_k = 0 on one head: kk = 0 and ∂u = ∂kk / eps, exactly as F.normalize's clamp."""
    k, a, k_k, k_a, gy = _case(2, 3, 2, 8, seed=1)
    k[1, 2, 8:] = 0.0
    ref = _run(wkv7_keys_reference, (k, a, k_k, k_a), gy, 2, torch.float64)
    got = _run(_cpu(lib), (k, a, k_k, k_a), gy, 2, torch.float32)
    assert got["out"][1, 1, 2, 8:].abs().max() == 0  # a_in = −kk = 0 there
    assert ref["dk"][1, 2, 8:].abs().max() > 1e6  # the 1/eps branch is really taken
    assert torch.allclose(got["dk"][1, 2, 8:].double(), ref["dk"][1, 2, 8:], rtol=1e-6, atol=0)
    err = _rel(got, ref)
    assert max(err.values()) < TOL, err


def test_unused_outputs(lib):
    k, a, k_k, k_a, gy = _case(2, 4, 2, 16, seed=3)
    for used in ((0,), (1,), (2,), (1, 2)):
        ref = _run(wkv7_keys_reference, (k, a, k_k, k_a), gy, 2, torch.float64, used)
        got = _run(_cpu(lib), (k, a, k_k, k_a), gy, 2, torch.float32, used)
        ref = {n: t if t is not None else torch.zeros(1, dtype=torch.float64) for n, t in ref.items()}
        got = {n: t if t is not None else torch.zeros(1) for n, t in got.items()}
        err = {n: (got[n].double() - ref[n]).abs().max().item() / max(ref[n].abs().max().item(), 1e-30)
               for n in ref}
        assert max(err.values()) < TOL, (used, err)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_part_split(lib, threads):
    k, a, k_k, k_a, gy = _case(3, 5, 2, 16, seed=8)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(_cpu(lib), (k, a, k_k, k_a), gy, 2, torch.float32)
        torch.set_num_threads(threads)
        many = _run(_cpu(lib), (k, a, k_k, k_a), gy, 2, torch.float32)
    finally:
        torch.set_num_threads(n)
    for name in ("out", "dk", "da"):
        assert torch.equal(one[name], many[name]), name
    for name in ("dk_k", "dk_a"):  # sums of per-part partials: equal up to rounding
        assert torch.allclose(one[name], many[name], rtol=1e-5, atol=1e-6), name


def test_dispatch(lib):
    k, a, k_k, k_a, _ = _case(1, 3, 2, 8)
    assert dispatch.cpu_ready("keys") is True
    f32 = [t.float() for t in (k, a, k_k, k_a)]
    assert all(torch.equal(x, y) for x, y in zip(wkv7_keys(*f32, 2), wkv7_keys(*f32, 2, backend="cpu")))
    ref = wkv7_keys_reference(k, a, k_k, k_a, 2)
    assert all(torch.equal(x, y) for x, y in zip(wkv7_keys(k, a, k_k, k_a, 2), ref))  # fp64: PyTorch
    with pytest.raises(ValueError, match="unknown backend"):
        wkv7_keys(*f32, 2, backend="fused")
