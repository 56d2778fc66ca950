"""Loss (rwkv/training/loss.py): CE + L2Wrap, fused with the head and unfused, against the official L2Wrap
(docs/model-spec.md §1.5)."""

import pytest
import torch
import torch.nn.functional as F

from rwkv.training import loss as loss_mod
from rwkv.training.loss import head_ce_l2wrap, logits_ce_l2wrap
from tests.support.recipe import SpecL2Wrap


@pytest.mark.parametrize("block", [7, 2048])
def test_fused_and_unfused_head_loss_match_the_spec_with_upstream_scale(block, monkeypatch):
    """Σ w·CE / n with the trainer's L2Wrap equals torch's mean CE over the learned rows with the official
    L2Wrap function (tests/support/recipe.py), also under an upstream gradient ≠ 1 (accumulation, loss
    scaling) and with row blocks that cut through the rows."""
    monkeypatch.setattr(loss_mod, "ROW_BLOCK", block)
    monkeypatch.setattr(loss_mod, "_block_rows", lambda V: block)
    torch.manual_seed(0)
    h = torch.randn(2, 19, 16, dtype=torch.float64, requires_grad=True)
    W = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    tg = torch.randint(0, 40, (2, 19))
    wt = (torch.rand(2, 19) > 0.4).double()
    learned = wt > 0
    y = (h @ W.T)[learned]
    ce = F.cross_entropy(y, tg[learned])
    (2.5 * SpecL2Wrap.apply(ce, y)).backward()
    ref = (h.grad.clone(), W.grad.clone())
    h.grad = W.grad = None
    for fn in (lambda: head_ce_l2wrap(h, W, tg, wt), lambda: logits_ce_l2wrap(h @ W.T, tg, wt)):
        out = fn()
        assert (out / wt.sum()).item() == pytest.approx(ce.item(), rel=1e-12)  # the value has no penalty
        (2.5 * out / wt.sum()).backward()
        torch.testing.assert_close(h.grad, ref[0], atol=1e-12, rtol=0)
        torch.testing.assert_close(W.grad, ref[1], atol=1e-12, rtol=0)
        h.grad = W.grad = None
