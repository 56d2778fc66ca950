"""WKV-6 and WKV-5: the chunked backend against the per-token reference (docs/design.md §5.1, §6).

Same matrix as WKV-7 (outputs, final state, gradients of every input incl. the initial state and u; fp64
abs ≤ 1e-10, fp32 rel ≤ 1e-4; awkward T; chunks 16/32/64), with ω from the x060 time_decay init range
plus a few channels at trained-model fast decays down to λ ≈ −1e4 (docs/model-spec.md §3.6: the decay is
unbounded). Also: each A-matrix path (factorised, mixed, all pairwise), λ = −1e30 / −inf, fp32 accuracy
when |G| reaches the thousands, segments == whole, reset == separate documents.
"""

from __future__ import annotations

import functools

import pytest
import torch

from rwkv.ops import dispatch, wkv5, wkv6
from rwkv.ops.v6 import chunked as w6c
from rwkv.ops.v6.chunked import wkv5_chunked, wkv6_chunked
from rwkv.ops.v6.reference import wkv5_reference, wkv6_reference

from ..v7.test_chunked import _separate_documents
from ..wkv_cases import CHUNKS, T_CASES, assert_close, cast, forward_backward, max_abs, v5_inputs, v6_inputs

B, H, N = 2, 2, 16
DTYPES = {"fp64": torch.float64, "fp32": torch.float32}
pytestmark = pytest.mark.usefixtures("one_thread")
OPS = {"wkv6": (wkv6_reference, wkv6_chunked, v6_inputs), "wkv5": (wkv5_reference, wkv5_chunked, v5_inputs)}


