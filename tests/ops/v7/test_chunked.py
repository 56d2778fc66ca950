"""WKV-7: the chunked backend against the per-token reference (docs/design.md §5.1, §6).

Outputs, final state and the gradients of every input including the initial state, in fp64 (abs ≤ 1e-10)
and fp32 (rel ≤ 1e-4), at awkward T and chunk sizes 16/32/64, with inputs in the real range; segments
with the state carried equal one call; `reset` equals running the documents separately.
"""

from __future__ import annotations

import functools

import pytest
import torch

from rwkv.ops import dispatch, wkv7
from rwkv.ops.v7.chunked import wkv7_chunked
from rwkv.ops.v7.reference import wkv7_reference

from ..wkv_cases import CHUNKS, T_CASES, assert_close, cast, forward_backward, max_abs, v7_inputs

B, H, N = 2, 2, 16
DTYPES = {"fp64": torch.float64, "fp32": torch.float32}
pytestmark = pytest.mark.usefixtures("one_thread")


def _state(B, H, N, seed=3):
    return 0.5 * torch.randn(B, H, N, N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@functools.cache
def _reference(T: int, dtype_name: str):
    dtype = DTYPES[dtype_name]
    return forward_backward(wkv7_reference, cast(v7_inputs(B, T, H, N), dtype), _state(B, H, N).to(dtype))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("c", CHUNKS)
@pytest.mark.parametrize("T", T_CASES)
def test_chunked_matches_reference(T, c, dtype_name, small_blocks):
    dtype = DTYPES[dtype_name]
    got = forward_backward(wkv7_chunked, cast(v7_inputs(B, T, H, N), dtype), _state(B, H, N).to(dtype),
                           chunk_size=c)
    ref = _reference(T, dtype_name)
    assert got["y"].dtype == dtype and got["S"].dtype == dtype
    assert_close(got, ref, dtype, f"T={T} c={c} {dtype_name}")


def test_fp32_head_size_64_against_fp64_reference():
    """The real head size; fp32 chunked stays within 1e-4 of the fp64 truth (not only of the fp32 loop)."""
    inputs, s0 = v7_inputs(1, 100, 2, 64, seed=5), _state(1, 2, 64)
    ref = forward_backward(wkv7_reference, inputs, s0)
    got = forward_backward(wkv7_chunked, cast(inputs, torch.float32), s0.float())
    assert_close(got, ref, torch.float32, "N=64 fp32 vs fp64 reference")


def test_default_blocks_equal_small_blocks(monkeypatch):
    """Block-wise recomputation is an execution detail: one block and many give the same numbers."""
    inputs, s0 = v7_inputs(B, 100, H, N), _state(B, H, N)
    one = forward_backward(wkv7_chunked, inputs, s0, chunk_size=16)
    from rwkv.ops.v7 import chunked as w7c

    monkeypatch.setattr(w7c, "BLOCK_ELEMS_CPU", B * H * N * 16)  # one chunk per block
    assert len(w7c.block_bounds(112, 16, B, H, N, torch.device("cpu"))) == 7
    many = forward_backward(wkv7_chunked, inputs, s0, chunk_size=16)
    assert max(max_abs(one, many).values()) < 1e-12


def test_segments_equal_whole(small_blocks):
    """A sequence run as segments with the state carried (and the graph kept) equals one call, for
    outputs, final state and all gradients including the initial state's."""
    T, cuts = 100, [0, 37, 38, 100]
    inputs, s0 = v7_inputs(B, T, H, N, seed=2), _state(B, H, N)
    whole = forward_backward(wkv7_chunked, inputs, s0, chunk_size=16)

    def segmented(state=None, reset=None, **x):
        ys, S = [], state
        for t0, t1 in zip(cuts[:-1], cuts[1:]):
            y, S = wkv7_chunked(**{n: t[:, t0:t1] for n, t in x.items()}, state=S, chunk_size=16)
            ys.append(y)
        return torch.cat(ys, 1), S

    assert_close(forward_backward(segmented, inputs, s0), whole, torch.float64, "segmented vs whole")


def _separate_documents(fn, starts_per_row, inputs, s0):
    """Run each document of each batch row on its own: the first from s0 (unless a document starts at
    t=0 by a reset there), later ones from zero; concatenate the outputs; final state of the last."""
    ys, finals = [], []
    T = next(iter(inputs.values())).shape[1]
    for b, starts in enumerate(starts_per_row):
        bounds = sorted(set([0, *starts, T]))
        S = s0[b:b + 1] * (0.0 if 0 in starts else 1.0)
        row = []
        for t0, t1 in zip(bounds[:-1], bounds[1:]):
            if t0 > 0:
                S = torch.zeros_like(S)
            y, S = fn(**{n: x[b:b + 1, t0:t1] for n, x in inputs.items()}, state=S)
            row.append(y)
        ys.append(torch.cat(row, 1))
        finals.append(S)
    return torch.cat(ys, 0), torch.cat(finals, 0)


@pytest.mark.parametrize("c", [16, 64])
def test_reset_equals_separate_documents(c, small_blocks):
    """`reset[b, t]` zeroes the state before token t: identical to running the documents separately
    (outputs, final state and gradients, incl. the initial state's, which only the first document sees)."""
    T = 100
    starts = [[1, 30, 31, 77], [0, 16, 50, 51, 99]]  # document starts on chunk edges, adjacent, first, last
    reset = torch.zeros(B, T, dtype=torch.bool)
    for b, s in enumerate(starts):
        reset[b, s] = True
    inputs, s0 = v7_inputs(B, T, H, N, seed=4), _state(B, H, N)
    packed = forward_backward(wkv7_chunked, inputs, s0, reset=reset, chunk_size=c)
    apart = forward_backward(lambda state=None, reset=None, **x: _separate_documents(
        lambda **kw: wkv7_chunked(**kw, chunk_size=c), starts, x, state), inputs, s0)
    assert_close(packed, apart, torch.float64, "reset vs separate documents")
    ref = forward_backward(wkv7_reference, inputs, s0, reset=reset)
    assert_close(packed, ref, torch.float64, "reset: chunked vs reference")


@pytest.mark.parametrize("bad", [-2.0, 0.1, float("nan"), float("-inf")])
def test_out_of_range_log_decay_is_refused(bad):
    x = cast(v7_inputs(1, 20, 1, 8), torch.float32)
    x["w"][0, 5, 0, 3] = bad
    with pytest.raises(ValueError, match=r"log-decay w must lie in \[-1.0, 0\].*not the raw"):
        wkv7(**x, backend="chunked")


def test_auto_is_chunked_for_fp64_on_cpu():
    """fp64 (the dtype of the tight tests) always runs chunked; fp32 runs the C kernel when it passed its
    self-check (tests/ops/v7/test_cpu.py) and chunked otherwise."""
    assert dispatch.resolve("wkv7", "auto", torch.device("cpu"), torch.float64) == "chunked"
    x, s0 = v7_inputs(1, 40, 2, 8), _state(1, 2, 8)
    y_auto, s_auto = wkv7(**x, state=s0, backend="auto")
    y_chunk, s_chunk = wkv7_chunked(**x, state=s0)
    assert torch.equal(y_auto, y_chunk) and torch.equal(s_auto, s_chunk)


def test_auto_is_chunked_on_cpu_when_the_c_kernel_is_not_ready(monkeypatch):
    monkeypatch.setattr(dispatch, "cpu_ready", lambda op="wkv7": False)
    assert dispatch.resolve("wkv7", "auto", torch.device("cpu"), torch.float32) == "chunked"
    x, s0 = cast(v7_inputs(1, 40, 2, 8), torch.float32), _state(1, 2, 8).float()
    y_auto, s_auto = wkv7(**x, state=s0, backend="auto")
    y_chunk, s_chunk = wkv7_chunked(**x, state=s0)
    assert torch.equal(y_auto, y_chunk) and torch.equal(s_auto, s_chunk)


def test_dispatch_dtypes_bf16():
    """Contract (docs/design.md §3): y in the input dtype, the state in fp32, gradients reach every input."""
    x = {n: t.to(torch.bfloat16).requires_grad_() for n, t in v7_inputs(1, 33, 2, 8).items()}
    s0 = _state(1, 2, 8).float().requires_grad_()
    y, S = wkv7(**x, state=s0, backend="chunked")
    assert y.dtype == torch.bfloat16 and S.dtype == torch.float32
    (y.float().sum() + S.sum()).backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in x.values())
    assert s0.grad is not None and s0.grad.dtype == torch.float32
