"""WKV kernels: one signature per RWKV version, interchangeable backends (docs/design.md §3).

`wkv7(r, w, k, v, a, b, state=None, reset=None, backend="auto") -> (y, state)`

* inputs `[B, T, H, N]`, any T ≥ 1; `w` is the log-decay λ ≤ 0 (not ω, not exp(λ));
* `state` `[B, H, N, N]` in [value, key] layout (the `rwkv` pip layout), fp32 (fp64 for fp64 inputs);
* `reset` optional bool `[B, T]`: the state is zeroed before token t (a packed document starts there);
* returns y in the input dtype and the final state in the compute dtype; autograd reaches every input
  including `state`.

Backends: `reference` (per-token loop, the spec), `chunked` (docs/model-spec.md §3.4, fp64 on CPU and the fallback
everywhere), `cuda` (CUDA kernels in rwkv/ops/csrc/) and, for wkv7, `cpu` (the recurrence in C, same folder); `auto`
uses `cuda` or `cpu` only after their one-time self-check against `chunked`.

Layout: one folder per op with its reference beside the fast paths (v7/, v6/ which also holds wkv5, mix/,
keys/), one dispatcher (dispatch.py), one build helper for the C and CUDA code (build.py).
"""

from .dispatch import available_backends, wkv5, wkv6, wkv7

__all__ = ["wkv7", "wkv6", "wkv5", "available_backends"]
