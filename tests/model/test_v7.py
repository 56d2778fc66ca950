"""x070 model: names/order/shapes (docs/model-spec.md §1.2), state carrying, document reset, dtypes, grad_cp."""

import pytest
import torch

from rwkv.model import RWKVConfig, build_model, zero_state
from tests.support.models import random_model

ATT_ORDER = ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w1", "w2", "w0", "a1", "a2", "a0", "v1", "v2", "v0",
             "g1", "g2", "k_k", "k_a", "r_k", "receptance.weight", "key.weight", "value.weight",
             "output.weight", "ln_x.weight", "ln_x.bias"]


def official_keys(L):
    keys = ["emb.weight"]
    for l in range(L):
        keys += [f"blocks.{l}.ln1.weight", f"blocks.{l}.ln1.bias", f"blocks.{l}.ln2.weight", f"blocks.{l}.ln2.bias"]
        if l == 0:
            keys += ["blocks.0.ln0.weight", "blocks.0.ln0.bias"]
        keys += [f"blocks.{l}.att.{n}" for n in ATT_ORDER]
        keys += [f"blocks.{l}.ffn.x_k", f"blocks.{l}.ffn.key.weight", f"blocks.{l}.ffn.value.weight"]
    return keys + ["ln_out.weight", "ln_out.bias", "head.weight"]


def test_parameter_names_order_and_shapes():
    cfg = RWKVConfig(n_layer=3, n_embd=768, vocab_size=65536)
    with torch.device("meta"):
        sd = build_model(cfg).state_dict()
    assert list(sd) == official_keys(3)
    C, H, N = 768, 12, 64
    # docs/model-spec.md §1.1
    assert (cfg.d_decay_lora, cfg.d_aaa_lora, cfg.d_mv_lora, cfg.d_gate_lora) == (64, 64, 32, 128)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["emb.weight"] == (65536, C) and shapes["head.weight"] == (65536, C)
    assert shapes["blocks.1.att.x_r"] == (1, 1, C) and shapes["blocks.1.att.r_k"] == (H, N)
    assert shapes["blocks.1.att.w1"] == (C, 64) and shapes["blocks.1.att.w2"] == (64, C)
    assert shapes["blocks.1.att.g1"] == (C, 128) and shapes["blocks.1.att.v2"] == (32, C)
    assert shapes["blocks.2.ffn.key.weight"] == (4 * C, C) and shapes["blocks.2.ffn.value.weight"] == (C, 4 * C)
    # total parameter count formula of docs/model-spec.md §1.1 (L12-C768-V65536 = 191,084,544)
    cfg12 = RWKVConfig(n_layer=12, n_embd=768, vocab_size=65536)
    with torch.device("meta"):
        assert sum(p.numel() for p in build_model(cfg12).parameters()) == 191_084_544


def _assert_states_close(s1, s2, atol):
    for l1, l2 in zip(s1, s2):
        for a, b in zip(l1, l2):
            torch.testing.assert_close(a, b, atol=atol, rtol=0)


@pytest.mark.parametrize("split", [[1, 16, 20], [17, 63, 20], [50, 50]])
def test_segments_equal_one_call(split):
    model = random_model(n_layer=2, n_embd=64, head_size=16, vocab_size=97).double()
    idx = torch.randint(0, 97, (2, sum(split)))
    with torch.no_grad():
        whole, s_whole = model(idx)
        outs, st, pos = [], None, 0
        for n in split:
            o, st = model(idx[:, pos:pos + n], st)
            outs.append(o)
            pos += n
    torch.testing.assert_close(torch.cat(outs, 1), whole, atol=1e-10, rtol=0)
    _assert_states_close(st, s_whole, 1e-10)


def test_token_by_token_equals_parallel_fp32():
    model = random_model(n_layer=2, n_embd=128, vocab_size=300)
    idx = torch.randint(0, 300, (1, 40))
    with torch.no_grad():
        whole, s_whole = model(idx)
        rows, st = [], None
        for t in range(40):
            o, st = model(idx[:, t:t + 1], st)
            rows.append(o)
    torch.testing.assert_close(torch.cat(rows, 1), whole, atol=2e-4, rtol=1e-4)
    _assert_states_close(st, s_whole, 1e-4)


def test_state_is_a_value_never_mutated():
    model = random_model(n_layer=2, n_embd=64, head_size=16, vocab_size=50)
    st = zero_state(model.cfg, 2)
    st = tuple(tuple(t + torch.randn_like(t) for t in layer) for layer in st)
    before = [t.clone() for layer in st for t in layer]
    with torch.no_grad():
        model(torch.randint(0, 50, (2, 9)), st)
    assert all(torch.equal(a, b) for a, b in zip(before, [t for layer in st for t in layer]))


def test_document_reset_equals_documents_alone():
    """With reset at a document start, each document's logits equal running it alone (docs/tbptt.md "Packed rows")."""
    model = random_model(n_layer=2, n_embd=64, head_size=16, vocab_size=50).double()
    d1, d2, d3 = (torch.randint(0, 50, (1, n)) for n in (13, 40, 21))
    row = torch.cat([d1, d2, d3], 1)
    reset = torch.zeros(1, row.shape[1], dtype=torch.bool)
    reset[0, 13] = reset[0, 53] = True
    with torch.no_grad():
        packed, _ = model(row, reset=reset)
        alone = torch.cat([model(d)[0] for d in (d1, d2, d3)], 1)
    torch.testing.assert_close(packed, alone, atol=1e-10, rtol=0)


def test_bf16_model_keeps_wkv_state_fp32():
    model = random_model(n_layer=2, n_embd=128, vocab_size=200)
    idx = torch.randint(0, 200, (2, 24))
    with torch.no_grad():
        ref, _ = model(idx)
        out, st = model.to(torch.bfloat16)(idx)
    assert out.dtype == torch.bfloat16
    assert all(layer[1].dtype == torch.float32 for layer in st)
    assert all(layer[0].dtype == torch.bfloat16 for layer in st)
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 5e-2  # bf16 weights and activations: ~3 significant digits


def test_grad_cp_gives_identical_gradients():
    base = random_model(n_layer=2, n_embd=64, head_size=16, vocab_size=50).double()
    idx = torch.randint(0, 50, (2, 20))
    grads, block_calls, calls = [], [], []
    hooks = [b.register_forward_pre_hook(lambda *_: calls.append(1)) for b in base.blocks]
    for cp in (False, True):
        base.grad_cp = cp
        base.zero_grad()
        calls.clear()
        logits, _ = base(idx)
        logits.square().mean().backward()
        block_calls.append(len(calls))
        grads.append({n: p.grad.clone() for n, p in base.named_parameters() if p.grad is not None})
    for h in hooks:
        h.remove()
    # checkpointing really happened: each block's forward started again in backward (else equal gradients prove
    # nothing); pre-hooks, because the non-reentrant recomputation stops early, before forward hooks
    assert block_calls == [2, 4], block_calls
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-12, rtol=0)


def test_layer0_value_residual_params_frozen():
    model = random_model(n_layer=2, n_embd=64, head_size=16, vocab_size=50)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
