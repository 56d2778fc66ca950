"""The `cpu` WKV-7 backend: the per-token recurrence in C (rwkv/ops/csrc/wkv7_cpu.c), fp32.

Why: on the 2-core machines here the chunked PyTorch form (spec §3.4) spends ~80 ms per layer of a
L6-D512 training step in small batched matmuls and elementwise temporaries; the recurrence with the
64×64 state in L1 does the same work in a fraction of that (docs/benchmarks.md, "WKV kernels").

Build: the first use compiles the C file with the system C compiler (`$CC`, else `cc`) into a cache
directory (`$RWKV_CPU_EXTENSIONS_DIR`, else `~/.cache/rwkv-infctx/cpu`), named by a hash of the
source, flags, compiler and CPU flags, written to a temporary name and renamed (concurrent ranks and
a killed build never leave a torn library). It is plain C loaded with ctypes: no torch headers, a
build takes well under a second. `ready()` is what `backend="auto"` consults: True only when the build
succeeded and a one-time self-check against the fp64 `chunked` backend passed; otherwise `auto`
keeps `chunked`, with one warning.

Contract as `rwkv.ops.wkv7`. Inputs of any float dtype except fp64 run in fp32 (fp64 inputs are for
tight tests and go to `chunked` under `auto`); the state is fp32 [B, H, N(value), N(key)]. The (b, h)
pairs are split over `torch.get_num_threads()` Python threads (ctypes drops the GIL during the call).
Gradients reach r, w, k, v, a, b and the initial state; double backward is not supported.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .common import zero_state

log = logging.getLogger("rwkv.ops")

SOURCE = Path(__file__).resolve().parent / "csrc" / "wkv7_cpu.c"
# -fopenmp-simd: honour the `omp simd` pragmas (vectorised reductions) without the OpenMP runtime,
# which would be a second thread pool next to torch's. -ffp-contract=fast: FMAs.
CFLAGS = ["-O3", "-std=c11", "-fPIC", "-shared", "-fopenmp-simd", "-ffp-contract=fast"]
NATIVE = ["-march=native"]  # tried first; dropped if the compiler refuses it
# State snapshot interval of the backward (tokens): the recomputation buffer holds SPAN+1 states
# (1.1 MB at N=64, L2-resident) and the forward keeps T/SPAN states per (b, h) for the backward.
SPAN = 16
SELF_CHECK_TOL = 1e-4  # max |cpu − chunked(fp64)| / max |chunked(fp64)| per tensor; fp32 rounding

_lock = threading.Lock()
_lib = None  # the loaded library, or the exception that made the build fail
_verdict = None  # self-check result
_pool = None
_warned: set = set()


def _warn_once(key, msg, *args):
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


# --------------------------------------------------------------------------------------------- build
def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_dir() -> Path:
    env = os.environ.get("RWKV_CPU_EXTENSIONS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "rwkv-infctx" / "cpu"


def _compile(cc: str, flags: list[str], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.stem + ".", suffix=".tmp")
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SOURCE}: {proc.stderr.strip()[-800:]}")
        os.replace(tmp, out)  # atomic: other processes see either nothing or the whole library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build():
    cc = os.environ.get("CC", "cc")
    src = SOURCE.read_bytes()
    errors = []
    for flags in (CFLAGS + NATIVE, CFLAGS):
        try:
            version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
        except OSError as e:
            raise RuntimeError(f"no C compiler ({cc}): {e}") from e
        key = hashlib.sha256(b"\0".join([src, " ".join(flags).encode(), version.encode(),
                                         _cpu_flags().encode(), platform.machine().encode()])).hexdigest()
        out = cache_dir() / f"wkv7_cpu_{key[:16]}.so"
        try:
            if not out.exists():
                _compile(cc, flags, out)
            lib = ctypes.CDLL(str(out))
        except (RuntimeError, OSError) as e:
            errors.append(str(e))
            continue
        for name in ("wkv7_forward", "wkv7_backward"):
            getattr(lib, name).restype = ctypes.c_int
        return lib
    raise RuntimeError("; ".join(errors))


def library():
    """The loaded kernel library, or None if it cannot be built here (warned once)."""
    global _lib
    with _lock:
        if _lib is None:
            try:
                _lib = _build()
            except Exception as e:  # noqa: BLE001 - any build failure means "use chunked"
                _lib = e
    if isinstance(_lib, Exception):
        _warn_once("build", "wkv7: the cpu backend is unavailable (%s); using chunked", str(_lib).strip())
        return None
    return _lib


# ---------------------------------------------------------------------------------------------- call
def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def _run_split(fn, B, H, args):
    """Run fn(*args, bh0, bh1) over all (b, h) pairs, split in contiguous ranges over the threads."""
    global _pool
    n = max(1, min(torch.get_num_threads(), B * H))
    bounds = [(B * H * i // n, B * H * (i + 1) // n) for i in range(n)]
    if n == 1:
        codes = [fn(*args, 0, B * H)]
    else:
        with _lock:
            if _pool is None or _pool._max_workers < n:
                _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="rwkv-wkv7")
            pool = _pool
        codes = [f.result() for f in [pool.submit(fn, *args, lo, hi) for lo, hi in bounds]]
    if any(codes):
        raise MemoryError("wkv7 cpu kernel: out of memory for its work buffers")


def _dims(r):
    B, T, H, N = r.shape
    return [ctypes.c_int(x) for x in (B, T, H, N, SPAN)]


class _WKV7CPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, r, w, k, v, a, b, s0, reset):
        B, T, H, N = r.shape
        y, sT = torch.empty_like(r), torch.empty_like(s0)
        d = torch.exp(w)  # the C loops take the decay itself: a vectorised exp here, none per step there
        need_grad = any(ctx.needs_input_grad[1:8])
        snaps = r.new_empty(B, H, -(-T // SPAN), N, N) if need_grad else None
        _run_split(lib.wkv7_forward, B, H, [*_dims(r), *map(_ptr, (r, d, k, v, a, b, s0, reset, y, sT, snaps))])
        if need_grad:
            ctx.lib = lib
            ctx.save_for_backward(r, d, k, v, a, b, reset, snaps)
        return y, sT

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dsT):
        r, d, k, v, a, b, reset, snaps = ctx.saved_tensors
        B, T, H, N = r.shape
        dy = torch.zeros_like(r) if dy is None else dy.to(torch.float32).contiguous()
        dsT = (r.new_zeros(B, H, N, N) if dsT is None else dsT.to(torch.float32).contiguous())
        grads = [torch.empty_like(r) for _ in range(6)]
        ds0 = torch.empty_like(dsT)
        _run_split(ctx.lib.wkv7_backward, B, H,
                   [*_dims(r), *map(_ptr, (r, d, k, v, a, b, reset, snaps, dy, dsT, *grads, ds0))])
        dr, dw, dk, dv, da, db = grads
        return None, dr, dw, dk, dv, da, db, ds0, None


def wkv7_with(lib, r, w, k, v, a, b, state=None, reset=None):
    """wkv7 through the loaded library: cast to contiguous fp32, call. Casts are autograd ops, so
    gradients come back in the input dtypes."""
    B, T, H, N = r.shape
    r, w, k, v, a, b = (x.to(torch.float32).contiguous() for x in (r, w, k, v, a, b))
    s0 = zero_state(B, H, N, torch.float32, r.device) if state is None else state.to(torch.float32).contiguous()
    rst = None if reset is None else reset.to(torch.uint8).contiguous()
    return _WKV7CPU.apply(lib, r, w, k, v, a, b, s0, rst)


def wkv7_cpu(r, w, k, v, a, b, state=None, reset=None, **kw):
    """`rwkv.ops.wkv7` with backend='cpu' (CPU tensors; fp64 inputs are computed in fp32 here)."""
    if r.device.type != "cpu":
        raise ValueError(f"wkv7: backend='cpu' needs CPU tensors, got {r.device}; use backend='auto'")
    hi = float(w.detach().max())
    if not hi <= 0 or not math.isfinite(float(w.detach().min())):  # one cheap pass; catches NaN too
        raise ValueError(f"wkv7 cpu: log-decay w must be finite and <= 0 (RWKV-7 clamps it to (-0.6066, 0), "
                         f"model-spec §1.3); got max {hi:.4g}, min {float(w.detach().min()):.4g}. Pass the "
                         "log-decay λ, not the raw ω or the decay exp(λ).")
    lib = library()
    if lib is None:
        raise RuntimeError(f"wkv7: backend='cpu' requested but the kernel is unavailable: {_lib}. "
                           "Use backend='auto' or 'chunked'.")
    return wkv7_with(lib, r, w, k, v, a, b, state=state, reset=reset)


# ------------------------------------------------------------------------------------------ self-check
def self_check(lib) -> tuple[bool, str]:
    """Forward, final state and every gradient on a small case with resets and a T that is not a
    multiple of SPAN, against chunked in fp64."""
    from .wkv7_chunked import wkv7_chunked

    g = torch.Generator().manual_seed(1234)
    B, T, H, N = 2, 2 * SPAN + 5, 2, 64
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    kappa = torch.nn.functional.normalize(rnd(B, T, H, N), dim=-1)
    x = dict(r=rnd(B, T, H, N), w=-0.6065 * torch.sigmoid(2 * rnd(B, T, H, N)), k=rnd(B, T, H, N),
             v=rnd(B, T, H, N), a=-kappa, b=kappa * torch.rand(B, T, H, N, generator=g, dtype=torch.float64))
    s0 = 0.3 * rnd(B, H, N, N)
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, SPAN + 3] = reset[1, SPAN] = True
    dy, dS = rnd(B, T, H, N), rnd(B, H, N, N)

    def run(fn, dtype):
        leaves = {n: t.to(dtype).requires_grad_() for n, t in {**x, "s0": s0}.items()}
        y, S = fn(*(leaves[n] for n in "rwkvab"), state=leaves["s0"], reset=reset)
        torch.autograd.backward([y, S], [dy.to(dtype), dS.to(dtype)])
        return {"y": y, "S": S, **{f"d{n}": t.grad for n, t in leaves.items()}}

    with torch.enable_grad():
        got = run(lambda *t, **kw: wkv7_with(lib, *t, **kw), torch.float32)
        ref = run(wkv7_chunked, torch.float64)
    errs = {n: ((got[n].double() - ref[n]).abs().max() / ref[n].abs().max().clamp_min(1e-30)).item() for n in ref}
    worst = max(errs.values())
    ok = all(torch.isfinite(t).all() for t in got.values()) and worst <= SELF_CHECK_TOL
    return ok, ", ".join(f"{n} {e:.1e}" for n, e in errs.items())


def ready() -> bool:
    """True when the library is built and passed its self-check (run once per process)."""
    global _verdict
    if _verdict is None:
        lib = library()
        if lib is None:
            _verdict = False
        else:
            try:
                ok, detail = self_check(lib)
            except Exception as e:  # noqa: BLE001 - a crashing check is a failed check
                ok, detail = False, f"{type(e).__name__}: {e}"
            if not ok:
                _warn_once("check", "wkv7: the cpu kernel failed its self-check against chunked (%s); "
                           "using chunked", detail)
            _verdict = ok
    return _verdict
