"""The one dispatcher of the ops (docs/design.md §3.1): it turns `backend=` into an implementation and runs
the first-use self-checks of the native kernels.

WKV (`wkv7`, `wkv6`, `wkv5`; backends `reference`, `chunked`, `cuda` and, for wkv7, `cpu`): `auto` chooses
`cuda` only for CUDA tensors whose kernel is built and passed its one-time self-check against `chunked`
on that device; `cpu` (the C recurrence, wkv7 only) for CPU tensors that are not fp64 when its library
built and passed its self-check; otherwise `chunked`. fp64 stays on `chunked`: it is the dtype of the
tight reference tests, and the C kernel computes in fp32. The choice is logged once per op and device.

Fused elementwise ops (`token_shift_mix`, `wkv7_keys`; backends `auto`, `reference`, `cpu`): `auto` takes
the C kernel for the inputs it handles, once it passed its self-check.

Each op lives in its own folder beside its reference (v7/, v6/ with wkv5, mix/, keys/); the native code is
built by build.py. Modules are imported lazily so that importing `rwkv.ops` builds nothing.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence

import torch

from .common import check_inputs, run_isolated, warn_once

log = logging.getLogger("rwkv.ops")

# op -> backend -> "module:function" (relative to rwkv.ops)
_IMPLS = {
    "wkv7": {"reference": "v7.reference:wkv7_reference", "chunked": "v7.chunked:wkv7_chunked",
             "cuda": "v7.cuda:wkv7_cuda", "cpu": "v7.cpu:wkv7_cpu"},
    "wkv6": {"reference": "v6.reference:wkv6_reference", "chunked": "v6.chunked:wkv6_chunked",
             "cuda": "v6.cuda:wkv6_cuda"},
    "wkv5": {"reference": "v6.reference:wkv5_reference", "chunked": "v6.chunked:wkv5_chunked",
             "cuda": "v6.cuda:wkv5_cuda"},
}
# C kernel -> "module:self_check" (relative to rwkv.ops); all of them live in build.py's one library
_C_CHECKS = {"wkv7": "v7.cpu:self_check", "mix": "mix.cpu:self_check", "keys": "keys.cpu:self_check"}
# op -> "module:check" of the CUDA kernel (relative to rwkv.ops)
_CUDA_CHECKS = {"wkv7": "v7.cuda:check", "wkv6": "v6.cuda:check", "wkv5": "v6.cuda:check_v5"}
# CUDA self-check tolerances: max |cuda − chunked(fp64)| / max |chunked(fp64)| per tensor. fp32: the
# v7 back-stepping division amplifies rounding by up to 1.83 per step for ≤ 15 steps (docs/model-spec.md §3.1);
# the CPU emulations of the kernels (tests/ops/cuda_wkv{7,6}_emulation.py) measured ≤ 2e-5 (v7) and
# ≤ 2e-7 (v6) on the self-check inputs, and 6e-4 for v7 with every λ at the clamp (the worst case).
# bf16: y and the gradients are rounded to bf16 on output (relative step 2^-8).
CUDA_SELF_CHECK_TOL = {torch.float32: 1e-3, torch.bfloat16: 3e-2}

_logged: set = set()
_cpu_verdicts: dict = {}  # C kernel -> self-check result
_cuda_verdicts: dict = {}  # (op, device string) -> self-check result


def available_backends(op: str = "wkv7") -> list[str]:
    return list(_IMPLS[op])


def _attr(spec: str):
    module, fn = spec.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), fn)


def _load(op: str, backend: str):
    try:
        spec = _IMPLS[op][backend]
    except KeyError:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose one of "
                         f"{['auto', *_IMPLS[op]]}") from None
    return _attr(spec)


def resolve(op: str, backend: str, device, dtype=None) -> str:
    """Turn `auto` into a concrete backend name for tensors on `device` of `dtype`."""
    if backend != "auto":
        return backend
    choice = "chunked"
    if device.type == "cuda":
        if cuda_ready(op, device):  # builds lazily, never at import
            choice = "cuda"
    elif device.type == "cpu" and "cpu" in _IMPLS[op] and dtype != torch.float64:
        if cpu_ready("wkv7"):  # compiles on first use (well under a second), never at import
            choice = "cpu"
    key = (op, str(device), choice)
    if key not in _logged:
        _logged.add(key)
        log.info("%s: using the %s backend on %s", op, choice, device)
    return choice


def _run(op, backend, args: tuple, checked: dict, state, reset, **kw):
    """Validate the [B,T,H,N] inputs named in `checked`, then call the backend with `args` as given."""
    check_inputs(op, checked, state, reset)
    first = args[0]
    fn = _load(op, resolve(op, backend, first.device, first.dtype))
    y, s = fn(*args, state=state, reset=reset, **kw)
    return y.to(first.dtype), s


def wkv7(r, w, k, v, a, b, state=None, reset=None, backend: str = "auto", **kw):
    """RWKV-7 WKV (docs/model-spec.md §1.3). See the package docstring for the contract."""
    return _run("wkv7", backend, (r, w, k, v, a, b), dict(r=r, w=w, k=k, v=v, a=a, b=b), state, reset, **kw)


def wkv6(r, w, k, v, u, state=None, reset=None, backend: str = "auto", **kw):
    """RWKV-6 WKV (docs/model-spec.md §2.1): y_t = r_tᵀ(S + diag(u) k_t v_tᵀ), S = diag(e^{λ_t}) S + k_t v_tᵀ.

    `w` is the per-token log-decay λ = −exp(ω) ≤ 0 [B,T,H,N] (unbounded below), `u` the bonus [H,N],
    `state` [B,H,N(key),N(value)] (key-major, the pip layout for v5/v6).
    """
    return _run("wkv6", backend, (r, w, k, v, u), dict(r=r, w=w, k=k, v=v), state, reset, **kw)


def wkv5(r, w, k, v, u, state=None, reset=None, backend: str = "auto", **kw):
    """RWKV-5.2 WKV (docs/model-spec.md §2.2): as `wkv6` with a time-invariant log-decay `w` of shape [H,N]."""
    return _run("wkv5", backend, (r, w, k, v, u), dict(r=r, k=k, v=v), state, reset, **kw)


# ------------------------------------------------------------------------------ fused elementwise ops
def cpu_or_reference(op: str, kernel: str, backend: str, fast_ok: bool) -> str:
    """The backend of a fused elementwise op (`auto` | `reference` | `cpu`) as "cpu" or "reference": `auto`
    takes the C kernel `kernel` only for inputs it handles (`fast_ok`) and once it passed its self-check."""
    if backend not in ("auto", "reference", "cpu"):
        raise ValueError(f"{op}: unknown backend {backend!r}; choose auto, reference or cpu")
    if backend != "auto":
        return backend
    if not fast_ok:
        return "reference"
    return "cpu" if cpu_ready(kernel) else "reference"  # compiles on first use, never at import


def token_shift_mix(x, x_prev, reset, mixes: Sequence[torch.Tensor], backend: str = "auto") -> list[torch.Tensor]:
    """The mixes of `x` with its shifted self (rwkv/ops/mix/reference.py); `backend` is `auto`, `reference`
    or `cpu`."""
    fast_ok = (x.device.type == "cpu" and x.dtype == torch.float32 and x_prev.dtype == x.dtype
               and all(m.dtype == x.dtype and m.numel() == x.shape[-1] for m in mixes))
    if cpu_or_reference("token_shift_mix", "mix", backend, fast_ok) == "cpu":
        from .mix.cpu import token_shift_mix_cpu

        return token_shift_mix_cpu(x, x_prev, reset, mixes)
    from .mix.reference import token_shift_mix_reference

    return token_shift_mix_reference(x, x_prev, reset, mixes)


def wkv7_keys(k, a, k_k, k_a, n_head: int, backend: str = "auto"):
    """RWKV-7's key preparation (rwkv/ops/keys/reference.py); `backend` is `auto`, `reference` or `cpu`."""
    fast_ok = (k.device.type == "cpu" and all(t.dtype == torch.float32 for t in (k, a, k_k, k_a))
               and a.shape == k.shape and k_k.numel() == k_a.numel() == k.shape[-1])
    if cpu_or_reference("wkv7_keys", "keys", backend, fast_ok) == "cpu":
        from .keys.cpu import wkv7_keys_cpu

        return wkv7_keys_cpu(k, a, k_k, k_a, n_head)
    from .keys.reference import wkv7_keys_reference

    return wkv7_keys_reference(k, a, k_k, k_a, n_head)


