"""Builds the native kernels on first use and caches them: the C library (system C compiler, loaded with
ctypes) and the CUDA extensions (`torch.utils.cpp_extension`). Both kinds of source live in rwkv/ops/csrc/
(the CUDA files: docs/cuda.md), inside the package, so that they are found wherever it is. Importing this
module builds nothing and needs neither a compiler nor a GPU; which backend runs is decided by
rwkv/ops/dispatch.py, after a self-check of what was built here.

C: one library of every C kernel (WKV-7, token-shift mixes, key preparation), compiled with `$CC`
(else `cc`) into a cache directory (`$RWKV_CPU_EXTENSIONS_DIR`, else `~/.cache/rwkv-infctx/cpu`),
named by a hash of the sources, flags, compiler and CPU flags, written to a temporary name and renamed
(concurrent ranks and a killed build never leave a torn library). Plain C: no torch headers, a build
takes well under a second.

CUDA: one extension per kernel family (wkv7; wkv6, which wkv5 shares), compiled by
`torch.utils.cpp_extension.load` the first time a CUDA tensor asks for it; its cache lives under
TORCH_EXTENSIONS_DIR (torch's default when unset), and torch rebuilds when a source changes.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from ..atomic import atomic_file
from .common import warn_once

log = logging.getLogger("rwkv.ops")

_lock = threading.Lock()

# ------------------------------------------------------------------------------------------------- C
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / name for name in ("wkv7_cpu.c", "mix_cpu.c", "kk_cpu.c")]
HEADERS = [CSRC / "parts.h"]
C_SYMBOLS = ("wkv7_forward", "wkv7_backward", "mix_forward", "mix_backward", "kk_forward", "kk_backward",
             "rwkv_cpu_openmp")
# -fopenmp-simd: honour the `omp simd` pragmas (vectorised loops and reductions); -ffp-contract=fast: FMAs.
CFLAGS = ["-O3", "-std=c11", "-fPIC", "-shared", "-fopenmp-simd", "-ffp-contract=fast"]
# Tried in this order; a compiler that refuses one gets the next. -fopenmp: run the parts on OpenMP threads,
# which bind to the libgomp.so.1 torch has already loaded (its intra-op pool; csrc/parts.h says why).
FLAG_SETS = [CFLAGS + ["-march=native", "-fopenmp"], CFLAGS + ["-march=native"], CFLAGS + ["-fopenmp"], CFLAGS]

_lib = None  # the loaded C library, or the exception that made the build fail


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_dir() -> Path:
    """$RWKV_CPU_EXTENSIONS_DIR, else ~/.cache/rwkv-infctx/cpu, else (no writable home) a per-user temp dir."""
    env = os.environ.get("RWKV_CPU_EXTENSIONS_DIR")
    if env:
        return Path(env)
    home = Path.home() / ".cache" / "rwkv-infctx" / "cpu"
    try:
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK):
            return home
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"rwkv-infctx-cpu-{os.getuid() if hasattr(os, 'getuid') else 0}"


def _compile(cc: str, flags: list[str], out: Path) -> None:
    with atomic_file(out) as tmp:  # other processes see either nothing or the whole library
        proc = subprocess.run([cc, *flags, "-o", tmp, *map(str, SOURCES), "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed on {', '.join(p.name for p in SOURCES)}: {proc.stderr.strip()[-800:]}")


def build_c():
    """Compile (or find in the cache) and load the C library with the first flag set that works."""
    cc = os.environ.get("CC", "cc")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    except OSError as e:
        raise RuntimeError(f"no C compiler ({cc}): {e}") from e
    # everything that decides the binary: sources, compiler, CPU (for -march=native); the flags come per set
    ident = b"\0".join([*(p.read_bytes() for p in SOURCES + HEADERS), version.encode(), _cpu_flags().encode(),
                        platform.machine().encode()])
    errors = []
    for flags in FLAG_SETS:
        key = hashlib.sha256(ident + b"\0" + " ".join(flags).encode()).hexdigest()
        out = cache_dir() / f"rwkv_cpu_{key[:16]}.so"
        try:
            if not out.exists():
                _compile(cc, flags, out)
            lib = ctypes.CDLL(str(out))
        except (RuntimeError, OSError) as e:
            errors.append(str(e))
            continue
        for name in C_SYMBOLS:
            getattr(lib, name).restype = ctypes.c_int
        lib.openmp = bool(lib.rwkv_cpu_openmp())
        log.debug("C CPU kernels: %s (%s)", out, " ".join(flags))
        return lib
    raise RuntimeError("; ".join(errors))


def library():
    """The loaded C library, or None if it cannot be built here (warned once)."""
    global _lib
    with _lock:
        if _lib is None:
            try:
                _lib = build_c()
            except Exception as e:  # noqa: BLE001 - any build failure means "use the PyTorch path"
                _lib = e
    if isinstance(_lib, Exception):
        warn_once("build", "the C CPU kernels are unavailable (%s); wkv7 uses chunked, the token-shift "
                  "mixes PyTorch", str(_lib).strip())
        return None
    return _lib


def require_c(op: str, device) -> ctypes.CDLL:
    """The library for an explicit backend='cpu' call, or a clear error (wrong device, no library)."""
    if device.type != "cpu":
        raise ValueError(f"{op}: backend='cpu' needs CPU tensors, got {device}; use backend='auto'")
    lib = library()
    if lib is None:
        raise RuntimeError(f"{op}: backend='cpu' requested but the kernel is unavailable (the C kernels "
                           f"did not build: {_lib}). Use backend='auto'.")
    return lib


# ---------------------------------------------------------------------------------------------- CUDA
CUDA_DIR = CSRC  # the .cu/.cpp/.h files sit beside the C sources
HEAD_SIZE = 64  # -D_N_: every official RWKV model uses head size 64 (docs/model-spec.md §0 notation, §3.1)
# -D_SNAPSHOT_INTERVAL_: tokens between the state snapshots the backward restarts from (the official
# kernels call it _CHUNK_LEN_; docs/model-spec.md §3.1). Not a chunk of the chunked algorithm.
SNAPSHOT_INTERVAL = 16

# extension -> sources; op -> extension (wkv5 runs on the wkv6 kernel)
CUDA_SOURCES = {"wkv7": ("wkv7_state_op.cpp", "wkv7_state.cu"), "wkv6": ("wkv6_state_op.cpp", "wkv6_state.cu")}
EXT_OF = {"wkv7": "wkv7", "wkv6": "wkv6", "wkv5": "wkv6"}

_extensions: dict = {}  # extension name -> loaded module, or the exception that made the build fail


def build_cuda(name: str):
    """Compile and load extension `name` (torch caches the build and rebuilds when a source changes)."""
    from torch.utils.cpp_extension import load  # imported here: it is slow and pulls setuptools

    defines = [f"-D_N_={HEAD_SIZE}", f"-D_SNAPSHOT_INTERVAL_={SNAPSHOT_INTERVAL}"]
    return load(
        name=f"rwkv_{name}_state_n{HEAD_SIZE}_c{SNAPSHOT_INTERVAL}",
        sources=[str(CUDA_DIR / s) for s in CUDA_SOURCES[name]],
        extra_include_paths=[str(CUDA_DIR)],
        extra_cflags=["-O3", *defines],
        extra_cuda_cflags=["-O3", "--use_fast_math", *defines],
        verbose=False,
    )


def extension(op: str):
    """The loaded CUDA extension for `op`, or None if there is no CUDA or the build failed (warned once)."""
    if op not in EXT_OF:
        return None
    name = EXT_OF[op]
    with _lock:
        if name not in _extensions:
            if not torch.cuda.is_available():
                _extensions[name] = RuntimeError("torch reports no CUDA device")
            else:
                try:
                    _extensions[name] = build_cuda(name)
                except Exception as e:  # noqa: BLE001 - any build failure means "use chunked"
                    _extensions[name] = e
        ext = _extensions[name]
    if isinstance(ext, Exception):
        warn_once(("build", name), "%s: the cuda backend is unavailable (%s: %s); using chunked",
                  op, type(ext).__name__, str(ext).strip().splitlines()[-1] if str(ext).strip() else "")
        return None
    return ext