def _state(B, H, N, seed=3):
    return 0.5 * torch.randn(B, H, N, N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@functools.cache
def _reference(op: str, T: int, dtype_name: str):
    ref, _, make = OPS[op]
    dtype = DTYPES[dtype_name]
    return forward_backward(ref, cast(make(B, T, H, N), dtype), _state(B, H, N).to(dtype))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("c", CHUNKS)
@pytest.mark.parametrize("T", T_CASES)
@pytest.mark.parametrize("op", list(OPS))
def test_chunked_matches_reference(op, T, c, dtype_name, small_blocks):
    _, chunked, make = OPS[op]
    dtype = DTYPES[dtype_name]
    got = forward_backward(chunked, cast(make(B, T, H, N), dtype), _state(B, H, N).to(dtype), chunk_size=c)
    assert got["y"].dtype == dtype and got["S"].dtype == dtype and got["du"].dtype == dtype
    assert_close(got, _reference(op, T, dtype_name), dtype, f"{op} T={T} c={c} {dtype_name}")


@pytest.fixture
def pairwise_widths(monkeypatch):
    """Record the channel count m of every pairwise A-matrix evaluation."""
    widths = []
    inner = w6c._pairwise_scores

    def spy(r, *args):
        widths.append(r.shape[-1])
        return inner(r, *args)

    monkeypatch.setattr(w6c, "_pairwise_scores", spy)
    return widths


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("regime", ["factorised", "mixed", "pairwise"])
def test_each_score_path(regime, dtype_name, pairwise_widths):
    """Init-range decays take the matmul form only; a few fast channels go pairwise per chunk; decays
    fast everywhere go pairwise entirely. All three agree with the reference."""
    dtype = DTYPES[dtype_name]
    x = v6_inputs(B, 96, H, N, seed=7, strong=regime != "factorised")
    if regime == "pairwise":  # every channel's span over a chunk of 32 exceeds FACTOR_SPAN (≤ 400)
        x["w"] = -torch.empty_like(x["w"]).uniform_(15.0, 60.0)
    x, s0 = cast(x, dtype), _state(B, H, N).to(dtype)
    got = forward_backward(wkv6_chunked, x, s0, chunk_size=32)
    calls = list(pairwise_widths)
    assert_close(got, forward_backward(wkv6_reference, x, s0), dtype, regime)
    if regime == "factorised":
        assert calls == []
    elif regime == "mixed":
        assert calls and all(0 < m < N for m in calls)
    else:
        assert calls and all(m == N for m in calls)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("huge", [-1e4, -1e30, float("-inf")])
def test_extreme_log_decays_stay_finite(huge, dtype_name):
    """λ = −1e4 … −inf (decay exactly 0) must give the reference's numbers, never inf or NaN."""
    dtype = DTYPES[dtype_name]
    x = v6_inputs(B, 70, H, N, seed=8)
    x["w"][:, ::3, :, 2:5] = huge
    x["w"][0, 10:40, 1, :] = huge  # a whole stretch of a head forgets everything at every step
    x, s0 = cast(x, dtype), _state(B, H, N).to(dtype)
    got = forward_backward(wkv6_chunked, x, s0, chunk_size=32)
    assert all(torch.isfinite(t).all() for t in got.values())
    assert_close(got, forward_backward(wkv6_reference, x, s0), dtype, f"λ={huge}")


def test_fp32_accurate_when_cumulative_decay_is_in_the_thousands():
    """docs/model-spec.md §3.6: with an fp32 cumulative sum the pairwise differences lose ~3e-4 at |G| ~ thousands;
    the fp64 sums keep fp32 chunked within 1e-5 of the fp64 truth."""
    x = v6_inputs(1, 64, 2, 64, seed=9)
    x["w"][..., 8:24] = -torch.empty_like(x["w"][..., 8:24]).uniform_(50.0, 200.0)  # |G_c| ≈ 4000 at c=32
    x["w"][..., 24:32] = -torch.empty_like(x["w"][..., 24:32]).uniform_(0.2, 3.0)
    s0 = _state(1, 2, 64)
    ref = forward_backward(wkv6_reference, x, s0)
    got = forward_backward(wkv6_chunked, cast(x, torch.float32), s0.float(), chunk_size=32)
    err = assert_close(got, ref, torch.float32, "fp32 vs fp64 truth")
    assert max(err.values()) < 1e-5, err


@pytest.mark.parametrize("op", list(OPS))
def test_segments_equal_whole(op, small_blocks):
    _, chunked, make = OPS[op]
    T, cuts = 100, [0, 37, 38, 100]
    inputs, s0 = make(B, T, H, N, seed=2), _state(B, H, N)
    whole = forward_backward(chunked, inputs, s0, chunk_size=16)

    def segmented(state=None, reset=None, **x):
        ys, S = [], state
        for t0, t1 in zip(cuts[:-1], cuts[1:]):
            part = {n: (t[:, t0:t1] if t.dim() == 4 else t) for n, t in x.items()}
            y, S = chunked(**part, state=S, chunk_size=16)
            ys.append(y)
        return torch.cat(ys, 1), S

    assert_close(forward_backward(segmented, inputs, s0), whole, torch.float64, f"{op} segmented vs whole")


@pytest.mark.parametrize("op", list(OPS))
def test_reset_equals_separate_documents(op, small_blocks):
    ref, chunked, make = OPS[op]
    T = 100
    starts = [[1, 30, 31, 77], [0, 16, 50, 51, 99]]
    reset = torch.zeros(B, T, dtype=torch.bool)
    for b, s in enumerate(starts):
        reset[b, s] = True
    inputs, s0 = make(B, T, H, N, seed=4), _state(B, H, N)
    seq = {n for n, t in inputs.items() if t.dim() == 4}

    def apart(state=None, reset=None, **x):
        static = {n: t for n, t in x.items() if n not in seq}
        return _separate_documents(lambda **kw: chunked(**kw, **static, chunk_size=16), starts,
                                   {n: x[n] for n in seq}, state)

    packed = forward_backward(chunked, inputs, s0, reset=reset, chunk_size=16)
    assert_close(packed, forward_backward(apart, inputs, s0), torch.float64, f"{op} reset vs documents")
    assert_close(packed, forward_backward(ref, inputs, s0, reset=reset), torch.float64, f"{op} reset vs ref")


def test_default_blocks_equal_small_blocks(monkeypatch):
    from rwkv.ops.v7 import chunked as w7c

    inputs, s0 = v6_inputs(B, 100, H, N), _state(B, H, N)
    one = forward_backward(wkv6_chunked, inputs, s0, chunk_size=16)
    monkeypatch.setattr(w7c, "BLOCK_ELEMS_CPU", B * H * N * 16)
    many = forward_backward(wkv6_chunked, inputs, s0, chunk_size=16)
    assert max(max_abs(one, many).values()) < 1e-12


@pytest.mark.parametrize("op", list(OPS))
def test_bad_arguments_are_refused(op):
    _, chunked, make = OPS[op]
    x = cast(make(1, 20, 2, 8), torch.float32)
    bad_w = dict(x, w=-x["w"])
    with pytest.raises(ValueError, match="must be ≤ 0"):
        chunked(**bad_w)
    with pytest.raises(ValueError, match=r"bonus `u` \(time_faaaa\) has shape"):
        chunked(**dict(x, u=x["u"][0]))
    nan_w = dict(x, w=x["w"].clone())
    nan_w["w"].view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match="must be ≤ 0"):
        chunked(**nan_w)
    wrong = dict(x, w=x["w"].expand(1, 20, 2, 8) if op == "wkv5" else x["w"][0, 0])
    with pytest.raises(ValueError, match="log-decay `w` has shape"):
        chunked(**wrong)


@pytest.mark.parametrize("op", list(OPS))
def test_auto_is_chunked_and_dtypes_follow_the_contract(op):
    fn = {"wkv6": wkv6, "wkv5": wkv5}[op]
    assert dispatch.resolve(op, "auto", torch.device("cpu")) == "chunked"
    x = {n: t.to(torch.bfloat16).requires_grad_() for n, t in OPS[op][2](1, 33, 2, 8).items()}
    s0 = _state(1, 2, 8).float().requires_grad_()
    y, S = fn(**x, state=s0)
    y_c, S_c = OPS[op][1](**x, state=s0)
    assert torch.equal(y, y_c.to(y.dtype)) and torch.equal(S, S_c)
    assert y.dtype == torch.bfloat16 and S.dtype == torch.float32
    (y.float().sum() + S.sum()).backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in [*x.values(), s0])