# ------------------------------------------------------------------------------- C kernels: readiness
def cpu_self_check(lib, op: str = "wkv7") -> tuple[bool, str]:
    """The self-check of C kernel `op` ("wkv7", "mix" or "keys") against its fp64 reference: (ok, errors)."""
    if op not in _C_CHECKS:
        raise ValueError(f"self_check: unknown op {op!r}; choose wkv7, mix or keys")
    return _attr(_C_CHECKS[op])(lib)


def cpu_ready(op: str = "wkv7") -> bool:
    """True when the C library is built and `op` ("wkv7", "mix" or "keys") passed its self-check (once per
    process)."""
    if op not in _cpu_verdicts:
        from . import build  # compiles on first use, never at import

        lib = build.library()
        if lib is None:
            _cpu_verdicts[op] = False
        else:
            try:
                ok, detail = cpu_self_check(lib, op)
            except Exception as e:  # noqa: BLE001 - a crashing check is a failed check
                ok, detail = False, f"{type(e).__name__}: {e}"
            if not ok:
                warn_once(("check", op), "%s: the C CPU kernel failed its self-check against the fp64 "
                          "reference (%s); using the PyTorch path", op, detail)
            _cpu_verdicts[op] = ok
    return _cpu_verdicts[op]


# ---------------------------------------------------------------------------- CUDA kernels: readiness
def oracle(op: str):
    """`chunked` (docs/design.md §3), or the per-token reference if the chunked module cannot be imported."""
    try:
        return "chunked", _load(op, "chunked")
    except ImportError:
        return "reference", _load(op, "reference")


