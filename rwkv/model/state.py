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


def wkv_from_initial(kernel, seqs, S, reset, S0, **kw):
    """`kernel(*seqs, state=S, reset=reset, **kw)` where the WKV state is `S0` [H,N,N] (a learned initial
    state, state tuning) instead of zeros before the first token of a sample (S is None) and before every
    token where `reset` [B,T] starts a packed document.

    The kernels can only zero the state at a reset, so the time axis is cut at the columns where any row
    resets and each piece runs from its start state: S0 for the rows that reset there, the carried state
    for the others. Exact (the same recurrence), one kernel call per reset column; the columns are read
    from the device once per call, only when S0 and reset are both given.
    """
    if S0 is None:
        return kernel(*seqs, state=S, reset=reset, **kw)
    B, T = seqs[0].shape[:2]
    # a segment that starts from a carried state and has no reset would leave S0 out of its graph; under
    # truncated BPTT its loss would then reach no trainable tensor (backward fails) and DDP would wait for
    # a gradient that never comes. A zero-weighted term keeps S0 in every graph (gradient 0 from there).
    tie = S0.flatten()[0] * 0 if S0.requires_grad and torch.is_grad_enabled() else None
    S0 = S0.to(torch.float64 if seqs[0].dtype == torch.float64 else torch.float32)
    S0 = S0.unsqueeze(0).expand(B, *S0.shape)
    if S is None:
        S = S0.contiguous()
    cols = [] if reset is None else torch.nonzero(reset.any(0)).flatten().tolist()
    cuts = sorted(set([0, *cols, T]))
    ys = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        if reset is not None and a in cols:
            S = torch.where(reset[:, a].view(B, 1, 1, 1), S0, S)
        y, S = kernel(*(t[:, a:b] for t in seqs), state=S, reset=None, **kw)
        ys.append(y)
    y = ys[0] if len(ys) == 1 else torch.cat(ys, 1)
    return (y if tie is None else y + tie.to(y.dtype)), S
