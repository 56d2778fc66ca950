"""The dispatcher's readiness and first-use self-checks (rwkv/ops/dispatch.py): `cuda` is inert without a GPU
and never chosen for CPU tensors, its readiness is cached per op and device, its self-check accepts the CPU
emulations of the kernels (tests/ops/cuda_wkv{7,6}_emulation.py) and rejects a broken one, also under
inference mode; a failed C self-check keeps `auto` on chunked. GPU (`cuda`, skipped without one): `auto`
picks the built kernels.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch

from rwkv.ops import build, common, dispatch, wkv7
from rwkv.ops.v7 import cuda as v7_cuda
from tests.ops.cuda_wkv6_emulation import Wkv6Emulation
from tests.ops.cuda_wkv7_emulation import BrokenWkv7Emulation, Wkv7Emulation


def test_ready_is_false_on_cpu_and_builds_nothing():
    assert dispatch.cuda_ready("wkv7", torch.device("cpu")) is False
    assert dispatch.cuda_ready("wkv6", "cpu") is False
    assert dispatch.cuda_ready("wkv5", torch.device("cpu")) is False
    if not torch.cuda.is_available():
        assert dispatch.cuda_ready("wkv7", torch.device("cuda", 0)) is False
        assert build._extensions.get("wkv7") is None or isinstance(
            build._extensions["wkv7"], Exception)


def test_ready_caches_one_self_check_per_op_and_device(monkeypatch):
    checks = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "build_cuda", lambda name: Wkv7Emulation())
    monkeypatch.setattr(build, "_extensions", {})
    monkeypatch.setattr(dispatch, "_cuda_verdicts", {})
    monkeypatch.setattr(dispatch, "cuda_self_check",
                        lambda op, dev, ext: checks.append((op, str(dev))) or dev.index == 0)
    for _ in range(3):
        assert dispatch.cuda_ready("wkv7", torch.device("cuda", 0)) is True
        assert dispatch.cuda_ready("wkv7", torch.device("cuda", 1)) is False
    assert checks == [("wkv7", "cuda:0"), ("wkv7", "cuda:1")]


def test_auto_never_resolves_to_cuda_on_cpu():
    """CPU tensors get a CPU backend (the C kernel or chunked, tests/ops/v7/test_cpu.py), never cuda."""
    r, w, k, v, a, b, s0, _, _ = v7_cuda.inputs(1, 5, 1, 64, "cpu", torch.Generator())
    choice = dispatch.resolve("wkv7", "auto", torch.device("cpu"), r.dtype)
    assert choice in ("cpu", "chunked")
    y_auto, s_auto = wkv7(r, w, k, v, a, b, state=s0, backend="auto")
    y_cpu, s_cpu = wkv7(r, w, k, v, a, b, state=s0, backend=choice)
    assert torch.equal(y_auto, y_cpu) and torch.equal(s_auto, s_cpu)


def test_self_check_accepts_the_emulation_and_rejects_a_broken_kernel(caplog):
    assert dispatch.cuda_self_check("wkv7", "cpu", Wkv7Emulation()) is True
    with caplog.at_level(logging.ERROR, logger="rwkv.ops"):
        assert dispatch.cuda_self_check("wkv7", "cpu", BrokenWkv7Emulation()) is False
    assert re.search(r"self-check FAILED .* max relative error [0-9.e+-]+ in \w+", caplog.text)


def test_self_check_works_when_first_called_under_inference_mode():
    with torch.inference_mode():
        assert dispatch.cuda_self_check("wkv7", "cpu", Wkv7Emulation()) is True


def test_self_check_v6_v5_accept_the_emulation():
    assert dispatch.cuda_self_check("wkv6", "cpu", Wkv6Emulation()) is True
    assert dispatch.cuda_self_check("wkv5", "cpu", Wkv6Emulation()) is True


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["wkv7", "wkv6", "wkv5"])
def test_gpu_ready_and_auto_picks_cuda(op):
    dev = torch.device("cuda", torch.cuda.current_device())
    assert dispatch.cuda_ready(op, dev), "build or self-check failed: see the rwkv.ops log"
    assert dispatch.resolve(op, "auto", dev) == "cuda"


def test_failed_self_check_keeps_chunked(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_cpu_verdicts", {})
    monkeypatch.setattr(common, "_warned", set())
    monkeypatch.setattr(dispatch, "cpu_self_check", lambda lib, op="wkv7": (False, "y 3.0e-01"))
    with caplog.at_level(logging.WARNING, logger="rwkv.ops"):
        assert dispatch.cpu_ready() is False
    assert dispatch.resolve("wkv7", "auto", torch.device("cpu"), torch.float32) == "chunked"
    assert any("failed its self-check" in r.getMessage() and "y 3.0e-01" in r.getMessage()
               for r in caplog.records)
