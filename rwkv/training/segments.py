"""The segment loop (TBPTT) of docs/design.md §3.4: samples of any length in `ctx_len` segments, state carried.

Modes (`bptt`):
* ``"truncated"`` — the state is detached at every boundary; each segment is forwarded and backwarded at
  once (constant memory, no recomputation).
* ``"full"`` — the exact gradient of the whole-sample loss: segments are first run without a graph,
  keeping only their start states; then they are walked in reverse, each recomputed from its stored
  start state with the gradient of the later segment's start state injected through
  ``Σ ⟨state_out, ∂L/∂state_out⟩``. Memory: one segment's activations plus the boundary states.
* an integer K — the gradient crosses the last K boundaries: the last K+1 segments form one exact group,
  earlier segments are truncated. K = 0 is ``truncated``; K ≥ n−1 is ``full``.

Loss = Σ w·CE over the micro-batch's learned tokens / their count (segments are not over-weighted).
Every backward goes through the `backward` callback, except the final one of a step when `defer_last`:
that tensor is returned, so the training framework performs it (one gradient reduction per step).
Segment counts can be padded (`n_segments`) with 1-token, fully masked segments so that every rank makes
the same number of forward and backward calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..model.state import detach_state, flatten_state, unflatten_state


@dataclass
class SampleResult:
    """What one micro batch produced. The sums stay on the model's device so that the segment loop never
    waits for the device; the caller reads them once per optimizer step."""

    loss_sum: torch.Tensor | float = 0.0  # Σ w·CE (no L2Wrap), for logging
    learned: torch.Tensor | float = 0.0  # Σ w
    tokens: int = 0  # tokens processed (real, unpadded segments)
    segments: int = 0
    segment_losses: dict = field(default_factory=dict, repr=False)  # segment → Σ w·CE (device scalar)
    deferred: torch.Tensor | None = field(default=None, repr=False)

    def first_nonfinite_segment(self) -> int | None:
        """Index of the first segment whose loss is NaN/inf (reads the device: for error reports only)."""
        bad = [i for i, v in self.segment_losses.items() if not torch.isfinite(v).item()]
        return min(bad) if bad else None


def segment_bounds(T: int, ctx_len: int) -> list[tuple[int, int]]:
    """Cut [0, T) into ctx_len segments; only the tail segment is shorter (no padding to ctx_len)."""
    return [(a, min(a + ctx_len, T)) for a in range(0, T, ctx_len)]


def bptt_groups(n_real: int, bptt, n_total: int | None = None) -> list[list[int]]:
    """Consecutive segment groups inside which the gradient crosses boundaries.

    Indices ≥ n_real are padding segments. The exact group always has min(K+1, n_total) members (padding
    fills it when the sample is short), so the number of forward calls, n_total + K, and of backward
    calls, n_total, do not depend on n_real: ranks with different sample lengths stay in step (ZeRO-3
    gathers parameters in every forward and backward).
    """
    n_total = max(n_total or 0, n_real)
    if bptt == "truncated":
        K = 0
    elif bptt == "full":
        K = n_total
    elif isinstance(bptt, int) and not isinstance(bptt, bool) and bptt >= 0:
        K = bptt
    else:
        raise ValueError(f"model.segments.bptt must be 'truncated', 'full' or an integer ≥ 0, got {bptt!r}")
    e = min(K + 1, n_total)
    if n_real >= e:
        return ([[i] for i in range(n_real - e)] + [list(range(n_real - e, n_real))]
                + [[i] for i in range(n_real, n_total)])
    return [list(range(e))] + [[i] for i in range(e, n_total)]


class StartStates:
    """The start states of an exact group: the incoming state, then one per recomputed segment, copied
    into slices of buffers allocated once (one per state tensor), read back as views.

    Why not a list of the model's state tensors: thousands of small long-lived tensors allocated between
    every segment's large temporaries fragment the CPU heap, and freed memory stops being reusable.
    Measured with bench/memory.py (1M tokens, 2048 segments): the list's 18 MiB of states grew peak RSS
    by 1.7 GiB; the buffers do not (docs/benchmarks.md "Memory"). The state stays a value: the buffers
    belong to this object, and the model never writes into a state it is given.
    """

    def __init__(self, initial, n: int):
        self.initial, self.n, self.count, self.bufs = initial, n, 0, None

    def append(self, state) -> None:
        flat = [t.detach() for t in flatten_state(state)]
        if self.bufs is None:
            self.bufs = [t.new_empty((self.n, *t.shape)) for t in flat]
        for buf, t in zip(self.bufs, flat):
            buf[self.count].copy_(t)
        self.count += 1

    def __getitem__(self, j: int):
        if j == 0:
            return self.initial
        if not 0 < j <= self.count:
            raise IndexError(j)
        return unflatten_state(buf[j - 1] for buf in self.bufs)


def _requires_grad_copy(state):
    return tuple(tuple(t.detach().requires_grad_() for t in layer) for layer in state)


def _inject(loss, state_out, grads):
    """loss + Σ ⟨state_out, g⟩: its backward adds the later segment's state gradient (exact BPTT)."""
    for layer_out, layer_g in zip(state_out, grads):
        for t, g in zip(layer_out, layer_g):
            if g is not None:
                loss = loss + (t * g.to(t.dtype)).sum()
    return loss


