"""Fixtures of the op tests."""

import pytest

from rwkv.ops.v7 import chunked as w7c


@pytest.fixture
def small_blocks(monkeypatch):
    """Make `blockwise_scan` use blocks of at most two chunks, so that multi-block recomputation and the
    state hand-over between blocks are exercised at test sizes (the default block holds the whole
    sequence there)."""

    def tiny(T_pad, c, B, H, N, device):
        return [(t0, min(t0 + 2 * c, T_pad)) for t0 in range(0, T_pad, 2 * c)]

    monkeypatch.setattr(w7c, "block_bounds", tiny)


@pytest.fixture
def one_thread():
    """The op tests use tiny tensors: one intra-op thread is as fast, and it does not stall when another
    process occupies the second core (a 2-thread OpenMP team then waits for a time slice on every op,
    which made these tests 100x slower on the shared 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def lib():
    """The C CPU kernels' library (rwkv/ops/build.py); its tests fail, not skip, when it does not build:
    the machines here have a C compiler, and the trainer's CPU speed depends on it."""
    from rwkv.ops import build

    lib = build.library()
    assert lib is not None, f"the C kernels did not build: {build._lib}"
    return lib
