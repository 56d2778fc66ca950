"""The `cuda` WKV backend: kernels from the repo's cuda/ directory, built on first use (docs/cuda.md).

Importing this module builds nothing and needs neither a GPU nor nvcc. The extension is compiled
with `torch.utils.cpp_extension.load` the first time a CUDA tensor asks for it (`ready()` or an
explicit `backend="cuda"` call); the build cache lives under TORCH_EXTENSIONS_DIR (torch's default
when unset). `ready(op, device)` is what `backend="auto"` consults (docs/design.md §3.1): it is
True only when the build succeeded and a one-time self-check on that device against the `chunked`
backend passed (the per-token reference only if a chunked module cannot be imported); otherwise
`auto` uses `chunked`.

wkv7 contract as `rwkv.ops.wkv7`: inputs [B, T, H, N] of any float dtype run in a bf16 kernel when
they are bf16 and in an fp32 kernel otherwise; the state is fp32 [B, H, N(value), N(key)]; T is
padded to a multiple of the kernel's chunk with λ = 0 and zeros (docs/model-spec.md §3.4: the outputs and
the final state are unchanged); `reset` is handled by the kernel. Gradients reach r, w, k, v, a, b
and the initial state.

wkv6/wkv5 as `rwkv.ops.wkv6/wkv5`: r, k, v run in bf16 or fp32 as above, while the log-decay λ, the
bonus u and the state [B, H, N(key), N(value)] are always fp32 (λ is unbounded below, docs/model-spec.md §3.6).
wkv5 is wkv6 with its [H, N] decay broadcast over (B, T). Any T; `reset` is handled by the kernel.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path

import torch

from .common import pad_time, run_isolated, zero_state

log = logging.getLogger("rwkv.ops")

CUDA_DIR = Path(__file__).resolve().parents[2] / "cuda"
HEAD_SIZE = 64  # -D_N_: every official RWKV model uses head size 64 (docs/model-spec.md §0 notation, §3.1)
# -D_SNAPSHOT_INTERVAL_: tokens between the state snapshots the backward restarts from (the official
# kernels call it _CHUNK_LEN_; docs/model-spec.md §3.1). Not a chunk of the chunked algorithm.
SNAPSHOT_INTERVAL = 16

# extension -> sources; op -> extension (wkv5 runs on the wkv6 kernel)
_SOURCES = {"wkv7": ("wkv7_state_op.cpp", "wkv7_state.cu"), "wkv6": ("wkv6_state_op.cpp", "wkv6_state.cu")}
_EXT_OF = {"wkv7": "wkv7", "wkv6": "wkv6", "wkv5": "wkv6"}

# Self-check tolerances: max |cuda − chunked(fp64)| / max |chunked(fp64)| per tensor. fp32: the
# v7 back-stepping division amplifies rounding by up to 1.83 per step for ≤ 15 steps (docs/model-spec.md §3.1);
# the CPU emulations of the kernels (tests/ops/cuda_wkv{7,6}_emulation.py) measured ≤ 2e-5 (v7) and
# ≤ 2e-7 (v6) on the self-check inputs, and 6e-4 for v7 with every λ at the clamp (the worst case).
# bf16: y and the gradients are rounded to bf16 on output (relative step 2^-8).
SELF_CHECK_TOL = {torch.float32: 1e-3, torch.bfloat16: 3e-2}

_lock = threading.Lock()
_extensions: dict = {}  # extension name -> loaded module, or the exception that made the build fail
_verdicts: dict = {}  # (op, device string) -> bool
_warned: set = set()


def _warn_once(key, msg, *args, level=logging.WARNING):
    if key not in _warned:
        _warned.add(key)
        log.log(level, msg, *args)


# --------------------------------------------------------------------------------------------- build
def _build(name: str):
    """Compile and load extension `name` (torch caches the build and rebuilds when a source changes)."""
    from torch.utils.cpp_extension import load  # imported here: it is slow and pulls setuptools

    defines = [f"-D_N_={HEAD_SIZE}", f"-D_SNAPSHOT_INTERVAL_={SNAPSHOT_INTERVAL}"]
    return load(
        name=f"rwkv_{name}_state_n{HEAD_SIZE}_c{SNAPSHOT_INTERVAL}",
        sources=[str(CUDA_DIR / s) for s in _SOURCES[name]],
        extra_include_paths=[str(CUDA_DIR)],
        extra_cflags=["-O3", *defines],
        extra_cuda_cflags=["-O3", "--use_fast_math", *defines],
        verbose=False,
    )


def extension(op: str):
    """The loaded extension for `op`, or None if there is no CUDA or the build failed (warned once)."""
    if op not in _EXT_OF:
        return None
    op = _EXT_OF[op]
    with _lock:
        if op not in _extensions:
            if not torch.cuda.is_available():
                _extensions[op] = RuntimeError("torch reports no CUDA device")
            else:
                try:
                    _extensions[op] = _build(op)
                except Exception as e:  # noqa: BLE001 - any build failure means "use chunked"
                    _extensions[op] = e
        ext = _extensions[op]
    if isinstance(ext, Exception):
        _warn_once(("build", op), "%s: the cuda backend is unavailable (%s: %s); using chunked",
                   op, type(ext).__name__, str(ext).strip().splitlines()[-1] if str(ext).strip() else "")
        return None
    return ext


# ---------------------------------------------------------------------------------------------- wkv7
class _WKV7State(torch.autograd.Function):
    """Calls `ext.forward/backward` (the C++ binding, or a stand-in with the same interface in tests)
    on padded, contiguous inputs of the kernel dtype; see cuda/wkv7_state.h for the buffers."""

    @staticmethod
    def forward(ctx, ext, r, w, k, v, a, b, s0, reset):
        y, sT, snaps, sa = ext.forward(r, w, k, v, a, b, s0, reset)
        ctx.ext = ext
        ctx.save_for_backward(r, w, k, v, a, b, s0, reset, snaps, sa)
        return y, sT

    @staticmethod
    def backward(ctx, dy, dsT):
        r, w, k, v, a, b, s0, reset, snaps, sa = ctx.saved_tensors
        dr, dw, dk, dv, da, db, ds0 = ctx.ext.backward(
            r, w, k, v, a, b, dy.to(r.dtype).contiguous(), s0, reset, snaps, sa,
            dsT.to(torch.float32).contiguous())
        return None, dr, dw, dk, dv, da, db, ds0, None


def kernel_dtype(x: torch.Tensor) -> torch.dtype:
    """bf16 inputs run the bf16 kernel; everything else (fp16, fp32, fp64) the fp32 one."""
    return torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32


def wkv7_with(ext, r, w, k, v, a, b, state=None, reset=None):
    """wkv7 through the kernel interface `ext`: pad T to a multiple of SNAPSHOT_INTERVAL, cast, call, crop.

    Padding and casts are ordinary autograd ops, so gradients come back unpadded in the input dtypes.
    """
    B, T, H, N = r.shape
    kdt = kernel_dtype(r)
    T_pad = -(-T // SNAPSHOT_INTERVAL) * SNAPSHOT_INTERVAL
    # Pad with λ = 0 (decay 1) and zeros: outputs and final state are unchanged (docs/model-spec.md §3.4).
    r, w, k, v, a, b = (pad_time(x.to(kdt), T_pad).contiguous() for x in (r, w, k, v, a, b))
    s0 = (zero_state(B, H, N, torch.float32, r.device) if state is None
          else state.to(torch.float32).contiguous())
    rst = None if reset is None else pad_time(reset, T_pad, value=False).contiguous()
    y, sT = _WKV7State.apply(ext, r, w, k, v, a, b, s0, rst)
    return y[:, :T], sT


def wkv7_cuda(r, w, k, v, a, b, state=None, reset=None, **kw):
    """`rwkv.ops.wkv7` with backend='cuda'. Head sizes other than HEAD_SIZE (and CPU tensors) fall
    back to `chunked`, warned once, so that `auto` never fails for a model the kernel was not
    compiled for."""
    return _cuda_or_fallback("wkv7", wkv7_with, r, w, k, v, a, b, state=state, reset=reset, **kw)


# ----------------------------------------------------------------------------------------- v6 / v5
class _WKV6State(torch.autograd.Function):
    """As `_WKV7State` for cuda/wkv6_state.h; the per-batch ∂u [B,H,N] is summed here."""

    @staticmethod
    def forward(ctx, ext, r, w, k, v, u, s0, reset):
        y, sT = ext.forward(r, w, k, v, u, s0, reset)
        ctx.ext = ext
        ctx.save_for_backward(r, w, k, v, u, s0, reset)
        return y, sT

    @staticmethod
    def backward(ctx, dy, dsT):
        r, w, k, v, u, s0, reset = ctx.saved_tensors
        dr, dw, dk, dv, du, ds0 = ctx.ext.backward(
            r, w, k, v, u, dy.to(r.dtype).contiguous(), s0, reset, dsT.to(torch.float32).contiguous())
        return None, dr, dw, dk, dv, du.sum(0), ds0, None


def wkv6_with(ext, r, w, k, v, u, state=None, reset=None):
    """wkv6 through the kernel interface `ext` (no padding: the v6 kernel takes any T)."""
    B, T, H, N = r.shape
    kdt = kernel_dtype(r)
    r, k, v = (x.to(kdt).contiguous() for x in (r, k, v))
    w, u = w.to(torch.float32).contiguous(), u.to(torch.float32).contiguous()
    s0 = (zero_state(B, H, N, torch.float32, r.device) if state is None
          else state.to(torch.float32).contiguous())
    rst = None if reset is None else reset.contiguous()
    return _WKV6State.apply(ext, r, w, k, v, u, s0, rst)


def wkv5_with(ext, r, w, k, v, u, state=None, reset=None):
    """wkv5 = wkv6 with the time-invariant [H, N] log-decay broadcast (autograd sums its gradient)."""
    return wkv6_with(ext, r, w.expand(r.shape), k, v, u, state=state, reset=reset)


def _cuda_or_fallback(op, with_fn, r, *args, state=None, reset=None, **kw):
    if r.shape[-1] != HEAD_SIZE or not r.is_cuda:
        _warn_once(("shape", op, r.shape[-1], r.device.type),
                   "%s: the cuda kernel is compiled for head size %d on CUDA tensors; got head size "
                   "%d on %s, using %s", op, HEAD_SIZE, r.shape[-1], r.device, _oracle(op)[0])
        name, fn = _oracle(op)
        return fn(r, *args, state=state, reset=reset, **(kw if name == "chunked" else {}))
    ext = extension(op)
    if ext is None:
        raise RuntimeError(f"{op}: backend='cuda' requested but the extension is unavailable: "
                           f"{_extensions.get(_EXT_OF[op])}. Use backend='auto' or 'chunked'.")
    return with_fn(ext, r, *args, state=state, reset=reset)


def wkv6_cuda(r, w, k, v, u, state=None, reset=None, **kw):
    """`rwkv.ops.wkv6` with backend='cuda' (other head sizes or CPU tensors: chunked, warned once)."""
    return _cuda_or_fallback("wkv6", wkv6_with, r, w, k, v, u, state=state, reset=reset, **kw)


def wkv5_cuda(r, w, k, v, u, state=None, reset=None, **kw):
    """`rwkv.ops.wkv5` with backend='cuda' (other head sizes or CPU tensors: chunked, warned once)."""
    return _cuda_or_fallback("wkv5", wkv5_with, r, w, k, v, u, state=state, reset=reset, **kw)


# ------------------------------------------------------------------------------------ self-check
def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double(), ref.detach().double()
    return float((got - ref).abs().max()) / max(float(ref.abs().max()), 1e-30)


def _oracle(op: str):
    """`chunked` (docs/design.md §3), or the per-token reference if the chunked module cannot be imported."""
    from .backends import _load

    try:
        return "chunked", _load(op, "chunked")
    except ImportError:
        return "reference", _load(op, "reference")


def _reset_mask(B, T, device):
    """Document starts mid-chunk and on a chunk boundary, in the last batch row only."""
    rst = torch.zeros(B, T, dtype=torch.bool, device=device)
    for t in (5, SNAPSHOT_INTERVAL, 2 * SNAPSHOT_INTERVAL + 3):
        if t < T:
            rst[B - 1, t] = True
    return rst


def _wkv7_inputs(B, T, H, N, device, gen):
    """Random inputs in the real value range (docs/model-spec.md §1.3): λ = −e^{−1/2}σ(ω) (incl. values near
    the clamp), a = −κ̂, b = κ̂⊙α with κ̂ unit-norm per head, α ∈ (0,1), r/k/v of order 1."""
    def randn(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    r, k, v = randn(B, T, H, N), randn(B, T, H, N) * 0.5, randn(B, T, H, N)
    w = -math.exp(-0.5) * torch.sigmoid(randn(B, T, H, N) * 3.0)
    kappa = randn(B, T, H, N)
    kappa = kappa / kappa.norm(dim=-1, keepdim=True)
    alpha = torch.sigmoid(randn(B, T, H, N))
    a, b = -kappa, kappa * alpha
    s0 = randn(B, H, N, N) * 0.5
    dy, dsT = randn(B, T, H, N), randn(B, H, N, N) * 0.1
    return [x.to(device) for x in (r, w, k, v, a, b, s0, dy, dsT)]


def _wkv6_inputs(B, T, H, N, device, gen, v5=False):
    """v6: λ = −exp(ω) with ω ∈ (−6, 2): from the init range (docs/model-spec.md §2.1) to decays that vanish within
    a step; u of order 1 (time_faaaa). v5: a time-invariant λ [H, N]."""
    def randn(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    r, k, v = randn(B, T, H, N), randn(B, T, H, N) * 0.5, randn(B, T, H, N)
    w_shape = (H, N) if v5 else (B, T, H, N)
    w = -torch.exp(torch.rand(*w_shape, generator=gen, dtype=torch.float64) * 8.0 - 6.0)
    u = randn(H, N) * 0.5
    s0 = randn(B, H, N, N) * 0.5
    dy, dsT = randn(B, T, H, N), randn(B, H, N, N) * 0.1
    return [x.to(device) for x in (r, w, k, v, u, s0, dy, dsT)]


def _compare(op, ext_fn, inputs, n_in, dy, dsT, dtype, reset, round_mask):
    """Run `ext_fn` and the oracle (fp64) on the same dtype-rounded inputs; relative errors."""
    # Inputs that the kernel stores in `dtype` are rounded once, so both sides see the same numbers.
    inputs = [x.to(dtype).double() if rnd else x for x, rnd in zip(inputs, round_mask)]
    _, oracle = _oracle(op)
    out = {}
    for name, fn in (("cuda", ext_fn), ("oracle", oracle)):
        leaves = [x.to(dtype if (rnd and name == "cuda") else torch.float64).detach().requires_grad_()
                  for x, rnd in zip(inputs, round_mask)]
        with torch.enable_grad():
            y, sT = fn(*leaves[:n_in], state=leaves[n_in], reset=reset)
            loss = (y.double() * dy).sum() + (sT.double() * dsT).sum()
            grads = torch.autograd.grad(loss, leaves)
        out[name] = [y.detach(), sT.detach(), *grads]
    return out


def check_wkv7(ext, device, dtype=torch.float32, reset: bool = False, B=2, T=37, H=2, N=HEAD_SIZE,
               seed=1234) -> dict:
    """`ext` through `wkv7_with` vs the oracle (`chunked`) in fp64: relative max error of y, the final
    state and every gradient. T = 37 is not a multiple of SNAPSHOT_INTERVAL; the initial state is non-zero.
    Uses its own generator: the global RNG is untouched."""
    gen = torch.Generator().manual_seed(seed)
    r, w, k, v, a, b, s0, dy, dsT = _wkv7_inputs(B, T, H, N, device, gen)
    rst = _reset_mask(B, T, device) if reset else None
    out = _compare("wkv7", lambda *x, **kw: wkv7_with(ext, *x, **kw), [r, w, k, v, a, b, s0], 6,
                   dy, dsT, dtype, rst, [True] * 6 + [False])
    names = ["y", "state", "dr", "dw", "dk", "dv", "da", "db", "ds0"]
    return {n: _rel_err(g, e) for n, g, e in zip(names, out["cuda"], out["oracle"])}


def check_wkv6(ext, device, dtype=torch.float32, reset: bool = False, v5: bool = False, B=2, T=37,
               H=2, N=HEAD_SIZE, seed=1234) -> dict:
    """As `check_wkv7` for wkv6 (or wkv5 with `v5=True`); λ, u and the state stay fp32 in the kernel."""
    gen = torch.Generator().manual_seed(seed)
    r, w, k, v, u, s0, dy, dsT = _wkv6_inputs(B, T, H, N, device, gen, v5=v5)
    rst = _reset_mask(B, T, device) if reset else None
    fn = wkv5_with if v5 else wkv6_with
    out = _compare("wkv5" if v5 else "wkv6", lambda *x, **kw: fn(ext, *x, **kw), [r, w, k, v, u, s0], 5,
                   dy, dsT, dtype, rst, [True, False, True, True, False, False])
    names = ["y", "state", "dr", "dw", "dk", "dv", "du", "ds0"]
    return {n: _rel_err(g, e) for n, g, e in zip(names, out["cuda"], out["oracle"])}


def self_check(op: str, device, ext) -> bool:
    """One-time check of `ext` on `device` against the oracle: fp32 with and without reset, and bf16."""
    checks = {"wkv7": check_wkv7, "wkv6": check_wkv6,
              "wkv5": lambda *a, **kw: check_wkv6(*a, v5=True, **kw)}
    if op not in checks:
        return False
    worst = (0.0, "", None)
    cases = ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False))
    try:
        # The first call may come from evaluation code or from inside a grad_cp block: the check runs in a
        # thread of its own, with autograd and without autocast (common.run_isolated).
        results = run_isolated(lambda: [checks[op](ext, device, dtype=d, reset=r) for d, r in cases], device)
    except Exception as e:  # noqa: BLE001 - a crashing kernel must not break training: use chunked
        log.error("%s: cuda self-check raised on %s (%s: %s); using chunked", op, device,
                  type(e).__name__, e)
        return False
    for (dtype, reset), errs in zip(cases, results):
        tol = SELF_CHECK_TOL[dtype]
        key = max(errs, key=errs.get)
        if not errs[key] <= tol:  # also catches NaN
            log.error("%s: cuda self-check FAILED on %s (%s, reset=%s): max relative error "
                      "%.3g in %s > tolerance %.1g vs %s; using chunked. All errors: %s",
                      op, device, dtype, reset, errs[key], key, tol, _oracle(op)[0],
                      {k: f"{e:.2g}" for k, e in errs.items()})
            return False
        if errs[key] / tol > worst[0]:
            worst = (errs[key] / tol, key, dtype)
    log.info("%s: cuda self-check passed on %s vs %s (worst: %s %s at %.2f of tolerance)",
             op, device, _oracle(op)[0], worst[1], worst[2], worst[0])
    return True


def ready(op: str, device) -> bool:
    """True when `op`'s kernel is built and passed its self-check on `device` (cached per op, device).

    False at once for non-CUDA devices or without CUDA; never raises."""
    device = torch.device(device)
    if device.type != "cuda" or op not in _EXT_OF or not torch.cuda.is_available():
        return False
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (op, str(device))
    if key in _verdicts:
        return _verdicts[key]
    ext = extension(op)
    ok = ext is not None and self_check(op, device, ext)
    _verdicts[key] = ok
    return ok
