"""WKV-7 `cpu` backend (rwkv/ops/v7/cpu.py, rwkv/ops/csrc/wkv7_cpu.c; built by rwkv/ops/build.py) against the
fp64 reference.

The C kernel computes in fp32, so it is held to the fp32 tolerance of the other backends (rel ≤ 1e-4,
wkv_cases.TOL_REL_FP32) against the fp64 per-token reference: outputs, final state and the gradients of
every input including the initial state, at T around the snapshot span, with resets (document starts on
span edges, adjacent, first and last token), with the state carried over segments, split over one and
several threads, and in bf16. Build and cache: tests/ops/test_build.py; `auto` and the self-check:
tests/ops/test_dispatch.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rwkv.ops import build, dispatch, wkv7
from rwkv.ops.mix import cpu as mix_cpu
from rwkv.ops.v7 import cpu as v7_cpu
from rwkv.ops.v7.chunked import wkv7_chunked
from rwkv.ops.v7.reference import wkv7_reference

from ..wkv_cases import assert_close, cast, forward_backward, v7_inputs

ROOT = Path(__file__).resolve().parents[3]
L = v7_cpu.SPAN
T_CASES = [1, L - 1, L, L + 1, 3 * L + 5, 100]


def _state(B, H, N, seed=3):
    return 0.5 * torch.randn(B, H, N, N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _cpu(lib):
    return lambda state=None, reset=None, **x: v7_cpu.wkv7_with(lib, **x, state=state, reset=reset)


@pytest.mark.parametrize("T", T_CASES)
@pytest.mark.parametrize("N", [16, 64])
def test_matches_fp64_reference(lib, T, N):
    inputs, s0 = v7_inputs(2, T, 2, N, seed=T), _state(2, 2, N)
    ref = forward_backward(wkv7_reference, inputs, s0)
    got = forward_backward(_cpu(lib), cast(inputs, torch.float32), s0.float())
    assert got["y"].dtype == torch.float32 and got["S"].dtype == torch.float32
    assert_close(got, ref, torch.float32, f"cpu T={T} N={N}")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_split_is_exact(lib, threads):
    """Splitting the (b, h) pairs over threads changes nothing, bit for bit (no shared accumulators)."""
    inputs, s0 = cast(v7_inputs(3, 40, 2, 16, seed=7), torch.float32), _state(3, 2, 16).float()
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = forward_backward(_cpu(lib), inputs, s0)
        torch.set_num_threads(threads)
        many = forward_backward(_cpu(lib), inputs, s0)
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(one[k], many[k]) for k in one)


def test_reset_matches_reference(lib):
    B, T, H, N = 2, 3 * L + 4, 2, 16
    reset = torch.zeros(B, T, dtype=torch.bool)
    reset[0, [0, L, L + 1, T - 1]] = True  # first token, a span edge, adjacent starts, the last token
    reset[1, [L - 1, 2 * L + 3]] = True
    inputs, s0 = v7_inputs(B, T, H, N, seed=4), _state(B, H, N)
    ref = forward_backward(wkv7_reference, inputs, s0, reset=reset)
    got = forward_backward(_cpu(lib), cast(inputs, torch.float32), s0.float(), reset=reset)
    assert_close(got, ref, torch.float32, "cpu with resets")
    assert got["d_state"][0].abs().max() == 0  # row 0 resets at t=0: nothing reaches its initial state


def test_segments_with_carried_state_equal_whole(lib):
    T, cuts = 70, [0, 17, 18, 70]
    inputs, s0 = cast(v7_inputs(2, T, 2, 16, seed=2), torch.float32), _state(2, 2, 16).float()
    whole = forward_backward(_cpu(lib), inputs, s0)

    def segmented(state=None, reset=None, **x):
        ys, S = [], state
        for t0, t1 in zip(cuts[:-1], cuts[1:]):
            y, S = v7_cpu.wkv7_with(lib, **{n: t[:, t0:t1] for n, t in x.items()}, state=S)
            ys.append(y)
        return torch.cat(ys, 1), S

    assert_close(forward_backward(segmented, inputs, s0), whole, torch.float32, "segmented vs whole")


def test_bf16_inputs_and_partial_gradients(lib):
    """bf16 inputs run in fp32 (y back in bf16, the state fp32); gradients reach only the inputs that ask."""
    x = {n: t.to(torch.bfloat16) for n, t in v7_inputs(1, 33, 2, 16).items()}
    x["r"].requires_grad_()
    y, S = wkv7(**x, backend="cpu")
    assert y.dtype == torch.bfloat16 and S.dtype == torch.float32
    y.float().sum().backward()
    assert x["r"].grad is not None and x["r"].grad.dtype == torch.bfloat16
    ref, _ = wkv7_reference(**{n: t.detach().double() for n, t in x.items()})
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() < 1e-2  # bf16 output rounding


def test_no_grad_forward_keeps_no_snapshots(lib, monkeypatch):
    x = {n: t.requires_grad_() for n, t in cast(v7_inputs(1, 50, 1, 16), torch.float32).items()}
    made = []
    real = v7_cpu._WKV7CPU.forward
    monkeypatch.setattr(v7_cpu._WKV7CPU, "forward",
                        staticmethod(lambda ctx, lib, need, *a: made.append(need) or real(ctx, lib, need, *a)))
    with torch.no_grad():
        y, S = v7_cpu.wkv7_cpu(**x)
    assert made == [False] and not y.requires_grad
    with torch.no_grad():
        ref_y, ref_S = wkv7_reference(**x)
    assert torch.allclose(y, ref_y, atol=1e-4) and torch.allclose(S, ref_S, atol=1e-4)


def test_self_check_passes_and_auto_uses_cpu(lib):
    assert dispatch.cpu_ready() is True
    assert dispatch.resolve("wkv7", "auto", torch.device("cpu"), torch.float32) == "cpu"
    assert dispatch.resolve("wkv7", "auto", torch.device("cpu"), torch.float64) == "chunked"
    assert dispatch.resolve("wkv6", "auto", torch.device("cpu"), torch.float32) == "chunked"
    x, s0 = cast(v7_inputs(1, 40, 2, 8), torch.float32), _state(1, 2, 8).float()
    y_auto, s_auto = wkv7(**x, state=s0, backend="auto")
    y_cpu, s_cpu = wkv7(**x, state=s0, backend="cpu")
    assert torch.equal(y_auto, y_cpu) and torch.equal(s_auto, s_cpu)
    y_ch, _ = wkv7_chunked(**x, state=s0)
    assert (y_auto - y_ch).abs().max() < 1e-4 * y_ch.abs().max()


def test_positive_log_decay_is_refused(lib):
    x = cast(v7_inputs(1, 20, 1, 8), torch.float32)
    x["w"] = x["w"].exp()  # the decay itself instead of its log
    with pytest.raises(ValueError, match=r"log-decay w must be finite and <= 0.*not the raw"):
        wkv7(**x, backend="cpu")


def test_build_without_openmp_uses_python_threads_and_agrees(lib, monkeypatch, tmp_path):
    """A compiler without OpenMP gives a library whose parts run on Python threads; its results equal the
    OpenMP build's bit for bit (the same ranges, the same arithmetic), for wkv7 and the mixes."""
    monkeypatch.setenv("RWKV_CPU_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(build, "FLAG_SETS", [build.CFLAGS + ["-march=native"]])
    plain = build.build_c()
    assert plain.openmp is False and lib.openmp is True
    inputs, s0 = cast(v7_inputs(3, 37, 2, 64, seed=11), torch.float32), _state(3, 2, 64).float()
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = forward_backward(_cpu(lib), inputs, s0)
        b = forward_backward(_cpu(plain), inputs, s0)
        x, x_prev = torch.randn(2, 9, 32), torch.randn(2, 32)
        mixes = [torch.randn(1, 1, 32) for _ in range(3)]
        ma = mix_cpu.token_shift_mix_with(lib, x, x_prev, None, mixes)
        mb = mix_cpu.token_shift_mix_with(plain, x, x_prev, None, mixes)
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(p, q) for p, q in zip(ma, mb))


