"""Version-independent model invariants (docs/design.md §3.2, §5.6), shared by tests/model/test_v6.py and
test_v5.py: segmented == whole, token-by-token == parallel, document reset == documents alone, the
state is a value, grad_cp gives identical gradients, bf16 keeps the WKV state in fp32."""

import torch

from rwkv.model import zero_state
from tests.support.models import random_model


def tiny(version, dtype=torch.float64, **kw):
    """L2 C64 N16 V97: two heads, small enough for fp64 on 2 CPU cores."""
    kw = {"n_layer": 2, "n_embd": 64, "head_size": 16, "vocab_size": 97, **kw}
    return random_model(version, **kw).to(dtype)


def official_keys(L, att, ffn):
    """Official key order (docs/model-spec.md §1.2 / §2): emb; per layer ln1, ln2, (ln0), att.*, ffn.*; ln_out, head."""
    keys = ["emb.weight"]
    for l in range(L):
        keys += [f"blocks.{l}.{n}.{p}" for n in ("ln1", "ln2") for p in ("weight", "bias")]
        if l == 0:
            keys += ["blocks.0.ln0.weight", "blocks.0.ln0.bias"]
        keys += [f"blocks.{l}.att.{n}" for n in att] + [f"blocks.{l}.ffn.{n}" for n in ffn]
    return keys + ["ln_out.weight", "ln_out.bias", "head.weight"]


def assert_states_close(s1, s2, atol, rtol=0.0):
    assert len(s1) == len(s2)
    for l1, l2 in zip(s1, s2):
        for a, b in zip(l1, l2):
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def check_segments_equal_whole(version, split):
    model = tiny(version)
    idx = torch.randint(0, 97, (2, sum(split)))
    with torch.no_grad():
        whole, s_whole = model(idx)
        outs, st, pos = [], None, 0
        for n in split:
            o, st = model(idx[:, pos:pos + n], st)
            outs.append(o)
            pos += n
    torch.testing.assert_close(torch.cat(outs, 1), whole, atol=1e-10, rtol=0)
    assert_states_close(st, s_whole, 1e-10)


def check_token_by_token_equals_parallel_fp32(version, T=40):
    model = random_model(version, n_layer=2, n_embd=128, vocab_size=300)
    idx = torch.randint(0, 300, (1, T))
    with torch.no_grad():
        whole, s_whole = model(idx)
        rows, st = [], None
        for t in range(T):
            o, st = model(idx[:, t:t + 1], st)
            rows.append(o)
    torch.testing.assert_close(torch.cat(rows, 1), whole, atol=2e-4, rtol=1e-4)
    assert_states_close(st, s_whole, 1e-4, 1e-4)


def check_state_never_mutated(version):
    model = tiny(version, dtype=torch.float32)
    st = tuple(tuple(t + torch.randn_like(t) for t in layer) for layer in zero_state(model.cfg, 2))
    before = [t.clone() for layer in st for t in layer]
    with torch.no_grad():
        _, new = model(torch.randint(0, 97, (2, 9)), st)
    assert all(torch.equal(a, b) for a, b in zip(before, [t for layer in st for t in layer]))
    assert all(n is not o for nl, ol in zip(new, st) for n, o in zip(nl, ol))


def check_reset_equals_documents_alone(version):
    """reset[t] = a document starts at t: each document's logits equal running it alone (docs/tbptt.md "Packed rows"),
    even when the row starts from a non-zero carried state."""
    model = tiny(version)
    d1, d2, d3 = (torch.randint(0, 97, (1, n)) for n in (13, 40, 21))
    row = torch.cat([d1, d2, d3], 1)
    reset = torch.zeros(1, row.shape[1], dtype=torch.bool)
    reset[0, 13] = reset[0, 53] = True
    with torch.no_grad():
        _, carried = model(torch.randint(0, 97, (1, 7)))
        packed, _ = model(row, carried, reset=reset)
        alone = torch.cat([model(d1, carried)[0], model(d2)[0], model(d3)[0]], 1)
    torch.testing.assert_close(packed, alone, atol=1e-10, rtol=0)


def check_grad_cp_identical_grads(version):
    model = tiny(version)
    idx = torch.randint(0, 97, (2, 20))
    grads, block_calls, calls = [], [], []
    hooks = [b.register_forward_pre_hook(lambda *_: calls.append(1)) for b in model.blocks]
    for cp in (False, True):
        model.grad_cp = cp
        model.zero_grad()
        calls.clear()
        logits, _ = model(idx)
        logits.square().mean().backward()
        block_calls.append(len(calls))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for h in hooks:
        h.remove()
    # checkpointing really happened: each block's forward started again in backward (else equal gradients prove
    # nothing); pre-hooks, because the non-reentrant recomputation stops early, before forward hooks
    L = len(model.blocks)
    assert block_calls == [L, 2 * L], block_calls
    # v5/v6 have no unused parameters (unlike x070's layer-0 v0/v1/v2): every one gets a gradient,
    # which DDP relies on
    assert grads[0].keys() == grads[1].keys() == {n for n, _ in model.named_parameters()}
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-12, rtol=0, msg=n)


def check_gradient_reaches_carried_state(version):
    """Full BPTT needs d(loss)/d(state in) for every carried tensor (docs/design.md §3.4)."""
    model = tiny(version)
    _, st = model(torch.randint(0, 97, (2, 5)))
    st = tuple(tuple(t.detach().requires_grad_(True) for t in layer) for layer in st)
    logits, _ = model(torch.randint(0, 97, (2, 6)), st)
    logits.square().mean().backward()
    for layer in st:
        assert all(t.grad is not None and t.grad.abs().max() > 0 for t in layer)


def check_bf16_keeps_wkv_state_fp32(version):
    model = random_model(version, n_layer=2, n_embd=128, vocab_size=200)
    idx = torch.randint(0, 200, (2, 24))
    with torch.no_grad():
        ref, _ = model(idx)
        out, st = model.to(torch.bfloat16)(idx)
        out2, st2 = model(idx[:, 12:], model(idx[:, :12])[1])  # a bf16 model carries its own state
    assert out.dtype == torch.bfloat16 and out2.dtype == torch.bfloat16
    assert all(layer[1].dtype == torch.float32 and layer[0].dtype == torch.bfloat16 for layer in st)
    assert all(layer[1].dtype == torch.float32 for layer in st2)
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 5e-2  # bf16 weights and activations: ~3 significant digits
    err2 = (out2.float() - ref[:, 12:]).abs().max() / ref.abs().max()
    assert err2 < 5e-2