def cuda_or_fallback(op, with_fn, r, *args, state=None, reset=None, **kw):
    """Run `with_fn(ext, r, *args)` on the built extension of `op`; other head sizes than build.HEAD_SIZE and
    CPU tensors go to the oracle instead (warned once), so that `auto` never fails for a model the kernel was
    not compiled for."""
    from . import build

    if r.shape[-1] != build.HEAD_SIZE or not r.is_cuda:
        warn_once(("shape", op, r.shape[-1], r.device.type),
                  "%s: the cuda kernel is compiled for head size %d on CUDA tensors; got head size "
                  "%d on %s, using %s", op, build.HEAD_SIZE, r.shape[-1], r.device, oracle(op)[0])
        name, fn = oracle(op)
        return fn(r, *args, state=state, reset=reset, **(kw if name == "chunked" else {}))
    ext = build.extension(op)
    if ext is None:
        raise RuntimeError(f"{op}: backend='cuda' requested but the extension is unavailable: "
                           f"{build._extensions.get(build.EXT_OF[op])}. Use backend='auto' or 'chunked'.")
    return with_fn(ext, r, *args, state=state, reset=reset)


def cuda_self_check(op: str, device, ext) -> bool:
    """One-time check of `ext` on `device` against the oracle: fp32 with and without reset, and bf16."""
    if op not in _CUDA_CHECKS:
        return False
    check = _attr(_CUDA_CHECKS[op])
    worst = (0.0, "", None)
    cases = ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False))
    try:
        # The first call may come from evaluation code or from inside a grad_cp block: the check runs in a
        # thread of its own, with autograd and without autocast (common.run_isolated).
        results = run_isolated(lambda: [check(ext, device, dtype=d, reset=r) for d, r in cases], device)
    except Exception as e:  # noqa: BLE001 - a crashing kernel must not break training: use chunked
        log.error("%s: cuda self-check raised on %s (%s: %s); using chunked", op, device,
                  type(e).__name__, e)
        return False
    for (dtype, reset), errs in zip(cases, results):
        tol = CUDA_SELF_CHECK_TOL[dtype]
        key = max(errs, key=errs.get)
        if not errs[key] <= tol:  # also catches NaN
            log.error("%s: cuda self-check FAILED on %s (%s, reset=%s): max relative error "
                      "%.3g in %s > tolerance %.1g vs %s; using chunked. All errors: %s",
                      op, device, dtype, reset, errs[key], key, tol, oracle(op)[0],
                      {k: f"{e:.2g}" for k, e in errs.items()})
            return False
        if errs[key] / tol > worst[0]:
            worst = (errs[key] / tol, key, dtype)
    log.info("%s: cuda self-check passed on %s vs %s (worst: %s %s at %.2f of tolerance)",
             op, device, oracle(op)[0], worst[1], worst[2], worst[0])
    return True


def cuda_ready(op: str, device) -> bool:
    """True when `op`'s kernel is built and passed its self-check on `device` (cached per op, device).

    False at once for non-CUDA devices or without CUDA; never raises."""
    from . import build  # builds on first use, never at import

    device = torch.device(device)
    if device.type != "cuda" or op not in build.EXT_OF or not torch.cuda.is_available():
        return False
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (op, str(device))
    if key in _cuda_verdicts:
        return _cuda_verdicts[key]
    ext = build.extension(op)
    ok = ext is not None and cuda_self_check(op, device, ext)
    _cuda_verdicts[key] = ok
    return ok
