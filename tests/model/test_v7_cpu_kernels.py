"""x070 with the C CPU kernels (rwkv/ops/{v7,mix,keys}/cpu.py: WKV-7, token-shift mixes, key preparation) equals
x070 with the PyTorch implementations: logits and every parameter gradient, fp32, with the state carried
between two calls (gradients through the WKV state and x_prev) and a document reset inside a row."""

from __future__ import annotations

import pytest
import torch

from rwkv.model import RWKVConfig, build_model
from rwkv.ops import dispatch
from rwkv.ops.keys import cpu as keys_cpu
from rwkv.ops.mix import cpu as mix_cpu
from rwkv.ops.v7 import cpu as v7_cpu


@pytest.mark.parametrize("head_size", [16, 64])  # the portable C path and the AVX-512 one (where built)
def test_x070_with_and_without_the_c_kernels(monkeypatch, head_size):
    assert all(dispatch.cpu_ready(op) for op in ("wkv7", "mix", "keys"))
    torch.manual_seed(0)
    model = build_model(RWKVConfig(n_layer=2, n_embd=128, head_size=head_size, vocab_size=50), init=True)
    for p in model.parameters():  # trained-looking values: zero-initialised mixes would hide errors
        p.data.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, 50, (2, 41))
    reset = torch.zeros(2, 41, dtype=torch.bool)
    reset[1, 20] = True

    def run():
        model.zero_grad(set_to_none=True)
        first, state = model(idx[:, :7])  # the carried state keeps its graph
        logits, _ = model(idx[:, 7:], state=state, reset=reset[:, 7:])
        (logits.square().mean() + first.square().mean()).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # count the C entry points the dispatch reaches, so that the two runs are known to take different paths
    # (a dispatch that cached its choice would otherwise compare PyTorch with itself and pass)
    calls = {"wkv7_cpu": 0, "token_shift_mix_cpu": 0, "wkv7_keys_cpu": 0}

    def counting(name, real):
        def counted(*a, **kw):
            calls[name] += 1
            return real(*a, **kw)
        return counted

    home = {"wkv7_cpu": v7_cpu, "token_shift_mix_cpu": mix_cpu, "wkv7_keys_cpu": keys_cpu}
    for name in calls:
        monkeypatch.setattr(home[name], name, counting(name, getattr(home[name], name)))

    fast_logits, fast_grads = run()
    assert all(n > 0 for n in calls.values()), calls  # every C kernel ran in the model
    calls.update(dict.fromkeys(calls, 0))
    monkeypatch.setattr(dispatch, "_cpu_verdicts", {"wkv7": False, "mix": False, "keys": False})
    ref_logits, ref_grads = run()
    assert not any(calls.values()), calls  # and none in the PyTorch run
    assert (fast_logits - ref_logits).abs().max() < 1e-5 * ref_logits.abs().max()
    unused = {n for n, _ in model.named_parameters()} - set(ref_grads)  # layer 0 has no value residual
    assert fast_grads.keys() == ref_grads.keys() and unused == {f"blocks.0.att.v{i}" for i in "012"}
    for n in ref_grads:
        scale = ref_grads[n].abs().max().clamp_min(1e-12)
        assert (fast_grads[n] - ref_grads[n]).abs().max() < 1e-4 * scale, n
