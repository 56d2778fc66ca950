"""Shared helpers of the WKV backends: dtypes, zero states, padding, argument checks."""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """WKV math runs in fp32 (fp64 when the inputs are fp64, for tight reference tests); docs/model-spec.md §3.4."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def zero_state(B: int, H: int, N: int, dtype=torch.float32, device=None) -> torch.Tensor:
    return torch.zeros(B, H, N, N, dtype=dtype, device=device)


def check_inputs(name: str, tensors: dict, state, reset) -> None:
    """Validate shapes once, so a wrong call fails with a readable message instead of a broadcast error."""
    ref_name, ref = next(iter(tensors.items()))
    if ref.dim() != 4:
        raise ValueError(f"{name}: `{ref_name}` must be [B, T, H, N], got shape {tuple(ref.shape)}")
    B, T, H, N = ref.shape
    if T < 1:
        raise ValueError(f"{name}: T must be >= 1, got {T}")
    for key, t in tensors.items():
        if t.shape != ref.shape:
            raise ValueError(f"{name}: `{key}` has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
    if state is not None and tuple(state.shape) != (B, H, N, N):
        raise ValueError(f"{name}: state has shape {tuple(state.shape)}, expected {(B, H, N, N)}")
    if reset is not None and (tuple(reset.shape) != (B, T) or reset.dtype != torch.bool):
        raise ValueError(f"{name}: reset must be a bool tensor of shape {(B, T)}, "
                         f"got {reset.dtype} {tuple(reset.shape)}")


def pad_time(x: torch.Tensor, T_pad: int, value: float = 0.0) -> torch.Tensor:
    """Pad [B, T, ...] at the end of the time axis to T_pad."""
    T = x.shape[1]
    if T_pad == T:
        return x
    pad = [0, 0] * (x.dim() - 2) + [0, T_pad - T]
    return F.pad(x, pad, value=value)


def check_log_decay(op: str, w: torch.Tensor, lower: float | None = None, hint: str = "") -> None:
    """Refuse a log-decay λ that is not finite, above 0 or (with `lower`) below `lower`, naming what to pass.
    One min/max pass on CPU; skipped for CUDA tensors, where it would sync the device on every call."""
    if w.is_cuda:
        return
    lo, hi = (float(t) for t in torch.aminmax(w.detach()))
    if math.isfinite(lo) and hi <= 0 and (lower is None or lo >= lower):  # NaN fails every comparison
        return
    allowed = f"lie in [{lower}, 0]" if lower is not None else "be finite and <= 0"
    raise ValueError(f"{op}: log-decay w must {allowed} (RWKV-7 clamps it to (-0.6066, 0), docs/model-spec.md §1.3); "
                     f"got min {lo:.4g}, max {hi:.4g}. Pass the log-decay λ, not the raw ω or the decay "
                     f"exp(λ){hint}.")


def cpu_or_reference(op: str, kernel: str, backend: str, fast_ok: bool) -> str:
    """The backend of a fused elementwise op (`auto` | `reference` | `cpu`) as "cpu" or "reference": `auto`
    takes the C kernel `kernel` only for inputs it handles (`fast_ok`) and once it passed its self-check."""
    if backend not in ("auto", "reference", "cpu"):
        raise ValueError(f"{op}: unknown backend {backend!r}; choose auto, reference or cpu")
    if backend != "auto":
        return backend
    if not fast_ok:
        return "reference"
    from . import cpu_backend  # compiles on first use, never at import

    return "cpu" if cpu_backend.ready(kernel) else "reference"


def run_isolated(fn, device="cpu"):
    """Run a kernel self-check `fn()` in a thread of its own and return its result (or raise its error).

    The first call of an op, and so its one-time check, may come from evaluation code (inference mode,
    no_grad), from under autocast, or from inside a `torch.utils.checkpoint` block (grad_cp), whose
    saved-tensor hooks would count the check's tensors and then miss them on recomputation
    ("CheckpointError: a different number of tensors was saved"). All of these are thread-local state: a
    fresh thread starts from defaults, and the check sets grad mode and autocast explicitly as well. The
    current CUDA device is per thread too: it is set to the caller's `device`.
    """
    device = torch.device(device)
    box = {}

    def target():
        try:
            with torch.enable_grad(), torch.autocast(device.type, enabled=False):
                if device.type == "cuda" and device.index is not None:
                    torch.cuda.set_device(device)
                box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name="rwkv-self-check")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
