"""Loss (L2Wrap, model-spec §1.5), parameter groups and LR schedule (spec §1.6)."""

import math

import pytest
import torch
import torch.nn.functional as F

from rwkv.model import RWKVConfig, build_model
from rwkv.training import loss as loss_mod
from rwkv.training.loss import head_ce_l2wrap, logits_ce_l2wrap
from rwkv.training.optim import build_optimizer, lr_at, param_groups
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


def test_official_parameter_groups():
    model = build_model(RWKVConfig(n_layer=2, n_embd=64, head_size=16, vocab_size=100))
    groups = {(g["lr_scale"], g["weight_decay"]): set(g["names"]) for g in param_groups(model, 0.1)}
    assert set(groups) == {(1.0, 0.0), (2.0, 0.0), (1.0, 0.1)}
    assert groups[(2.0, 0.0)] == {"blocks.0.att.w0", "blocks.1.att.w0"}
    decay = {"emb.weight", "head.weight"} | {f"blocks.{l}.{n}.weight" for l in range(2) for n in
                                           ("att.receptance", "att.key", "att.value", "att.output", "ffn.key",
                                            "ffn.value")}
    assert groups[(1.0, 0.1)] == decay
    assert "blocks.1.att.w1" in groups[(1.0, 0.0)] and "blocks.1.ln_x.weight" not in decay
    assert not any("blocks.0.att.v1" in g for g in groups.values())  # frozen, unused in layer 0
    no_wd = {(g["lr_scale"], g["weight_decay"]) for g in param_groups(model, 0.0)}
    assert no_wd == {(1.0, 0.0), (2.0, 0.0)}


def test_optimizer_is_decoupled_adamw_with_groups():
    model = build_model(RWKVConfig(n_layer=1, n_embd=32, head_size=16, vocab_size=10))
    opt = build_optimizer(param_groups(model, 0.01), 1e-3, (0.9, 0.99), 1e-18)
    assert isinstance(opt, torch.optim.AdamW)
    assert {(g["lr_scale"], g["weight_decay"]) for g in opt.param_groups} == {(1.0, 0.0), (2.0, 0.0), (1.0, 0.01)}
    assert opt.defaults["betas"] == (0.9, 0.99) and opt.defaults["eps"] == 1e-18


def test_lr_schedule_warmup_cosine_linear_and_token_budget():
    kw = dict(lr_init=6e-4, lr_final=6e-5, warmup_steps=10)
    assert lr_at(0, 0, schedule="cosine", total_steps=110, **kw) == pytest.approx(6e-4 * 0.01)
    assert lr_at(5, 0, schedule="cosine", total_steps=110, **kw) == pytest.approx(6e-4 * (0.01 + 0.99 * 0.5))
    assert lr_at(10, 0, schedule="cosine", total_steps=110, **kw) == pytest.approx(6e-4)
    assert lr_at(60, 0, schedule="cosine", total_steps=110, **kw) == pytest.approx((6e-4 + 6e-5) / 2)
    assert lr_at(110, 0, schedule="cosine", total_steps=110, **kw) == pytest.approx(6e-5)
    assert lr_at(60, 0, schedule="linear", total_steps=110, **kw) == pytest.approx((6e-4 + 6e-5) / 2)
    # token budget (like my_exit_tokens): progress follows tokens, not steps
    at_quarter = lr_at(500, 250, schedule="cosine", total_tokens=1000, **kw)
    f = 0.1
    assert at_quarter == pytest.approx(6e-4 * ((0.5 + f / 2) + (0.5 - f / 2) * math.cos(math.pi * 0.25)))
    assert lr_at(3, 0, schedule="constant", **kw) == pytest.approx(6e-4 * (0.01 + 0.99 * 0.3))
