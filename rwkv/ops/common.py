"""Shared helpers of the WKV backends: dtypes, zero states, padding, argument checks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """WKV math runs in fp32 (fp64 when the inputs are fp64, for tight reference tests); spec §3.4."""
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
