"""The fast kernels' one-time self-check may first run inside a `torch.utils.checkpoint` block (grad_cp):
it must pass there and leave the checkpointed backward intact."""

import torch

from rwkv.model import RWKVConfig, build_model
from rwkv.ops import build, dispatch


def test_first_kernel_use_inside_grad_cp(monkeypatch):
    if build.library() is None:  # no C compiler: nothing is checked on first use
        return
    monkeypatch.setattr(dispatch, "_cpu_verdicts", {})  # as in a fresh process: no check has run yet
    torch.manual_seed(0)
    cfg = RWKVConfig(n_layer=2, n_embd=128, head_size=64, vocab_size=50)
    model = build_model(cfg, grad_cp=True, init=True)
    x = torch.randint(0, 50, (2, 20))
    logits, _ = model(x)
    logits.float().pow(2).mean().backward()  # CheckpointError here before the fix
    assert all(dispatch._cpu_verdicts.get(op) for op in ("wkv7", "mix", "keys")), dispatch._cpu_verdicts
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    plain = build_model(cfg, init=False)
    plain.load_state_dict(model.state_dict())
    logits, _ = plain(x)
    logits.float().pow(2).mean().backward()
    for n, p in plain.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)  # same kernels: round-off
