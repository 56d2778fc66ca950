"""The `cuda` WKV-7 backend (rwkv/ops/v7/cuda.py, rwkv/ops/csrc/wkv7_state.cu; docs/cuda.md).

Without a GPU the kernel ALGORITHM is validated through a step-by-step emulation of the kernel
(tests/ops/cuda_wkv7_emulation.py) run through the real Python wrapper; explicit `cuda` on CPU tensors falls
back to chunked. GPU (`cuda`, skipped without one): the built kernel against `chunked` for outputs, final
state and all gradients, and the public ops against the emulations.
"""

from __future__ import annotations

import pytest
import torch

from rwkv.ops import build, common, dispatch, wkv6, wkv7
from rwkv.ops.v6 import cuda as v6_cuda
from rwkv.ops.v7 import cuda as v7_cuda
from rwkv.ops.v7.reference import wkv7_reference
from tests.ops.cuda_wkv6_emulation import Wkv6Emulation
from tests.ops.cuda_wkv7_emulation import Wkv7Emulation

GRAD_NAMES = ["y", "state", "dr", "dw", "dk", "dv", "da", "db", "ds0"]


def _reset_mask(B, T, positions):
    m = torch.zeros(B, T, dtype=torch.bool)
    for p in positions:
        m[B - 1, p] = True
    return m


def _reference_with_grads(inputs, dy, dsT, reset=None):
    leaves = [x.detach().double().requires_grad_() for x in inputs]
    y, s = wkv7_reference(*leaves[:6], state=leaves[6], reset=reset)
    grads = torch.autograd.grad((y * dy).sum() + (s * dsT).sum(), leaves)
    return [y.detach(), s.detach(), *grads]


def test_explicit_cuda_backend_on_cpu_tensors_falls_back_to_chunked():
    r, w, k, v, a, b, s0, _, _ = v7_cuda.inputs(1, 3, 1, 64, "cpu", torch.Generator())
    y, s = v7_cuda.wkv7_cuda(r, w, k, v, a, b, state=s0)
    y_ch, s_ch = wkv7(r, w, k, v, a, b, state=s0, backend="chunked")
    assert torch.equal(y, y_ch) and torch.equal(s, s_ch)


@pytest.mark.parametrize("reset_at", [None, (5, 16, 35)], ids=["no-reset", "reset"])
def test_emulated_kernel_is_exact_in_fp64(reset_at):
    """The kernels' algorithm (chunk snapshots, back-stepping from dS_T, ds0, reset recompute) run in
    fp64 equals the per-token reference with autograd: y, final state and all 7 gradients."""
    B, T, H, N = 2, 48, 2, 64
    r, w, k, v, a, b, s0, dy, dsT = v7_cuda.inputs(B, T, H, N, "cpu", torch.Generator())
    reset = None if reset_at is None else _reset_mask(B, T, reset_at)
    em = Wkv7Emulation(torch.float64)
    y, sT, snaps, sa = em.forward(r, w, k, v, a, b, s0, reset)
    grads = em.backward(r, w, k, v, a, b, dy, s0, reset, snaps, sa, dsT)
    ref = _reference_with_grads((r, w, k, v, a, b, s0), dy, dsT, reset)
    errs = {n: common.rel_err(g, e) for n, g, e in zip(GRAD_NAMES, [y, sT, *grads], ref)}
    assert max(errs.values()) < 1e-12, errs
    if reset is not None:  # the reset row really cut the gradient path to s0 after position 5
        assert ref[-1][B - 1].abs().max() > 0


@pytest.mark.parametrize(("T", "reset"), [(1, False), (17, False), (37, False), (17, True), (37, True)],
                         ids=["T1", "T17", "T37", "T17-reset", "T37-reset"])
def test_emulated_kernel_through_wrapper_fp32(T, reset):
    """The fp32 emulation behind the real wrapper (padding to 16, casts, autograd.Function) against
    chunked in fp64, at awkward T with a non-zero initial state. Measured: y/state/dk/dv/db/ds0 about
    1e-7, dr/dw/da about 1e-5 (back-stepping amplifies rounding), within the self-check tolerance."""
    errs = v7_cuda.check(Wkv7Emulation(), "cpu", dtype=torch.float32, reset=reset, T=T)
    tol = dispatch.CUDA_SELF_CHECK_TOL[torch.float32]
    assert max(errs.values()) < tol / 10, errs
    for key in ("y", "state", "dk", "dv", "db", "ds0"):  # not back-stepped: plain fp32 rounding
        assert errs[key] < 1e-6, (key, errs)


