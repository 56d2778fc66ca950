"""Recurrent state as a value (docs/design.md §3, docs/model-spec.md §1.3 / §3.5).

A state is a tuple with one entry per layer; each entry is `(att_x_prev [B,C], wkv [B,H,N,N] fp32,
ffn_x_prev [B,C])`. For x070 the WKV state is [value, key] (pip's layout); for x060/x052 it is
[key, value] (pip's layout for those versions), so a state converts to and from the `rwkv` pip state
list without transposes. Nothing here mutates a state in place.
"""

from __future__ import annotations

import torch

LayerState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
State = tuple[LayerState, ...]


def zero_state(cfg, batch: int, device=None, dtype=torch.float32) -> State:
    """All-zero state: x_prev in the activation dtype, WKV in fp32 (docs/model-spec.md §3.4: state stays fp32)."""
    C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
    return tuple(
        (torch.zeros(batch, C, device=device, dtype=dtype),
         torch.zeros(batch, H, N, N, device=device, dtype=torch.float32),
         torch.zeros(batch, C, device=device, dtype=dtype))
        for _ in range(cfg.n_layer))


def detach_state(state: State | None) -> State | None:
    if state is None:
        return None
    return tuple(tuple(t.detach() for t in layer) for layer in state)


def flatten_state(state: State) -> list[torch.Tensor]:
    return [t for layer in state for t in layer]


def unflatten_state(tensors) -> State:
    tensors = list(tensors)
    return tuple(tuple(tensors[i:i + 3]) for i in range(0, len(tensors), 3))


def to_pip_state(state: State, index: int = 0) -> list[torch.Tensor]:
    """One batch row as the `rwkv` pip state list: [att_x_prev (C), S (H,N,N), ffn_x_prev (C)] per layer."""
    return [t[index].detach().float().clone() for t in flatten_state(state)]


def from_pip_state(tensors, dtype=torch.float32) -> State:
    """The inverse of `to_pip_state` (batch of one)."""
    out = []
    for i, t in enumerate(tensors):
        t = torch.as_tensor(t)
        out.append(t.float()[None] if i % 3 == 1 else t.to(dtype)[None])
    return unflatten_state(out)
