"""Per-rank samplers: determinism, equal lengths, wrapping, skip_samples, state, official scheme."""

import numpy as np
import pytest

from rwkv.data.binidx import MINI_EPOCH, official_offset
from rwkv.data.sampler import OfficialSampler, RowSampler
from rwkv.errors import DataError


def ranks(n, world, **kw):
    return [RowSampler(n, rank=r, world_size=world, **kw) for r in range(world)]


@pytest.mark.parametrize("n,world", [(10, 1), (10, 3), (7, 4), (2, 5), (0, 2)])
def test_equal_lengths_cover_everything_and_wrap(n, world):
    ss = ranks(n, world, seed=1)
    lists = [list(s) for s in ss]
    assert len({len(x) for x in lists}) == 1 and all(len(s) == len(x) for s, x in zip(ss, lists))
    flat = [i for x in lists for i in x]
    assert set(flat) == set(range(n))
    assert len(flat) == -(-n // world) * world  # padded by wrapping, never more


def test_deterministic_per_seed_and_epoch():
    a, b = RowSampler(50, seed=3), RowSampler(50, seed=3)
    assert list(a) == list(b)
    e0 = list(a)
    a.set_epoch(1)
    assert list(a) != e0 and sorted(a) == list(range(50))
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(RowSampler(50, seed=4)) != e0
    assert list(RowSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_skip_samples_iter_len_and_reset_on_new_epoch():
    s = RowSampler(20, rank=1, world_size=2, seed=0)
    full = list(s)
    s.skip_samples = 4
    assert list(s) == full[4:] and len(s) == 10  # len stays the whole epoch
    s.set_epoch(0)  # same epoch (Lightning calls this at the start of a resumed epoch): keep the skip
    assert s.skip_samples == 4
    s.set_epoch(1)
    assert s.skip_samples == 0 and len(s) == 10


def test_state_dict_round_trip():
    s = RowSampler(20, seed=0)
    s.set_epoch(3)
    s.skip_samples = 5
    t = RowSampler(20, seed=0)
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == {"epoch": 3, "skip_samples": 5} and list(t) == list(s)


def test_official_sampler_matches_the_formula_and_partitions_the_mini_epoch():
    p, ctx, world, mbs = 2926181, 512, 4, 2
    ss = [OfficialSampler(p, ctx, rank=r, world_size=world, micro_batch_size=mbs, epoch_begin=2)
          for r in range(world)]
    for s in ss:
        s.set_epoch(1)
        assert len(s) == MINI_EPOCH // (world * mbs) * mbs
    offsets = [list(s) for s in ss]
    # rank r, local idx i -> ii = 1 + (2+1)·40320 + i·world + r
    for r in range(world):
        for i in (0, 1, 777):
            ii = 1 + 3 * MINI_EPOCH + i * world + r
            assert offsets[r][i] == official_offset(ii, p, ctx)
    every = sorted(o for x in offsets for o in x)
    expect = sorted(official_offset(1 + 3 * MINI_EPOCH + k, p, ctx) for k in range(MINI_EPOCH))
    assert every == expect and len(set(every)) == MINI_EPOCH


def test_official_first_samples_epoch_zero():
    s = OfficialSampler(2926181, 512)
    first = [x for _, x in zip(range(5), s)]
    assert first == [925941248, 1414711296, 1029138944, 830257664, 380896256]
    s.skip_samples = 3
    assert next(iter(s)) == 830257664 and len(s) == MINI_EPOCH


def test_official_requires_exact_division():
    with pytest.raises(DataError, match=r"world size 3 × data.micro_batch_size 11.*40320"):
        OfficialSampler(2926181, 512, world_size=3, micro_batch_size=11)


def test_row_sampler_is_a_torch_sampler_usable_by_dataloader():
    import torch

    dl = torch.utils.data.DataLoader(list(range(9)), batch_size=2, sampler=RowSampler(9, seed=0))
    got = [int(x) for b in dl for x in b]
    assert sorted(got) == list(range(9)) and len(dl) == 5
    assert np.array_equal(got, list(RowSampler(9, seed=0)))