def test_emulated_kernel_bf16_and_input_dtypes():
    errs = v7_cuda.check(Wkv7Emulation(), "cpu", dtype=torch.bfloat16, reset=True)
    assert max(errs.values()) < dispatch.CUDA_SELF_CHECK_TOL[torch.bfloat16] / 3, errs
    # outputs come back in the input dtype, the state in fp32, gradients in the inputs' dtypes
    r, w, k, v, a, b, s0, _, _ = v7_cuda.inputs(1, 20, 1, 64, "cpu", torch.Generator())
    for dt, kdt in ((torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32),
                    (torch.float64, torch.float32)):
        xs = [x.to(dt).requires_grad_() for x in (r, w, k, v, a, b)]
        st = s0.to(dt).requires_grad_()
        y, s = v7_cuda.wkv7_with(Wkv7Emulation(), *xs, state=st)
        assert (y.dtype, s.dtype, y.shape) == (kdt, torch.float32, r.shape)
        (y.float().sum() + s.sum()).backward()
        assert all(x.grad.dtype == dt and x.grad.shape == r.shape for x in xs)
        assert st.grad.dtype == dt


def test_emulated_kernel_worst_case_decay_fp32():
    """Every λ at the clamp −e^{−1/2}: the largest back-stepping amplification (1.83 per step, 15 steps
    per chunk). Measured ~6e-4 relative in dw; this documents the bound the self-check allows."""
    import math

    r, w, k, v, a, b, s0, dy, dsT = v7_cuda.inputs(1, 64, 2, 64, "cpu", torch.Generator())
    w = torch.full_like(w, -math.exp(-0.5) + 1e-6)
    leaves = [x.float().requires_grad_() for x in (r, w, k, v, a, b, s0)]
    y, s = v7_cuda.wkv7_with(Wkv7Emulation(), *leaves[:6], state=leaves[6])
    got = [y, s, *torch.autograd.grad((y.double() * dy).sum() + (s.double() * dsT).sum(), leaves)]
    ref = _reference_with_grads((r, w, k, v, a, b, s0), dy, dsT)
    errs = {n: common.rel_err(g.detach(), e) for n, g, e in zip(GRAD_NAMES, got, ref)}
    assert max(errs.values()) < dispatch.CUDA_SELF_CHECK_TOL[torch.float32], errs


def test_self_check_leaves_the_global_rng_alone():
    before = torch.random.get_rng_state()
    v7_cuda.check(Wkv7Emulation(), "cpu", T=3, B=1, H=1)
    assert torch.equal(before, torch.random.get_rng_state())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reset", [False, True], ids=["no-reset", "reset"])
@pytest.mark.parametrize("T", [1, 17, 63, 100])
def test_gpu_wkv7_kernel_matches_chunked(dtype, reset, T):
    """Outputs, final state and all gradients of the built v7 kernel vs chunked(fp64) on the GPU."""
    ext = build.extension("wkv7")
    assert ext is not None, build._extensions.get("wkv7")
    errs = v7_cuda.check(ext, torch.device("cuda"), dtype=dtype, reset=reset, T=T, B=3, H=4)
    assert max(errs.values()) < dispatch.CUDA_SELF_CHECK_TOL[dtype], errs


@pytest.mark.cuda
def test_gpu_public_ops_and_emulations_agree():
    """rwkv.ops.wkv7/wkv6(backend='cuda') on the GPU equal the CPU emulations of the same kernels."""
    r, w, k, v, a, b, s0, _, _ = v7_cuda.inputs(2, 40, 2, 64, "cpu", torch.Generator())
    xs = [x.float() for x in (r, w, k, v, a, b, s0)]
    y_gpu, s_gpu = wkv7(*[x.cuda() for x in xs[:6]], state=xs[6].cuda(), backend="cuda")
    y_emu, s_emu = v7_cuda.wkv7_with(Wkv7Emulation(), *xs[:6], state=xs[6])
    assert common.rel_err(y_gpu.cpu(), y_emu.double()) < 1e-5
    assert common.rel_err(s_gpu.cpu(), s_emu.double()) < 1e-5
    r, w, k, v, u, s0, _, _ = v6_cuda.inputs(2, 40, 2, 64, "cpu", torch.Generator())
    xs = [x.float() for x in (r, w, k, v, u, s0)]
    y_gpu, s_gpu = wkv6(*[x.cuda() for x in xs[:5]], state=xs[5].cuda(), backend="cuda")
    y_emu, s_emu = v6_cuda.wkv6_with(Wkv6Emulation(), *xs[:5], state=xs[5])
    assert common.rel_err(y_gpu.cpu(), y_emu.double()) < 1e-5
    assert common.rel_err(s_gpu.cpu(), s_emu.double()) < 1e-5
