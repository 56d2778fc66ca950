"""Token-shift mixes (rwkv/ops/mix/, rwkv/ops/csrc/mix_cpu.c) against the spec's formula.

The C kernel is fp32; it is held to 1e-6 relative to the fp64 reference for the outputs and the
gradients of x, x_prev and every mix vector, with resets (a document starting at t = 0, mid-row and at
the last token), at row counts that put part boundaries inside documents, with unused outputs (None
gradients); tests/model/test_v7_cpu_kernels.py checks them inside the model.
"""

from __future__ import annotations

import pytest
import torch

from rwkv.ops import dispatch
from rwkv.ops.mix import cpu as mix_cpu
from rwkv.ops.mix import token_shift_mix, token_shift_mix_reference

TOL = 1e-6


def _case(B, T, C, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    return rnd(B, T, C), rnd(B, C), rnd(K, 1, 1, C), rnd(K, B, T, C)


def _run(fn, x, x_prev, m, gy, reset, dtype, used=None):
    leaves = [t.detach().to(dtype).clone().requires_grad_() for t in (x, x_prev, m)]
    outs = fn(leaves[0], leaves[1], reset, list(leaves[2]))
    used = range(len(outs)) if used is None else used
    torch.autograd.backward([outs[k] for k in used], [gy[k].to(dtype) for k in used])
    return {"out": torch.stack(outs).detach(), "dx": leaves[0].grad, "dx_prev": leaves[1].grad,
            "dm": leaves[2].grad}


def _rel(got, ref):
    return {n: ((got[n].double() - ref[n]).abs().max() / ref[n].abs().max()).item() for n in ref}


def _cpu(lib):
    return lambda *a: mix_cpu.token_shift_mix_with(lib, *a)


@pytest.mark.parametrize("B,T,K", [(1, 1, 1), (2, 5, 6), (3, 17, 2)])
@pytest.mark.parametrize("with_reset", [False, True])
def test_matches_fp64_reference(lib, B, T, K, with_reset):
    x, x_prev, m, gy = _case(B, T, 24, K, seed=B * T)
    reset = None
    if with_reset:
        reset = torch.zeros(B, T, dtype=torch.bool)
        reset[0, 0] = True
        reset[-1, T - 1] = True
        reset[B // 2, T // 2] = True
    ref = _run(token_shift_mix_reference, x, x_prev, m, gy, reset, torch.float64)
    got = _run(_cpu(lib), x, x_prev, m, gy, reset, torch.float32)
    err = _rel(got, ref)
    assert max(err.values()) < TOL, err
    if with_reset and B > 1:  # a document starting at t = 0 never sees x_prev
        assert got["dx_prev"][0].abs().max() == 0


def test_unused_outputs_get_no_gradient(lib):
    """Only some of the mixes feed the loss: the others hand in None, which counts as zero."""
    x, x_prev, m, gy = _case(2, 9, 16, 4, seed=5)
    ref = _run(token_shift_mix_reference, x, x_prev, m, gy, None, torch.float64, used=[1, 3])
    got = _run(_cpu(lib), x, x_prev, m, gy, None, torch.float32, used=[1, 3])
    err = _rel({n: got[n] for n in ("dx", "dx_prev")}, {n: ref[n] for n in ("dx", "dx_prev")})
    assert max(err.values()) < TOL, err
    assert got["dm"][0].abs().max() == 0 and got["dm"][2].abs().max() == 0
    assert torch.allclose(got["dm"][1].double(), ref["dm"][1], rtol=0, atol=TOL * ref["dm"].abs().max())


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_part_split_is_exact(lib, threads):
    """Rows split over 1-3 parts (part boundaries fall mid-document, so the shift's gradient crosses them)
    give the same x and x_prev gradients bit for bit; ∂m is a sum of per-part partials, so it agrees to
    rounding."""
    x, x_prev, m, gy = _case(2, 11, 16, 3, seed=9)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(_cpu(lib), x, x_prev, m, gy, None, torch.float32)
        torch.set_num_threads(threads)
        many = _run(_cpu(lib), x, x_prev, m, gy, None, torch.float32)
    finally:
        torch.set_num_threads(n)
    for name in ("out", "dx", "dx_prev"):
        assert torch.equal(one[name], many[name]), name
    assert torch.allclose(one["dm"], many["dm"], rtol=1e-6, atol=1e-6)


def test_dispatch(lib):
    x, x_prev, m, _ = _case(1, 4, 8, 2)
    assert dispatch.cpu_ready("mix") is True
    x32, xp32, ms = x.float(), x_prev.float(), list(m.float())
    auto = token_shift_mix(x32, xp32, None, ms)
    cpu = token_shift_mix(x32, xp32, None, ms, backend="cpu")
    assert all(torch.equal(a, c) for a, c in zip(auto, cpu))
    # fp64 and bf16 take the PyTorch formula under auto
    ref64 = token_shift_mix(x, x_prev, None, list(m))
    assert all(torch.equal(a, b) for a, b in zip(ref64, token_shift_mix_reference(x, x_prev, None, list(m))))
    bf = token_shift_mix(x.bfloat16(), x_prev.bfloat16(), None, [t.bfloat16() for t in m])
    assert bf[0].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        token_shift_mix(x32, xp32, None, ms, backend="fast")
