"""Segment-loop semantics: `full` equals one backward of the official objective over the whole sample;
`truncated` equals a hand-written truncated reference; integer K interpolates; padding segments change
nothing. The references come from tests/support/recipe.py (written from docs/model-spec.md §1.5 without
the trainer's loss code)."""

import pytest
import torch

from rwkv.training.loss import head_ce_l2wrap
from rwkv.training.segments import StartStates, bptt_groups, run_sample, segment_bounds
from tests.support.models import random_model
from tests.support.recipe import spec_grads, spec_truncated_grads


def make_batch(B=2, L=7 * 16 + 5, V=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, L + 1), generator=g)
    mask = (torch.rand(B, L + 1, generator=g) > 0.3).double()
    mask[:, 40:70] = 0  # target positions 39..68: the whole segment [48, 64) at ctx 16 learns nothing
    return ids, mask


def loss_fn_for(model):
    return lambda h, tg, wt: head_ce_l2wrap(h, model.head.weight, tg, wt)


def grads_of(model):
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def whole_sample_grads(model, ids, mask):
    """Reference: one forward and one backward over the unsegmented sample."""
    return spec_grads(model, [{"input_ids": ids, "loss_mask": mask}])


def truncated_reference_grads(model, ids, mask, ctx):
    """Hand-written TBPTT: detach the state at each boundary, one backward per segment."""
    return spec_truncated_grads(model, [{"input_ids": ids, "loss_mask": mask}], ctx)


def segmented_grads(model, ids, mask, ctx, bptt, **kw):
    res = run_sample(model, ids, mask, ctx, bptt, loss_fn_for(model), lambda t: t.backward(), **kw)
    if res.deferred is not None:
        res.deferred.backward()
    return grads_of(model), res


def assert_grads_equal(g1, g2, atol):
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], atol=atol, rtol=0, msg=k)


@pytest.fixture(scope="module")
def model():
    return random_model(n_layer=2, n_embd=64, head_size=16, vocab_size=97, seed=3).double()


@pytest.mark.parametrize("defer", [False, True])
def test_full_bptt_equals_unsegmented_backward(model, defer):
    ids, mask = make_batch()
    w = mask[:, 1:]
    assert any(w[:, a:b].sum() == 0 for a, b in segment_bounds(w.shape[1], 16))  # a fully masked segment
    ref = whole_sample_grads(model, ids, mask)
    got, res = segmented_grads(model, ids, mask, 16, "full", defer_last=defer)
    assert res.segments == 8  # 7 full segments of 16 + a tail of 5 (sample of 117 inputs)
    assert_grads_equal(got, ref, atol=1e-11)


def test_truncated_equals_reference_and_differs_from_full(model):
    ids, mask = make_batch(seed=1)
    ref = truncated_reference_grads(model, ids, mask, 16)
    got, _ = segmented_grads(model, ids, mask, 16, "truncated")
    assert_grads_equal(got, ref, atol=1e-11)
    full = whole_sample_grads(model, ids, mask)
    assert max((full[k] - got[k]).abs().max() for k in got) > 1e-6  # the carried gradient matters


def test_integer_k_limits(model):
    ids, mask = make_batch(seed=2, L=5 * 16)  # 5 segments; the 4th learns nothing, the 5th does
    trunc, _ = segmented_grads(model, ids, mask, 16, "truncated")
    full, _ = segmented_grads(model, ids, mask, 16, "full")
    assert_grads_equal(segmented_grads(model, ids, mask, 16, 0)[0], trunc, atol=1e-12)
    assert_grads_equal(segmented_grads(model, ids, mask, 16, 4)[0], full, atol=1e-11)
    k1, _ = segmented_grads(model, ids, mask, 16, 1)
    assert max((k1[k] - trunc[k]).abs().max() for k in k1) > 1e-8
    assert max((k1[k] - full[k]).abs().max() for k in k1) > 1e-8


@pytest.mark.parametrize("bptt", ["truncated", "full", 2])
def test_padding_segments_change_nothing(model, bptt):
    ids, mask = make_batch(seed=4, L=3 * 16)
    base, _ = segmented_grads(model, ids, mask, 16, bptt)
    calls = []

    def counting_backward(t):
        calls.append(1)
        t.backward()

    res = run_sample(model, ids, mask, 16, bptt, loss_fn_for(model), counting_backward, n_segments=6)
    assert len(calls) == 6 and res.segments == 3
    assert_grads_equal(grads_of(model), base, atol=1e-12)


def test_fully_masked_sample_gives_zero_loss_and_gradients(model):
    ids, _ = make_batch(seed=5, L=40)
    res = run_sample(model, ids, torch.zeros(ids.shape, dtype=torch.float64), 16, "full", loss_fn_for(model),
                     lambda t: t.backward())
    assert res.loss_sum == 0.0 and res.learned == 0.0
    g = grads_of(model)
    assert g and all(torch.count_nonzero(v) == 0 for v in g.values())


def test_segment_bounds_and_groups():
    assert segment_bounds(35, 16) == [(0, 16), (16, 32), (32, 35)]
    assert bptt_groups(4, "truncated") == [[0], [1], [2], [3]]
    assert bptt_groups(4, "full") == [[0, 1, 2, 3]]
    assert bptt_groups(4, 1) == [[0], [1], [2, 3]]
    assert bptt_groups(3, 1, 5) == [[0], [1, 2], [3], [4]]  # padding after the exact group
    assert bptt_groups(1, 2, 5) == [[0, 1, 2], [3], [4]]  # short sample: padding fills the group
    for n_real in range(1, 6):  # forward calls n_total + K whatever the real length
        groups = bptt_groups(n_real, 2, 5)
        assert sum(2 * len(g) - 1 for g in groups) == 5 + 2
    with pytest.raises(ValueError, match="model.segments.bptt"):
        bptt_groups(4, "exact")


def test_start_states_store_copies_and_keep_dtypes():
    """Full mode keeps its boundary states in preallocated buffers (heap fragmentation, segments.py):
    what is read back equals what was stored, in the stored dtypes, and later writes to the originals'
    storage cannot reach it (the store copies)."""
    g = torch.Generator().manual_seed(0)
    states = [tuple((torch.randn(2, 8, generator=g).bfloat16(), torch.randn(2, 2, 4, 4, generator=g),
                     torch.randn(2, 8, generator=g).bfloat16()) for _ in range(3)) for _ in range(4)]
    initial = object()
    store = StartStates(initial, len(states))
    for st in states:
        store.append(st)
    assert store[0] is initial
    for j, st in enumerate(states, start=1):
        for layer_got, layer_want in zip(store[j], st):
            for got, want in zip(layer_got, layer_want):
                assert got.dtype == want.dtype and torch.equal(got, want)
                assert got.data_ptr() != want.data_ptr()
    states[0][0][1].zero_()
    assert not torch.equal(store[1][0][1], states[0][0][1])
    with pytest.raises(IndexError):
        store[len(states) + 1]
