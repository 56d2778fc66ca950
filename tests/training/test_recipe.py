"""The trainer's gradient equals the official objective's (docs/model-spec.md §1.5), computed independently.

The oracle (tests/support/recipe.py) runs the model once over each whole sample, takes torch's mean
cross-entropy over the learned positions and applies the official L2Wrap autograd function to those rows.
The trainer instead cuts samples into segments, fuses the head with the loss, sums CE and divides by the
learned-token count, and may accumulate micro batches. Every parameter gradient must agree in fp64.
"""

import pytest
import torch

from rwkv.training.loss import head_ce_l2wrap, logits_ce_l2wrap
from rwkv.training.segments import run_sample, segment_bounds
from tests.support.models import random_model
from tests.support.recipe import assert_relative_close, spec_grads

REL = 1e-10  # fp64 throughout: the orders of summation differ, nothing else


@pytest.fixture(scope="module")
def model():
    return random_model(n_layer=2, n_embd=64, head_size=16, vocab_size=97, seed=11).double()


def sample(B, L, seed, masked=(), resets=()):
    """input_ids [B, L+1], a random loss mask with `masked` target spans zeroed, and per-document resets
    at `resets` (the loader also masks the first token of a document)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (B, L + 1), generator=g)
    mask = (torch.rand(B, L + 1, generator=g) > 0.25).double()
    for a, b in masked:  # target positions a..b-1 are mask[:, a+1..b]
        mask[:, a + 1:b + 1] = 0
    out = {"input_ids": ids, "loss_mask": mask}
    if resets:
        reset = torch.zeros(B, L + 1, dtype=torch.bool)
        for t in resets:
            reset[:, t] = True
            mask[:, t] = 0
        out["reset"] = reset
    return out


def loss_fn(model, fused):
    if fused:
        return lambda h, tg, wt: head_ce_l2wrap(h, model.head.weight, tg, wt)
    return lambda h, tg, wt: logits_ce_l2wrap(model.head(h), tg, wt)  # the ZeRO-3 path


def trainer_grads(model, micro_batches, ctx, bptt, fused):
    model.zero_grad(set_to_none=True)
    for mb in micro_batches:
        res = run_sample(model, mb["input_ids"], mb["loss_mask"], ctx, bptt, loss_fn(model, fused),
                         lambda t: t.backward(), reset=mb.get("reset"), scale=1.0 / len(micro_batches),
                         defer_last=True)
        res.deferred.backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_one_segment(model, fused):
    mb = sample(2, 40, seed=1)
    assert_relative_close(trainer_grads(model, [mb], 64, "full", fused), spec_grads(model, [mb]), REL)


@pytest.mark.parametrize("fused", [True, False])
def test_full_bptt_with_masked_segment_and_reset(model, fused):
    ctx, L = 16, 5 * 16 + 7
    mb = sample(2, L, seed=2, masked=[(32, 48)], resets=[21, 60])
    # the case really contains a segment with nothing learned, and a reset inside a segment
    w = mb["loss_mask"][:, 1:]
    assert any(w[:, a:b].sum() == 0 for a, b in segment_bounds(L, ctx))
    assert len(segment_bounds(L, ctx)) == 6
    assert_relative_close(trainer_grads(model, [mb], ctx, "full", fused), spec_grads(model, [mb]), REL)


@pytest.mark.parametrize("fused", [True, False])
def test_accumulated_micro_batches(model, fused):
    """Micro batches of different lengths and learned-token counts: each contributes its own mean, then
    they are averaged (not a token-weighted mean over the step)."""
    mbs = [sample(2, 50, seed=3), sample(1, 23, seed=4, masked=[(0, 10)])]
    assert_relative_close(trainer_grads(model, mbs, 16, "full", fused), spec_grads(model, mbs), REL)


def test_the_oracle_sees_l2wrap(model):
    """L2Wrap's share of the gradient is far above REL here, so the tests above would notice it missing,
    too weak or too strong (the trainer's old L2Wrap was n× too weak, n = learned tokens)."""
    mb = sample(2, 40, seed=1)
    with_l2 = spec_grads(model, [mb])
    model.zero_grad(set_to_none=True)
    hidden, _ = model(mb["input_ids"][:, :-1], return_hidden=True)
    w = mb["loss_mask"][:, 1:]
    (head_ce_l2wrap(hidden, model.head.weight, mb["input_ids"][:, 1:], w, l2wrap=False) / w.sum()).backward()
    ce_only = model.head.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    share = ((with_l2["head.weight"] - ce_only).abs().max() / with_l2["head.weight"].abs().max()).item()
    assert share > 1e3 * REL
