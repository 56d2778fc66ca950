"""CPU kernels in C: the `cpu` WKV-7 backend (rwkv/ops/csrc/wkv7_cpu.c) and the fused token-shift
mixes (rwkv/ops/csrc/mix_cpu.c) and key preparation (rwkv/ops/csrc/kk_cpu.c), fp32.

Why: on the 2-core machines here the chunked PyTorch WKV-7 (docs/model-spec.md §3.4) spends ~80 ms per layer of a
L6-D512 training step in small batched matmuls and elementwise temporaries; the recurrence with the
64×64 state in L1 does the same work in a fraction of that. The token-shift mixes are ~40 memory-bound
elementwise passes per layer in PyTorch and a few in C (docs/benchmarks.md, "WKV kernels", "Training step").

Build: the first use compiles the C files with the system C compiler (`$CC`, else `cc`) into one
library in a cache directory (`$RWKV_CPU_EXTENSIONS_DIR`, else `~/.cache/rwkv-infctx/cpu`), named by a
hash of the sources, flags, compiler and CPU flags, written to a temporary name and renamed (concurrent
ranks and a killed build never leave a torn library). It is plain C loaded with ctypes: no torch
headers, a build takes well under a second. `ready(op)` is what the `auto` dispatch consults: True only
when the build succeeded and that op's one-time self-check against the fp64 reference passed (wkv7:
the `chunked` backend; mix: rwkv.ops.mix's formula); otherwise `auto` keeps the PyTorch path, with one
warning.

wkv7 contract as `rwkv.ops.wkv7`. Inputs of any float dtype run in fp32 (fp64 inputs are for tight tests
and go to `chunked` under `auto`); the state is fp32 [B, H, N(value), N(key)]. Work is split over
`torch.get_num_threads()` parts ((b, h) pairs for wkv7, (b, t) rows for the mixes) in fixed ranges, so
results do not depend on timing; they run on torch's OpenMP pool when the library was built with
-fopenmp, else on Python threads (ctypes drops the GIL during the call). Gradients reach every
input including the initial state (wkv7) and x_prev (mixes); double backward is not supported.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..atomic import atomic_file
from .common import check_log_decay, run_isolated, zero_state

log = logging.getLogger("rwkv.ops")

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / name for name in ("wkv7_cpu.c", "mix_cpu.c", "kk_cpu.c")]
HEADERS = [CSRC / "parts.h"]
# -fopenmp-simd: honour the `omp simd` pragmas (vectorised loops and reductions); -ffp-contract=fast: FMAs.
CFLAGS = ["-O3", "-std=c11", "-fPIC", "-shared", "-fopenmp-simd", "-ffp-contract=fast"]
# Tried in this order; a compiler that refuses one gets the next. -fopenmp: run the parts on OpenMP threads,
# which bind to the libgomp.so.1 torch has already loaded (its intra-op pool; csrc/parts.h says why).
FLAG_SETS = [CFLAGS + ["-march=native", "-fopenmp"], CFLAGS + ["-march=native"], CFLAGS + ["-fopenmp"], CFLAGS]
# State snapshot interval of the backward (tokens): the forward keeps T/SPAN states per (b, h) for the
# backward, which recomputes SPAN+1 states at a time into a buffer (528 KB at N=64, L2-resident). Measured
# fwd+bwd (machine B) for SPAN 16/32/64: H8 B4 T512 22.5/20.4/19.1 ms; H12 B4 T4096 424/393/377 ms;
# H12 B1 T4096 80/80/85 ms. 32 halves 16's snapshot memory (B·H·T/32 states: 100 MB at H12 B4 T4096)
# and keeps the buffer inside a 1 MB L2; 64 gains little more.
SPAN = 32
# Self-check tolerances: max |C − fp64 reference| / max |reference| per tensor; fp32 rounding (the C
# kernels measured ~3e-7 on these inputs)
SELF_CHECK_TOL = {"wkv7": 1e-4, "mix": 1e-5, "keys": 1e-5}

_lock = threading.Lock()
_lib = None  # the loaded library, or the exception that made the build fail
_verdicts: dict = {}  # op -> self-check result
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


def _build():
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
        for name in ("wkv7_forward", "wkv7_backward", "mix_forward", "mix_backward", "kk_forward", "kk_backward",
                     "rwkv_cpu_openmp"):
            getattr(lib, name).restype = ctypes.c_int
        lib.openmp = bool(lib.rwkv_cpu_openmp())
        log.debug("C CPU kernels: %s (%s)", out, " ".join(flags))
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
        _warn_once("build", "the C CPU kernels are unavailable (%s); wkv7 uses chunked, the token-shift "
                   "mixes PyTorch", str(_lib).strip())
        return None
    return _lib


def _require(op: str, device) -> ctypes.CDLL:
    """The library for an explicit backend='cpu' call, or a clear error (wrong device, no library)."""
    if device.type != "cpu":
        raise ValueError(f"{op}: backend='cpu' needs CPU tensors, got {device}; use backend='auto'")
    lib = library()
    if lib is None:
        raise RuntimeError(f"{op}: backend='cpu' requested but the kernel is unavailable (the C kernels "
                           f"did not build: {_lib}). Use backend='auto'.")
    return lib


# ---------------------------------------------------------------------------------------------- call
def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def n_parts(total: int) -> int:
    return max(1, min(torch.get_num_threads(), total))


def _run_parts(lib, fn, total, args):
    """fn(*args, nparts, part) over n_parts(total) ranges (csrc/parts.h): one call that runs them all on
    OpenMP threads when the library has OpenMP, else one call per part on a Python thread pool."""
    global _pool
    n = n_parts(total)
    if n == 1 or lib.openmp:
        codes = [fn(*args, n, -1)]
    else:
        with _lock:
            if _pool is None or _pool._max_workers < n:
                _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="rwkv-cpu")
            pool = _pool
        codes = [f.result() for f in [pool.submit(fn, *args, n, p) for p in range(n)]]
    if any(codes):
        raise MemoryError("rwkv C kernel: out of memory for its work buffers")


class _WKV7CPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, need_grad, r, w, k, v, a, b, s0, reset):
        B, T, H, N = r.shape
        y, sT = torch.empty_like(r), torch.empty_like(s0)
        d = torch.exp(w)  # the C loops take the decay itself: a vectorised exp here, none per step there
        span = SPAN  # read once: the backward must use the forward's snapshot interval
        snaps = r.new_empty(B, H, -(-T // span), N, N) if need_grad else None
        _run_parts(lib, lib.wkv7_forward, B * H,
                   [B, T, H, N, span, *map(_ptr, (r, d, k, v, a, b, s0, reset, y, sT, snaps))])
        if need_grad:
            ctx.lib, ctx.span = lib, span
            ctx.save_for_backward(r, d, k, v, a, b, reset, snaps)
        return y, sT

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dsT):
        r, d, k, v, a, b, reset, snaps = ctx.saved_tensors
        B, T, H, N = r.shape
        dy, dsT = (g.to(torch.float32).contiguous() for g in (dy, dsT))  # materialised: never None here
        grads = [torch.empty_like(r) for _ in range(6)]
        ds0 = torch.empty_like(dsT)
        _run_parts(ctx.lib, ctx.lib.wkv7_backward, B * H,
                   [B, T, H, N, ctx.span, *map(_ptr, (r, d, k, v, a, b, reset, snaps, dy, dsT, *grads, ds0))])
        dr, dw, dk, dv, da, db = grads
        return None, None, dr, dw, dk, dv, da, db, ds0, None


def wkv7_with(lib, r, w, k, v, a, b, state=None, reset=None):
    """wkv7 through the loaded library: cast to contiguous fp32, call. Casts are autograd ops, so
    gradients come back in the input dtypes."""
    B, T, H, N = r.shape
    r, w, k, v, a, b = (x.to(torch.float32).contiguous() for x in (r, w, k, v, a, b))
    s0 = zero_state(B, H, N, torch.float32, r.device) if state is None else state.to(torch.float32).contiguous()
    rst = None if reset is None else reset.to(torch.uint8).contiguous()
    # snapshots for the backward only when one can follow (needs_input_grad ignores no_grad mode)
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (r, w, k, v, a, b, s0))
    return _WKV7CPU.apply(lib, need_grad, r, w, k, v, a, b, s0, rst)


def wkv7_cpu(r, w, k, v, a, b, state=None, reset=None, **kw):
    """`rwkv.ops.wkv7` with backend='cpu' (CPU tensors; fp64 inputs are computed in fp32 here)."""
    lib = _require("wkv7", r.device)
    check_log_decay("wkv7 cpu", w)  # the recurrence holds for any λ ≤ 0; refuse NaN, ω or exp(λ)
    return wkv7_with(lib, r, w, k, v, a, b, state=state, reset=reset)


# ------------------------------------------------------------------------------------- token-shift mix
class _MixCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, x, x_prev, reset, m):
        B, T, C = x.shape
        K = m.shape[0]
        outs = [torch.empty_like(x) for _ in range(K)]
        ptrs = (ctypes.c_void_p * K)(*[o.data_ptr() for o in outs])
        _run_parts(lib, lib.mix_forward, B * T, [B, T, C, K, *map(_ptr, (x, x_prev, reset, m)), ptrs])
        ctx.lib = lib
        ctx.set_materialize_grads(False)  # an unused mix hands in None: the kernel skips it
        ctx.save_for_backward(x, x_prev, reset, m)
        return tuple(outs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *gs):
        x, x_prev, reset, m = ctx.saved_tensors
        B, T, C = x.shape
        K = m.shape[0]
        gs = [None if g is None else g.to(torch.float32).contiguous() for g in gs]
        ptrs = (ctypes.c_void_p * K)(*[None if g is None else g.data_ptr() for g in gs])
        gx = torch.empty_like(x)
        gx_prev = torch.empty_like(x_prev) if ctx.needs_input_grad[2] else None
        gm = x.new_empty(n_parts(B * T), K, C)  # one partial sum per part, added up below in a fixed order
        _run_parts(ctx.lib, ctx.lib.mix_backward, B * T,
                   [B, T, C, K, *map(_ptr, (x, x_prev, reset, m)), ptrs, _ptr(gx), _ptr(gx_prev), _ptr(gm)])
        return None, gx, gx_prev, None, gm.sum(0)


def token_shift_mix_with(lib, x, x_prev, reset, mixes):
    """rwkv.ops.mix.token_shift_mix through the loaded library, in fp32 (casts are autograd ops)."""
    B, T, C = x.shape
    dt = x.dtype
    x32 = x.to(torch.float32).contiguous()
    xp = x_prev.to(torch.float32).contiguous()
    m = torch.cat([mm.reshape(1, C) for mm in mixes]).to(torch.float32).contiguous()
    rst = None if reset is None else reset.to(torch.uint8).contiguous()
    outs = _MixCPU.apply(lib, x32, xp, rst, m)
    return [o.to(dt) for o in outs]


def token_shift_mix_cpu(x, x_prev, reset, mixes):
    return token_shift_mix_with(_require("token_shift_mix", x.device), x, x_prev, reset, mixes)


# ------------------------------------------------------------------------------------- key preparation
class _KeysCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lib, n_head, k, a, k_k, k_a):
        B, T, C = k.shape
        outs = [torch.empty_like(k) for _ in range(3)]
        _run_parts(lib, lib.kk_forward, B * T, [B, T, n_head, C // n_head, *map(_ptr, (k, a, k_k, k_a, *outs))])
        ctx.lib, ctx.n_head = lib, n_head
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(k, a, k_k, k_a)
        return tuple(outs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_k, g_a, g_b):
        k, a, k_k, k_a = ctx.saved_tensors
        B, T, C = k.shape
        gs = [None if g is None else g.to(torch.float32).contiguous() for g in (g_k, g_a, g_b)]
        gk, ga = torch.empty_like(k), torch.empty_like(a)
        n = n_parts(B * T)
        g_kk, g_ka = k.new_empty(n, C), k.new_empty(n, C)  # per-part partial sums, added below in order
        _run_parts(ctx.lib, ctx.lib.kk_backward, B * T,
                   [B, T, ctx.n_head, C // ctx.n_head, *map(_ptr, (k, a, k_k, k_a, *gs, gk, ga, g_kk, g_ka))])
        return None, None, gk, ga, g_kk.sum(0).view_as(k_k), g_ka.sum(0).view_as(k_a)


def wkv7_keys_with(lib, k, a, k_k, k_a, n_head):
    """rwkv.ops.keys.wkv7_keys through the loaded library, in fp32 (casts are autograd ops)."""
    dt = k.dtype
    k32, a32, kk32, ka32 = (t.to(torch.float32).contiguous() for t in (k, a, k_k, k_a))
    return [o.to(dt) for o in _KeysCPU.apply(lib, n_head, k32, a32, kk32, ka32)]


def wkv7_keys_cpu(k, a, k_k, k_a, n_head):
    return wkv7_keys_with(_require("wkv7_keys", k.device), k, a, k_k, k_a, n_head)


# ------------------------------------------------------------------------------------------ self-check
def _compare(kernel_fn, reference_fn, inputs: dict, upstream: list, out_names: tuple, tol: float):
    """Run fn(leaves) -> outputs in fp32 (the C kernel) and fp64 (the reference) on the same values, back-
    propagate `upstream`, and judge max |C − ref| / max |ref| for every output and input gradient."""

    def run(fn, dtype):
        leaves = {n: t.to(dtype).clone().requires_grad_() for n, t in inputs.items()}
        outs = fn(leaves)
        torch.autograd.backward(list(outs), [u.to(dtype) for u in upstream])
        return {**dict(zip(out_names, outs)), **{f"d{n}": t.grad for n, t in leaves.items()}}

    def judge():  # everything that touches the autograd graphs stays in the isolated thread
        got, ref = run(kernel_fn, torch.float32), run(reference_fn, torch.float64)
        errs = {n: ((got[n].double() - ref[n]).abs().max() / ref[n].abs().max().clamp_min(1e-30)).item()
                for n in ref}
        ok = all(bool(torch.isfinite(t).all()) for t in got.values()) and max(errs.values()) <= tol
        return ok, ", ".join(f"{n} {e:.1e}" for n, e in errs.items())

    return run_isolated(judge)


def self_check(lib, op: str = "wkv7") -> tuple[bool, str]:
    """Outputs and every gradient on a small case with resets against the fp64 reference: wkv7 (a T that is
    not a multiple of SPAN, head size 64 as the models use) against chunked, the mixes and the key
    preparation against their formulas (rwkv.ops.mix, rwkv.ops.keys)."""
    g = torch.Generator().manual_seed(1234)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    if op == "wkv7":
        from .wkv7_chunked import wkv7_chunked

        B, T, H, N = 2, 2 * SPAN + 5, 2, 64
        kappa = torch.nn.functional.normalize(rnd(B, T, H, N), dim=-1)
        x = dict(r=rnd(B, T, H, N), w=-0.6065 * torch.sigmoid(2 * rnd(B, T, H, N)), k=rnd(B, T, H, N),
                 v=rnd(B, T, H, N), a=-kappa, b=kappa * torch.rand(B, T, H, N, generator=g, dtype=torch.float64),
                 s0=0.3 * rnd(B, H, N, N))
        reset = torch.zeros(B, T, dtype=torch.bool)
        reset[0, SPAN + 3] = reset[1, SPAN] = True
        call = lambda fn: lambda t: fn(*(t[n] for n in "rwkvab"), state=t["s0"], reset=reset)
        return _compare(call(lambda *a, **kw: wkv7_with(lib, *a, **kw)), call(wkv7_chunked), x,
                        [rnd(B, T, H, N), rnd(B, H, N, N)], ("y", "S"), SELF_CHECK_TOL["wkv7"])
    if op == "mix":
        from .mix import token_shift_mix_reference

        B, T, C, K = 3, 7, 40, 3
        x = dict(x=rnd(B, T, C), x_prev=rnd(B, C), m=rnd(K, 1, 1, C))
        reset = torch.zeros(B, T, dtype=torch.bool)
        reset[0, 0] = reset[1, 3] = reset[2, T - 1] = True
        call = lambda fn: lambda t: fn(t["x"], t["x_prev"], reset, list(t["m"]))
        return _compare(call(lambda *a: token_shift_mix_with(lib, *a)), call(token_shift_mix_reference), x,
                        list(rnd(K, B, T, C)), tuple(f"out{i}" for i in range(K)), SELF_CHECK_TOL["mix"])
    if op == "keys":
        from .keys import wkv7_keys_reference

        B, T, H, N = 2, 5, 3, 16
        x = dict(k=rnd(B, T, H * N), a=torch.sigmoid(rnd(B, T, H * N)), k_k=rnd(1, 1, H * N), k_a=rnd(1, 1, H * N))
        x["k"][0, 1, :N] = 0.0  # a head whose k ⊙ k_k is 0: the eps clamp's branch
        call = lambda fn: lambda t: fn(t["k"], t["a"], t["k_k"], t["k_a"], H)
        return _compare(call(lambda *a: wkv7_keys_with(lib, *a)), call(wkv7_keys_reference), x,
                        list(rnd(3, B, T, H * N)), ("k", "a_in", "b_in"), SELF_CHECK_TOL["keys"])
    raise ValueError(f"self_check: unknown op {op!r}; choose wkv7, mix or keys")


def ready(op: str = "wkv7") -> bool:
    """True when the library is built and `op` ("wkv7", "mix" or "keys") passed its self-check (once per
    process)."""
    if op not in _verdicts:
        lib = library()
        if lib is None:
            _verdicts[op] = False
        else:
            try:
                ok, detail = self_check(lib, op)
            except Exception as e:  # noqa: BLE001 - a crashing check is a failed check
                ok, detail = False, f"{type(e).__name__}: {e}"
            if not ok:
                _warn_once(("check", op), "%s: the C CPU kernel failed its self-check against the fp64 "
                           "reference (%s); using the PyTorch path", op, detail)
            _verdicts[op] = ok
    return _verdicts[op]