def run_sample(model, input_ids, loss_mask, ctx_len: int, bptt, loss_fn, backward, *, reset=None,
               scale: float = 1.0, n_segments: int | None = None, defer_last: bool = False) -> SampleResult:
    """Forward and backward of one micro-batch (rows of `input_ids` [B, L+1]) in segments.

    loss_fn(hidden, targets, weights) -> Σ w·CE (+ L2Wrap in backward), a scalar tensor.
    backward(tensor) performs a backward pass (strategy-aware, supplied by the caller).
    The loop never reads a value back from the device: a non-finite loss is found by the caller from
    `SampleResult.loss_sum` once per step (its NaN/inf propagates into the sum).
    """
    idx, targets = input_ids[:, :-1], input_ids[:, 1:]
    weights = loss_mask[:, 1:]
    rst = reset[:, :-1] if reset is not None else None
    B, T = idx.shape
    bounds = segment_bounds(T, ctx_len)
    n_real = len(bounds)
    n = max(n_real, n_segments or 0)
    learned = weights.sum(dtype=torch.float64 if weights.dtype == torch.float64 else torch.float32)
    factor = scale / learned.clamp(min=1.0)  # a device tensor: no host synchronisation
    res = SampleResult(loss_sum=learned.new_zeros(()), learned=learned, tokens=B * T, segments=n_real)

    def forward(i, state, with_loss: bool):
        if i < n_real:
            a, b = bounds[i]
            x, tg, wt, r = idx[:, a:b], targets[:, a:b], weights[:, a:b], (rst[:, a:b] if rst is not None else None)
        else:  # padding segment for rank synchronisation: one token, nothing learned
            x = idx.new_zeros(B, 1)
            tg, wt, r = x, weights.new_zeros(B, 1), None
        hidden, new_state = model(x, state, r, return_hidden=True)
        if not with_loss:
            return None, new_state
        loss_sum = loss_fn(hidden, tg, wt)
        if i < n_real:  # in an exact group a segment's loss is computed once (on recomputation)
            res.segment_losses[i] = loss_sum.detach()
            res.loss_sum = res.loss_sum + loss_sum.detach().to(res.loss_sum.dtype)
        return loss_sum * factor.to(loss_sum.dtype), new_state

    def do_backward(t, final: bool):  # final: the sample's last backward, which the caller may defer
        if final and defer_last:
            res.deferred = t
        else:
            backward(t)

    groups = bptt_groups(n_real, bptt, n)
    state = None
    for gi, group in enumerate(groups):
        last_group = gi == len(groups) - 1
        if len(group) == 1:
            loss, state = forward(group[0], state, True)
            do_backward(loss, last_group)
        else:
            state = _exact_group(forward, group, state, do_backward, last_group)
        state = detach_state(state)
    return res


def _exact_group(forward, group: list[int], state, backward, last_group: bool):
    """Exact BPTT over the segments `group`, starting from `state`: a forward without graph that keeps each
    segment's start state, then the segments recomputed with graph in reverse, each backward adding the
    gradient that the next segment sent to its end state. `backward(t, final)`; the group's first segment
    has its backward last, the sample's final one when this is the last group. Returns the end state."""
    starts = StartStates(state, len(group) - 1)
    with torch.no_grad():
        st = state
        for i in group[:-1]:
            _, st = forward(i, st, False)
            starts.append(st)
    s_in = _requires_grad_copy(starts[len(group) - 1])
    loss, end_state = forward(group[-1], s_in, True)
    backward(loss, False)
    grads = [[t.grad for t in layer] for layer in s_in]
    for j in range(len(group) - 2, -1, -1):
        first = j == 0
        # the group's first segment starts from the incoming state (None = zeros): no gradient to it
        s_in = detach_state(starts[0]) if first else _requires_grad_copy(starts[j])
        loss, st = forward(group[j], s_in, True)
        backward(_inject(loss, st, grads), last_group and first)
        if not first:
            grads = [[t.grad for t in layer] for layer in s_in]
    return end_state


@torch.no_grad()
def eval_sample(model, input_ids, loss_mask, ctx_len: int, loss_fn, reset=None,
                n_segments: int | None = None) -> SampleResult:
    """Loss of a micro-batch in segments with the state carried (validation). `n_segments` pads with
    1-token, fully masked segments like `run_sample`, so that every rank makes the same number of forward
    calls (ZeRO-3 gathers parameters collectively in each)."""
    idx, targets, weights = input_ids[:, :-1], input_ids[:, 1:], loss_mask[:, 1:]
    rst = reset[:, :-1] if reset is not None else None
    learned = weights.sum(dtype=torch.float64 if weights.dtype == torch.float64 else torch.float32)
    res = SampleResult(loss_sum=learned.new_zeros(()), learned=learned, tokens=idx.numel())
    bounds = segment_bounds(idx.shape[1], ctx_len)
    state = None
    for a, b in bounds:
        hidden, state = model(idx[:, a:b], state, rst[:, a:b] if rst is not None else None, return_hidden=True)
        res.loss_sum = res.loss_sum + loss_fn(hidden, targets[:, a:b], weights[:, a:b]).to(res.loss_sum.dtype)
        res.segments += 1
    for _ in range(len(bounds), max(n_segments or 0, len(bounds))):  # padding: nothing learned
        x = idx.new_zeros(idx.shape[0], 1)
        hidden, state = model(x, state, None, return_hidden=True)
        res.loss_sum = res.loss_sum + loss_fn(hidden, x, weights.new_zeros(x.shape)).to(res.loss_sum.dtype)
    return res
