"""The native build (rwkv/ops/build.py): the C library (cached by a hash, written atomically, a fallback cache
directory, a failed build warned once and `auto` kept on the PyTorch path) and the CUDA extensions (importing
builds nothing; a failed build warned once; slow: nvcc compiles the kernels (bf16 and fp32 instantiations)
without torch headers, and g++ syntax-checks the torch bindings against the CPU torch's headers).
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

from rwkv.ops import build, common, dispatch
from rwkv.ops.v7 import cpu as v7_cpu
from tests.ops.wkv_cases import cast, v7_inputs

ROOT = Path(__file__).resolve().parents[2]
CUDA_DIR = ROOT / "rwkv" / "ops" / "csrc"
KERNELS = {"wkv7_state.cu": ("wkv7_forward_kernel", "wkv7_backward_kernel"),
           "wkv6_state.cu": ("wkv6_forward_kernel", "wkv6_backward_kernel")}
NVCC_FLAGS = ["-arch=sm_80", "-std=c++20", "-O3", "--use_fast_math", "-D_N_=64", "-D_SNAPSHOT_INTERVAL_=16"]


def _nvcc():
    return shutil.which("nvcc")


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
    """Syntax-check rwkv/ops/csrc/wkv{7,6}_state_op.cpp against this (CPU) torch's headers. The CPU wheel lacks
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


def test_failed_build_warns_once_and_auto_keeps_chunked(monkeypatch, caplog):
    def failing_build():
        raise RuntimeError("cc: command not found")

    monkeypatch.setattr(build, "build_c", failing_build)
    monkeypatch.setattr(build, "_lib", None)
    monkeypatch.setattr(dispatch, "_cpu_verdicts", {})
    monkeypatch.setattr(common, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="rwkv.ops"):
        assert dispatch.cpu_ready() is False
        assert dispatch.cpu_ready("mix") is False
        assert dispatch.resolve("wkv7", "auto", torch.device("cpu"), torch.float32) == "chunked"
    msgs = [r.getMessage() for r in caplog.records if "C CPU kernels are unavailable" in r.getMessage()]
    assert len(msgs) == 1 and "cc: command not found" in msgs[0]
    with pytest.raises(RuntimeError, match="backend='cpu' requested but the kernel is unavailable"):
        v7_cpu.wkv7_cpu(**cast(v7_inputs(1, 4, 1, 8), torch.float32))


def test_build_is_cached_and_atomic(tmp_path):
    """A fresh cache directory gets exactly one library and no temporary files; a second process
    reuses it without compiling (its mtime is unchanged)."""
    code = ("import torch; from rwkv.ops import build as cb; assert cb.library() is not None; "
            "print(cb.library()._name)")
    env = {**os.environ, "RWKV_CPU_EXTENSIONS_DIR": str(tmp_path / "cache")}
    run = lambda: subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                                 text=True, check=True)
    first = run()
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].endswith(".so"), files
    path = tmp_path / "cache" / files[0]
    mtime = path.stat().st_mtime_ns
    second = run()
    assert first.stdout == second.stdout and path.stat().st_mtime_ns == mtime


def test_cache_dir_falls_back_when_home_is_not_writable(monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o500)  # no write permission: ~/.cache cannot be created
    monkeypatch.delenv("RWKV_CPU_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(lambda: home))
    try:
        if os.access(home, os.W_OK):  # root ignores permission bits: make creation fail another way
            (home / ".cache").write_text("a file where the directory should be")
        got = build.cache_dir()
    finally:
        home.chmod(0o700)
    assert not str(got).startswith(str(home)) and "rwkv-infctx-cpu" in got.name
