"""The `cuda` WKV backends (rwkv/ops/v7/cuda.py, rwkv/ops/v6/cuda.py, cuda/*.cu; docs/cuda.md), their build
(rwkv/ops/build.py) and their readiness in rwkv/ops/dispatch.py.

This machine kind has no GPU, so the tests come in three groups:
* CPU: the backend is inert without CUDA (import builds nothing, `ready()` is False, `auto` uses
  chunked), and the kernel ALGORITHM is validated through a step-by-step emulation of the kernels
  (tests/ops/cuda_wkv{7,6}_emulation.py) run through the real Python wrapper and self-check;
* slow: nvcc compiles the kernels (bf16 and fp32 instantiations) without torch headers, and g++
  syntax-checks the torch binding against the CPU torch's headers;
* cuda (skipped without a GPU): the built kernels against `chunked` for outputs, final state and
  all gradients, and `auto` choosing them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from rwkv.ops import build, common, dispatch, wkv6, wkv7
from rwkv.ops.v6 import cuda as v6_cuda
from rwkv.ops.v6.reference import wkv5_reference, wkv6_reference
from rwkv.ops.v7 import cuda as v7_cuda
from rwkv.ops.v7.reference import wkv7_reference
from tests.ops.cuda_wkv6_emulation import Wkv6Emulation
from tests.ops.cuda_wkv7_emulation import BrokenWkv7Emulation, Wkv7Emulation

ROOT = Path(__file__).resolve().parents[2]
CUDA_DIR = ROOT / "cuda"
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


# ------------------------------------------------------------------------------------ CPU: inert
def test_ready_is_false_on_cpu_and_builds_nothing():
    assert dispatch.cuda_ready("wkv7", torch.device("cpu")) is False
    assert dispatch.cuda_ready("wkv6", "cpu") is False
    assert dispatch.cuda_ready("wkv5", torch.device("cpu")) is False
    if not torch.cuda.is_available():
        assert dispatch.cuda_ready("wkv7", torch.device("cuda", 0)) is False
        assert build._extensions.get("wkv7") is None or isinstance(
            build._extensions["wkv7"], Exception)


def test_import_builds_nothing_and_needs_no_nvcc(tmp_path):
    """A fresh interpreter with nvcc hidden from PATH and an empty extension cache: importing the
    backend and asking `ready()` for CPU loads no cpp_extension machinery and writes nothing."""
    ext_dir = tmp_path / "torch_extensions"
    code = (
        "import sys, torch\n"
        "import rwkv.ops.v7.cuda, rwkv.ops.v6.cuda\n"
        "from rwkv.ops import build, dispatch\n"
        "assert 'torch.utils.cpp_extension' not in sys.modules, 'cpp_extension imported at import'\n"
        "assert dispatch.cuda_ready('wkv7', torch.device('cpu')) is False\n"
        "assert not build._extensions, build._extensions\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PATH="/usr/bin:/bin", TORCH_EXTENSIONS_DIR=str(ext_dir),
               PYTHONPATH=str(ROOT), CUDA_HOME="/nonexistent")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert not ext_dir.exists() or not any(ext_dir.iterdir())


def test_failed_build_warns_once_and_ready_stays_false(monkeypatch, caplog):
    """As on a GPU machine whose build fails: ready() is False (auto uses chunked), one warning names
    the reason, and the build is not retried."""
    calls = []

    def failing_build(name):
        calls.append(name)
        raise RuntimeError("Error building extension: nvcc fatal: Unsupported gpu architecture")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "build_cuda", failing_build)
    monkeypatch.setattr(build, "_extensions", {})
    monkeypatch.setattr(dispatch, "_cuda_verdicts", {})
    monkeypatch.setattr(common, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="rwkv.ops"):
        assert dispatch.cuda_ready("wkv7", torch.device("cuda", 0)) is False
        assert dispatch.cuda_ready("wkv7", torch.device("cuda", 1)) is False
    assert calls == ["wkv7"]
    assert caplog.text.count("cuda backend is unavailable") == 1
    assert "Unsupported gpu architecture" in caplog.text


def test_ready_caches_one_self_check_per_op_and_device(monkeypatch):
    checks = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "build_cuda", lambda name: Wkv7Emulation())
    monkeypatch.setattr(build, "_extensions", {})
    monkeypatch.setattr(dispatch, "_cuda_verdicts", {})
    monkeypatch.setattr(dispatch, "cuda_self_check",
                        lambda op, dev, ext: checks.append((op, str(dev))) or dev.index == 0)
    for _ in range(3):
        assert dispatch.cuda_ready("wkv7", torch.device("cuda", 0)) is True
        assert dispatch.cuda_ready("wkv7", torch.device("cuda", 1)) is False
    assert checks == [("wkv7", "cuda:0"), ("wkv7", "cuda:1")]


def test_auto_never_resolves_to_cuda_on_cpu():
    """CPU tensors get a CPU backend (the C kernel or chunked, tests/ops/test_wkv7_cpu.py), never cuda."""
    r, w, k, v, a, b, s0, _, _ = v7_cuda.inputs(1, 5, 1, 64, "cpu", torch.Generator())
    choice = dispatch.resolve("wkv7", "auto", torch.device("cpu"), r.dtype)
    assert choice in ("cpu", "chunked")
    y_auto, s_auto = wkv7(r, w, k, v, a, b, state=s0, backend="auto")
    y_cpu, s_cpu = wkv7(r, w, k, v, a, b, state=s0, backend=choice)
    assert torch.equal(y_auto, y_cpu) and torch.equal(s_auto, s_cpu)


def test_explicit_cuda_backend_on_cpu_tensors_falls_back_to_chunked():
    r, w, k, v, a, b, s0, _, _ = v7_cuda.inputs(1, 3, 1, 64, "cpu", torch.Generator())
    y, s = v7_cuda.wkv7_cuda(r, w, k, v, a, b, state=s0)
    y_ch, s_ch = wkv7(r, w, k, v, a, b, state=s0, backend="chunked")
    assert torch.equal(y, y_ch) and torch.equal(s, s_ch)


def test_explicit_cuda_backend_v6_on_cpu_tensors_falls_back():
    r, w, k, v, u, s0, _, _ = v6_cuda.inputs(1, 3, 1, 64, "cpu", torch.Generator())
    y, s = v6_cuda.wkv6_cuda(r, w, k, v, u, state=s0)
    y_ref, s_ref = wkv6_reference(r, w, k, v, u, state=s0)
    assert torch.allclose(y, y_ref) and torch.allclose(s, s_ref)


# ------------------------------------------------------------- CPU: the kernel algorithm, emulated
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


# a reset needs T > 1 to cut anything, so T=1 runs without one
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


def test_self_check_accepts_the_emulation_and_rejects_a_broken_kernel(caplog):
    assert dispatch.cuda_self_check("wkv7", "cpu", Wkv7Emulation()) is True
    with caplog.at_level(logging.ERROR, logger="rwkv.ops"):
        assert dispatch.cuda_self_check("wkv7", "cpu", BrokenWkv7Emulation()) is False
    assert re.search(r"self-check FAILED .* max relative error [0-9.e+-]+ in \w+", caplog.text)


def test_self_check_works_when_first_called_under_inference_mode():
    with torch.inference_mode():
        assert dispatch.cuda_self_check("wkv7", "cpu", Wkv7Emulation()) is True


def test_self_check_leaves_the_global_rng_alone():
    before = torch.random.get_rng_state()
    v7_cuda.check(Wkv7Emulation(), "cpu", T=3, B=1, H=1)
    assert torch.equal(before, torch.random.get_rng_state())


# ---------------------------------------------------------- CPU: the v6/v5 kernel algorithm, emulated
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


def test_self_check_v6_v5_accept_the_emulation():
    assert dispatch.cuda_self_check("wkv6", "cpu", Wkv6Emulation()) is True
    assert dispatch.cuda_self_check("wkv5", "cpu", Wkv6Emulation()) is True


def test_v5_wrapper_matches_v5_reference_and_sums_decay_grad():
    r, w, k, v, u, s0, _, _ = v6_cuda.inputs(2, 9, 2, 64, "cpu", torch.Generator(), v5=True)
    w = w.float().requires_grad_()
    y, s = v6_cuda.wkv5_with(Wkv6Emulation(), r.float(), w, k.float(), v.float(), u.float(),
                                  state=s0.float())
    y_ref, s_ref = wkv5_reference(r, w.detach().double(), k, v, u, state=s0)
    assert common.rel_err(y, y_ref) < 1e-6 and common.rel_err(s, s_ref) < 1e-6
    y.sum().backward()
    assert w.grad.shape == (2, 64)



# ------------------------------------------------------------------------- slow: compile checks
KERNELS = {"wkv7_state.cu": ("wkv7_forward_kernel", "wkv7_backward_kernel"),
           "wkv6_state.cu": ("wkv6_forward_kernel", "wkv6_backward_kernel")}
NVCC_FLAGS = ["-arch=sm_80", "-std=c++20", "-O3", "--use_fast_math", "-D_N_=64", "-D_SNAPSHOT_INTERVAL_=16"]


def _nvcc():
    return shutil.which("nvcc")


@pytest.mark.slow
@pytest.mark.skipif(_nvcc() is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", sorted(KERNELS))
def test_nvcc_compiles_the_kernels(tmp_path, source):
    """Both instantiations (fp32, bf16) of the forward and backward kernels compile for sm_80 with the
    flags the backend uses, needing only CUDA headers, and ptxas reports no register spills. This
    proves compilation, not correctness: running them needs a GPU (the `cuda` tests below)."""
    cmd = [_nvcc(), "-c", *NVCC_FLAGS, "-Xptxas", "-v", f"-I{CUDA_DIR}", str(CUDA_DIR / source),
           "-o", str(tmp_path / "k.o")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    entries = set(re.findall(r"Compiling entry function '(\S+)'", out.stderr))
    for kernel in KERNELS[source]:
        for dtype in ("If", "I13__nv_bfloat16"):
            assert any(kernel in e and dtype in e for e in entries), (kernel, dtype, entries)
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", out.stderr)]
    assert len(spills) == 4 and max(spills) <= 128, out.stderr  # wkv7 backward: 64-88 bytes (13.0)
    # A wrong head size is a compile-time error with a readable message.
    bad = subprocess.run([_nvcc(), "-c", "-arch=sm_80", "-D_N_=32", "-D_SNAPSHOT_INTERVAL_=16", f"-I{CUDA_DIR}",
                          str(CUDA_DIR / source), "-o", str(tmp_path / "bad.o")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "head size" in bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH")
def test_bindings_parse_against_torch_headers(tmp_path):
    """Syntax-check cuda/wkv{7,6}_state_op.cpp against this (CPU) torch's headers. The CPU wheel lacks
    the generated c10/cuda/impl/cuda_cmake_macros.h, so a one-line stand-in is provided. Building and
    linking the bindings needs a CUDA build of torch, i.e. a GPU machine."""
    tinc = Path(torch.__file__).parent / "include"
    cuda_inc = next((Path(p) for p in (os.environ.get("CUDA_HOME", "") + "/include",
                                       "/usr/local/cuda/include", "/usr/local/cuda-13.0/include")
                     if p and Path(p, "cuda_runtime_api.h").exists()), None)
    if cuda_inc is None or not (tinc / "c10/cuda/CUDAGuard.h").exists():
        pytest.skip("CUDA headers or torch's c10/cuda headers are missing")
    shim = tmp_path / "shim/c10/cuda/impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    procs = {}
    for src in ("wkv7_state_op.cpp", "wkv6_state_op.cpp"):  # two processes: about 30 s each
        cmd = ["g++", "-std=c++20", "-fsyntax-only", "-Wall", "-Wextra", "-DTORCH_EXTENSION_NAME=x",
               "-D_N_=64", "-D_SNAPSHOT_INTERVAL_=16", "-isystem", str(tmp_path / "shim"), "-isystem", str(tinc),
               "-isystem", str(tinc / "torch/csrc/api/include"), "-isystem", str(cuda_inc),
               "-isystem", sysconfig.get_paths()["include"], f"-I{CUDA_DIR}", str(CUDA_DIR / src)]
        procs[src] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for src, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, (src, err[-3000:])
        assert "warning" not in err, (src, err[-3000:])


# ------------------------------------------------------------------------------- GPU (skipped here)
@pytest.mark.cuda
@pytest.mark.parametrize("op", ["wkv7", "wkv6", "wkv5"])
def test_gpu_ready_and_auto_picks_cuda(op):
    dev = torch.device("cuda", torch.cuda.current_device())
    assert dispatch.cuda_ready(op, dev), "build or self-check failed: see the rwkv.ops log"
    assert dispatch.resolve(op, "auto", dev) == "cuda"


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
