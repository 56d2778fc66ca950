"""Shared helpers of the op backends: dtypes, zero states, padding, argument checks, the calling convention
of the C kernels, and the comparisons the first-use self-checks make."""

from __future__ import annotations

import ctypes
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

log = logging.getLogger("rwkv.ops")
_warned: set = set()
_lock = threading.Lock()
_pool = None


def warn_once(key, msg, *args, level=logging.WARNING):
    if key not in _warned:
        _warned.add(key)
        log.log(level, msg, *args)


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


# ------------------------------------------------------------------------------ calling the C kernels
def ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def n_parts(total: int) -> int:
    return max(1, min(torch.get_num_threads(), total))


def run_parts(lib, fn, total, args):
    """fn(*args, nparts, part) over n_parts(total) ranges (csrc/parts.h): one call that runs them all on
    OpenMP threads when the library has OpenMP, else one call per part on a Python thread pool (ctypes
    drops the GIL during the call)."""
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


# ----------------------------------------------------------------------------------- self-check helpers
def compare_fp64(kernel_fn, reference_fn, inputs: dict, upstream: list, out_names: tuple, tol: float):
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


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double(), ref.detach().double()
    return float((got - ref).abs().max()) / max(float(ref.abs().max()), 1e-30)


def kernel_dtype(x: torch.Tensor) -> torch.dtype:
    """The CUDA kernels' dtype: bf16 inputs run the bf16 kernel; everything else (fp16, fp32, fp64) fp32."""
    return torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32


def reset_mask(B, T, device, interval):
    """Document starts mid-interval and on an interval boundary, in the last batch row only."""
    rst = torch.zeros(B, T, dtype=torch.bool, device=device)
    for t in (5, interval, 2 * interval + 3):
        if t < T:
            rst[B - 1, t] = True
    return rst


def compare_with_oracle(oracle, ext_fn, inputs, n_in, dy, dsT, dtype, reset, round_mask):
    """Run `ext_fn` and the oracle (fp64) on the same dtype-rounded inputs; outputs and gradients of both."""
    # Inputs that the kernel stores in `dtype` are rounded once, so both sides see the same numbers.
    inputs = [x.to(dtype).double() if rnd else x for x, rnd in zip(inputs, round_mask)]
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
