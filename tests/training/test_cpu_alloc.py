"""rwkv/training/cpu_alloc.py: the two glibc malloc settings, observed by what happens to the resident
memory when a 4 MiB tensor is freed. Each case runs in a fresh process (mallopt settings are per process
and cannot be undone)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

PROBE = """
import os, sys, torch
from rwkv.training import cpu_alloc
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
for call in sys.argv[1:]:
    assert getattr(cpu_alloc, call)(), call
x = torch.ones(1 << 20)  # 4 MiB: above the lean mmap threshold, far below the reuse one
before = rss()
del x
print((before - rss()) / 2**20)
"""


def freed_mib(*calls: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, *calls], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")


def test_reuse_keeps_freed_pages_for_the_next_step():
    assert freed_mib("tune_cpu_allocator") < 0.5


def test_low_memory_returns_freed_tensors_to_the_os():
    assert freed_mib("prefer_low_memory") > 3.5


def test_low_memory_is_not_undone_by_a_later_tune():
    """The entry points call tune_cpu_allocator(); a PEFT run's prefer_low_memory() must win whatever the
    order."""
    assert freed_mib("prefer_low_memory", "tune_cpu_allocator") > 3.5


def test_peft_setup_turns_on_low_memory(monkeypatch):
    from rwkv.model import RWKVConfig, build_model
    from rwkv.peft import training as peft_training
    from rwkv.training import cpu_alloc

    calls = []
    monkeypatch.setattr(cpu_alloc, "prefer_low_memory", lambda: calls.append(1) or True)
    model = build_model(RWKVConfig(n_layer=1, n_embd=64, head_size=16, vocab_size=32))
    peft_training.setup(model, SimpleNamespace(peft=None, load_model=None))
    assert calls == []  # a full fine-tune keeps the page-reusing setting
    peft_training.setup(model, SimpleNamespace(peft={"state_tuning": True}, load_model="base.pth"))
    assert calls == [1]
