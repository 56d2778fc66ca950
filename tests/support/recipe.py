"""The official training objective written from the specification alone (docs/model-spec.md §1.5), as an
independent oracle for the trainer's fused, segmented, accumulated loss.

Nothing here imports the trainer's loss code: the logits come from the model's ordinary forward over the
whole, unsegmented sample; the loss is torch's mean cross-entropy over the learned positions; and L2Wrap is
the official autograd function, applied to exactly the rows that are learned (so its "B·T" is their count).
"""

import torch
import torch.nn.functional as F


class SpecL2Wrap(torch.autograd.Function):
    """Forward: the loss, unchanged. Backward: the loss gets g; the logits get g·1e-4/rows·max-logit at each
    row's arg-max (rows = y.shape[0], the official B·T, unless the rows of the whole sample are given
    because `y` holds only one segment's), zero elsewhere."""

    @staticmethod
    def forward(ctx, loss, y, rows=None):
        ctx.save_for_backward(y)
        ctx.rows = rows or y.shape[0]
        return loss

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        factor = 1e-4 / ctx.rows
        mx, ids = torch.max(y, -1, keepdim=True)
        gy = torch.zeros_like(y)
        gy.scatter_(-1, ids, mx * factor)
        return g, gy * g, None


def spec_loss(model, input_ids, loss_mask, reset=None):
    """Mean CE over the learned positions of `input_ids` [B, L+1] plus L2Wrap over those rows."""
    rst = reset[:, :-1] if reset is not None else None
    logits, _ = model(input_ids[:, :-1], None, rst)
    learned = loss_mask[:, 1:] > 0
    y = logits[learned]  # [n_learned, V]
    loss = F.cross_entropy(y, input_ids[:, 1:][learned])
    return SpecL2Wrap.apply(loss, y)


def spec_grads(model, micro_batches):
    """Gradients of the mean over micro batches of spec_loss (gradient accumulation as the official
    trainer's Lightning accumulation does it: each micro batch's loss divided by their number)."""
    model.zero_grad(set_to_none=True)
    for mb in micro_batches:
        (spec_loss(model, mb["input_ids"], mb["loss_mask"], mb.get("reset")) / len(micro_batches)).backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def spec_truncated_grads(model, micro_batches, ctx: int):
    """Truncated BPTT written out: each micro batch in windows of `ctx` tokens, the state detached between
    windows, one backward per window of its share of the micro batch's objective (its rows' CE summed over
    the micro batch's learned count n, and L2Wrap at 1e-4/n), micro batches averaged."""
    model.zero_grad(set_to_none=True)
    for mb in micro_batches:
        ids, mask, reset = mb["input_ids"], mb["loss_mask"], mb.get("reset")
        learned_all = mask[:, 1:] > 0
        n = int(learned_all.sum())
        state, T = None, ids.shape[1] - 1
        for a in range(0, T, ctx):
            b = min(a + ctx, T)
            rst = reset[:, a:b] if reset is not None else None
            logits, state = model(ids[:, a:b], state, rst)
            learned = learned_all[:, a:b]
            if learned.any():
                y = logits[learned]
                loss = F.cross_entropy(y, ids[:, a + 1:b + 1][learned], reduction="sum") / n
                (SpecL2Wrap.apply(loss, y, n) / len(micro_batches)).backward()
            state = tuple(tuple(t.detach() for t in layer) for layer in state)
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_relative_close(got: dict, want: dict, rel: float):
    """Every parameter's gradient within `rel` of the reference, relative to that gradient's largest entry."""
    assert got.keys() == want.keys(), sorted(set(got) ^ set(want))
    for name in want:
        scale = want[name].abs().max().clamp(min=1e-300)
        err = ((got[name] - want[name]).abs().max() / scale).item()
        assert err <= rel, f"{name}: relative error {err:.3e} > {rel:.0e}"
