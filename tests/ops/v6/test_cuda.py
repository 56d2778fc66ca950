"""The `cuda` WKV-6/WKV-5 backend (rwkv/ops/v6/cuda.py, rwkv/ops/csrc/wkv6_state.cu; docs/cuda.md).

Without a GPU the kernel ALGORITHM is validated through a step-by-step emulation of the kernel
(tests/ops/cuda_wkv6_emulation.py) run through the real Python wrapper; explicit `cuda` on CPU tensors falls
back. GPU (`cuda`, skipped without one): the built kernel against the oracle.
"""

from __future__ import annotations

import pytest
import torch

from rwkv.ops import build, common, dispatch
from rwkv.ops.v6 import cuda as v6_cuda
from rwkv.ops.v6.reference import wkv5_reference, wkv6_reference
from tests.ops.cuda_wkv6_emulation import Wkv6Emulation
from tests.ops.v7.test_cuda import _reset_mask


def test_explicit_cuda_backend_v6_on_cpu_tensors_falls_back():
    r, w, k, v, u, s0, _, _ = v6_cuda.inputs(1, 3, 1, 64, "cpu", torch.Generator())
    y, s = v6_cuda.wkv6_cuda(r, w, k, v, u, state=s0)
    y_ref, s_ref = wkv6_reference(r, w, k, v, u, state=s0)
    assert torch.allclose(y, y_ref) and torch.allclose(s, s_ref)


@pytest.mark.parametrize("reset_at", [None, (5, 20)], ids=["no-reset", "reset"])
def test_emulated_v6_kernel_is_exact_in_fp64(reset_at):
    """The v6 kernels' algorithm (division-free backward: forward sweep for ∂r, reverse sweep over
    rows/columns of ∂S, ∂λ from the pair-sum identity restarted at resets) in fp64 equals the
    per-token reference with autograd: y, final state and all 6 gradients (incl. u and s0)."""
    B, T, H, N = 2, 37, 2, 64
    r, w, k, v, u, s0, dy, dsT = v6_cuda.inputs(B, T, H, N, "cpu", torch.Generator())
    reset = None if reset_at is None else _reset_mask(B, T, reset_at)
    em = Wkv6Emulation(torch.float64)
    y, sT = em.forward(r, w, k, v, u, s0, reset)
    dr, dw, dk, dv, du, ds0 = em.backward(r, w, k, v, u, dy, s0, reset, dsT)
    leaves = [x.clone().requires_grad_() for x in (r, w, k, v, u, s0)]
    yr, sr = wkv6_reference(*leaves[:5], state=leaves[5], reset=reset)
    ref = torch.autograd.grad((yr * dy).sum() + (sr * dsT).sum(), leaves)
    got = [y, sT, dr, dw, dk, dv, du.sum(0), ds0]
    errs = {n: common.rel_err(g, e)
            for n, g, e in zip(["y", "state", "dr", "dw", "dk", "dv", "du", "ds0"], got,
                               [yr.detach(), sr.detach(), *ref])}
    assert max(errs.values()) < 1e-12, errs


@pytest.mark.parametrize("v5", [False, True], ids=["wkv6", "wkv5"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_emulated_v6_kernel_through_wrapper(v5, dtype):
    """fp32/bf16 emulation behind the real wrapper vs the oracle (fp64), with reset, T = 37, λ down to
    −e² (decays that vanish in one step). Measured fp32: all ≤ ~3e-7 relative."""
    errs = v6_cuda.check(Wkv6Emulation(), "cpu", dtype=dtype, reset=True, v5=v5)
    limit = 2e-6 if dtype == torch.float32 else dispatch.CUDA_SELF_CHECK_TOL[dtype] / 3
    assert max(errs.values()) < limit, errs


def test_v5_wrapper_matches_v5_reference_and_sums_decay_grad():
    r, w, k, v, u, s0, _, _ = v6_cuda.inputs(2, 9, 2, 64, "cpu", torch.Generator(), v5=True)
    w = w.float().requires_grad_()
    y, s = v6_cuda.wkv5_with(Wkv6Emulation(), r.float(), w, k.float(), v.float(), u.float(),
                                  state=s0.float())
    y_ref, s_ref = wkv5_reference(r, w.detach().double(), k, v, u, state=s0)
    assert common.rel_err(y, y_ref) < 1e-6 and common.rel_err(s, s_ref) < 1e-6
    y.sum().backward()
    assert w.grad.shape == (2, 64)


@pytest.mark.cuda
@pytest.mark.parametrize("v5", [False, True], ids=["wkv6", "wkv5"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reset", [False, True], ids=["no-reset", "reset"])
@pytest.mark.parametrize("T", [1, 17, 100])
def test_gpu_wkv6_kernel_matches_oracle(v5, dtype, reset, T):
    ext = build.extension("wkv6")
    assert ext is not None, build._extensions.get("wkv6")
    errs = v6_cuda.check(ext, torch.device("cuda"), dtype=dtype, reset=reset, v5=v5, T=T,
                                   B=3, H=4)
    assert max(errs.values()) < dispatch.CUDA_SELF_CHECK_TOL[dtype], errs
