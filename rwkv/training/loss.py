"""Token-weighted cross-entropy with L2Wrap (docs/model-spec.md §1.5), fused with the head projection.

`head_ce_l2wrap(hidden, head_weight, targets, weights)` returns S = Σ_t w_t·CE_t, a *sum*: the caller
divides it by n, the number of learned tokens of the micro batch, to get the mean CE the official trainer
optimises. L2Wrap adds, in backward only, g·1e-4·w_t·max-logit at the arg-max of every row, where g is the
upstream gradient of S. Since the caller's division makes g = 1/n (times any accumulation or loss scale),
each learned row receives exactly the official g'·1e-4/n·max-logit on top of the gradient of the mean CE —
"1e-4/(B·T)" with B·T replaced by the tokens that are actually learned, and scaled by the upstream gradient
(the original Python version forgot it; docs/model-spec.md §1.5). The penalty must therefore not be divided by n here as
well: that made it n× too weak (128× at 128 learned tokens).

The fused path never materialises the full [rows, V] logits for backward: rows are processed in blocks,
and each block's gradients w.r.t. hidden and head weight are formed right away and kept (the official
trainer's "head + L2Wrap + CE" kernel does the same, docs/model-spec.md §1.5). Backward then just scales them by g.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

L2WRAP_FACTOR = 1e-4  # docs/model-spec.md §1.5
ROW_BLOCK = 2048  # rows per block: bounds the [block, V] fp32 logits buffer (2048 × 65536 × 4 B = 512 MiB)


def _block_rows(V: int) -> int:
    return max(64, min(ROW_BLOCK, (1 << 27) // max(V, 1)))  # ≤ 512 MiB of fp32 logits per block


class _HeadCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, weights, l2_scale, compute_dtype, need_grad, need_grad_w):
        rows, C = hidden.shape
        V = weight.shape[0]
        w_mm = weight.to(compute_dtype)
        grad_h = torch.empty(rows, C, dtype=hidden.dtype, device=hidden.device) if need_grad else None
        # a frozen head (PEFT) needs no [V, C] gradient: forming it, saving it and scaling it in backward
        # were three head-sized buffers (3 × 192 MiB at the 0.1B World shape) at the step's memory peak
        grad_w = torch.zeros(V, C, dtype=torch.float64 if compute_dtype == torch.float64 else torch.float32,
                             device=hidden.device) if need_grad and need_grad_w else None
        acc = torch.float64 if compute_dtype == torch.float64 else torch.float32  # fp64 for exact tests
        total = hidden.new_zeros((), dtype=acc)
        step = _block_rows(V)
        for s in range(0, rows, step):
            h = hidden[s:s + step].to(compute_dtype)
            logits = (h @ w_mm.T).to(acc)
            wt = weights[s:s + step].to(acc)
            tg = targets[s:s + step]
            # log-sum-exp by hand, in place: one max pass, one exp pass reused for the gradient
            # (torch.logsumexp allocates a second [block, V] buffer and exponentiates again)
            mx, arg = logits.max(dim=-1)
            tgt = logits.gather(1, tg[:, None]).squeeze(1)
            g = logits.sub_(mx[:, None]).exp_()
            se = g.sum(dim=-1)
            total += (wt * (mx + se.log() - tgt)).sum()
            if not need_grad:
                continue
            # d(Σ w·CE)/dlogits = w·(softmax − onehot); L2Wrap adds l2_scale·w·max at the arg-max (§1.5)
            g.mul_((wt / se)[:, None])
            g.scatter_add_(1, tg[:, None], -wt[:, None])
            g.scatter_add_(1, arg[:, None], (l2_scale * wt * mx)[:, None])
            g = g.to(compute_dtype)
            grad_h[s:s + step] = (g @ w_mm).to(hidden.dtype)
            if grad_w is None:
                continue
            if grad_w.dtype == g.dtype:
                grad_w.addmm_(g.T, h)  # accumulate in place: no [V, C] temporary per block
            else:
                grad_w += (g.T @ h).to(grad_w.dtype)
        if need_grad:
            ctx.has_grad_w = grad_w is not None
            ctx.save_for_backward(grad_h, *([grad_w.to(weight.dtype)] if grad_w is not None else []))
        return total

    @staticmethod
    def backward(ctx, g):
        grad_h, *rest = ctx.saved_tensors
        grad_w = rest[0] * g.to(rest[0].dtype) if ctx.has_grad_w else None
        return grad_h * g.to(grad_h.dtype), grad_w, None, None, None, None, None, None


def head_ce_l2wrap(hidden, head_weight, targets, weights, l2wrap: bool = True):
    """Fused head projection + weighted CE sum + L2Wrap. hidden [B,T,C], targets/weights [B,T]."""
    C = hidden.shape[-1]
    compute_dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(
        hidden.device.type) else head_weight.dtype
    l2_scale = L2WRAP_FACTOR if l2wrap else 0.0
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or head_weight.requires_grad)
    return _HeadCE.apply(hidden.reshape(-1, C), head_weight, targets.reshape(-1), weights.reshape(-1),
                         l2_scale, compute_dtype, need_grad, head_weight.requires_grad)


class _L2Wrap(torch.autograd.Function):
    """Identity on the loss; backward adds g·scale·w·max-logit at each row's arg-max (docs/model-spec.md §1.5)."""

    @staticmethod
    def forward(ctx, loss, logits, weights, scale):
        ctx.save_for_backward(logits, weights)
        ctx.scale = scale
        return loss

    @staticmethod
    def backward(ctx, g):
        logits, weights = ctx.saved_tensors
        mx, arg = logits.detach().max(dim=-1, keepdim=True)
        gl = torch.zeros_like(logits)
        gl.scatter_(-1, arg, mx * (ctx.scale * weights * (weights > 0)).unsqueeze(-1).to(mx.dtype))
        return g, gl * g.to(gl.dtype), None, None


def logits_ce_l2wrap(logits, targets, weights, l2wrap: bool = True):
    """Unfused path (used where the head weight cannot be read outside its module, e.g. ZeRO-3); the same
    sum and the same L2Wrap as `head_ce_l2wrap`."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    ce = F.cross_entropy(logits.to(acc).reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    loss = (ce * weights.reshape(-1).to(acc)).sum()
    if l2wrap:
        loss = _L2Wrap.apply(loss, logits, weights, L2WRAP_FACTOR)
    return loss
