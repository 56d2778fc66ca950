"""Backend dispatch for the WKV ops (docs/design.md §3.1).

`auto` chooses `cuda` only for CUDA tensors whose kernel is built and passed its one-time self-check
against `chunked` on that device; `cpu` (the C recurrence, wkv7 only) for CPU tensors that are not fp64
when its library built and passed its self-check; otherwise `chunked`. fp64 stays on `chunked`: it is
the dtype of the tight reference tests, and the C kernel computes in fp32. The choice is logged once
per op and device.
Modules are imported lazily so that importing `rwkv.ops` builds nothing.
"""

from __future__ import annotations

import importlib
import logging

import torch

from .common import check_inputs

log = logging.getLogger("rwkv.ops")

# op -> backend -> "module:function" (relative to rwkv.ops)
_IMPLS = {
    "wkv7": {"reference": "wkv7_reference:wkv7_reference", "chunked": "wkv7_chunked:wkv7_chunked",
             "cuda": "cuda_backend:wkv7_cuda", "cpu": "cpu_backend:wkv7_cpu"},
    "wkv6": {"reference": "wkv6_reference:wkv6_reference", "chunked": "wkv6_chunked:wkv6_chunked",
             "cuda": "cuda_backend:wkv6_cuda"},
    "wkv5": {"reference": "wkv6_reference:wkv5_reference", "chunked": "wkv6_chunked:wkv5_chunked",
             "cuda": "cuda_backend:wkv5_cuda"},
}
_logged: set = set()


def available_backends(op: str = "wkv7") -> list[str]:
    return list(_IMPLS[op])


def _load(op: str, backend: str):
    try:
        spec = _IMPLS[op][backend]
    except KeyError:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose one of "
                         f"{['auto', *_IMPLS[op]]}") from None
    module, fn = spec.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), fn)


def resolve(op: str, backend: str, device, dtype=None) -> str:
    """Turn `auto` into a concrete backend name for tensors on `device` of `dtype`."""
    if backend != "auto":
        return backend
    choice = "chunked"
    if device.type == "cuda":
        from . import cuda_backend  # imported only for CUDA tensors; builds lazily, never at import

        if cuda_backend.ready(op, device):
            choice = "cuda"
    elif device.type == "cpu" and "cpu" in _IMPLS[op] and dtype != torch.float64:
        from . import cpu_backend  # compiles on first use (well under a second), never at import

        if cpu_backend.ready():
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
