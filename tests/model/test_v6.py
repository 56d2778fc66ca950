"""x060 model: names/order/shapes (docs/model-spec.md §2.1), state carrying, document reset, dtypes, grad_cp."""

import pytest
import torch

from rwkv.model import RWKVConfig, build_model, detach_state
from rwkv.model.v6 import RWKV6
from tests.support import model_checks as checks
from tests.support.models import random_model

# Official registration order (RWKV-LM RWKV-v5/src/model.py, RWKV_Tmix_x060 / RWKV_CMix_x060): the time_*
# tensors, then receptance, key, value, output, gate, ln_x; channel-mix time_maa_k/r, key, receptance, value.
ATT_ORDER = ["time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g",
             "time_maa_w1", "time_maa_w2", "time_decay", "time_decay_w1", "time_decay_w2", "time_faaaa",
             "receptance.weight", "key.weight", "value.weight", "output.weight", "gate.weight",
             "ln_x.weight", "ln_x.bias"]
FFN_ORDER = ["time_maa_k", "time_maa_r", "key.weight", "receptance.weight", "value.weight"]


def test_parameter_names_order_and_shapes():
    cfg = RWKVConfig(version="x060", n_layer=3, n_embd=768, vocab_size=65536)
    with torch.device("meta"):
        model = build_model(cfg)
    assert isinstance(model, RWKV6)
    sd = model.state_dict()
    assert list(sd) == checks.official_keys(3, ATT_ORDER, FFN_ORDER)
    C, H, N, F = 768, 12, 64, 2688  # F = int(3.5C // 32 · 32) (docs/model-spec.md §2)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    a, f = "blocks.1.att.", "blocks.2.ffn."
    for name in ATT_ORDER[:6] + ["time_decay"]:
        assert shapes[a + name] == (1, 1, C), name
    assert shapes[a + "time_maa_w1"] == (C, 5 * 32) and shapes[a + "time_maa_w2"] == (5, 32, C)
    assert shapes[a + "time_decay_w1"] == (C, 64) and shapes[a + "time_decay_w2"] == (64, C)
    assert shapes[a + "time_faaaa"] == (H, N)
    for name in ("receptance", "key", "value", "output", "gate"):
        assert shapes[a + name + ".weight"] == (C, C)
    assert shapes[a + "ln_x.weight"] == (C,)
    assert shapes[f + "time_maa_k"] == (1, 1, C) and shapes[f + "time_maa_r"] == (1, 1, C)
    assert shapes[f + "key.weight"] == (F, C) and shapes[f + "receptance.weight"] == (C, C)
    assert shapes[f + "value.weight"] == (C, F)
    assert model.blocks[0].att.ln_x.eps == 64e-5  # 1e-5 · head_size_divisor² (docs/model-spec.md §2.1)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("split", [[1, 16, 20], [17, 63, 20], [50, 50]])
def test_segments_equal_one_call(split):
    checks.check_segments_equal_whole("x060", split)


def test_token_by_token_equals_parallel_fp32():
    checks.check_token_by_token_equals_parallel_fp32("x060")


def test_state_is_a_value_never_mutated():
    checks.check_state_never_mutated("x060")


def test_document_reset_equals_documents_alone():
    checks.check_reset_equals_documents_alone("x060")


def test_grad_cp_gives_identical_gradients():
    checks.check_grad_cp_identical_grads("x060")


def test_gradient_reaches_carried_state():
    checks.check_gradient_reaches_carried_state("x060")


def test_bf16_model_keeps_wkv_state_fp32():
    checks.check_bf16_keeps_wkv_state_fp32("x060")


def test_extreme_decays_stay_finite():
    """The v6 log-decay −exp(ω) is unbounded below (docs/model-spec.md §2.1 / §3.6): channels that forget almost
    instantly (ω = 4: decay e^{−55}) next to channels that barely decay (ω = −12) must give finite
    outputs and gradients, and segmenting must not change them."""
    model = random_model("x060", n_layer=2, n_embd=64, head_size=16, vocab_size=97)
    with torch.no_grad():
        for block in model.blocks:
            td = block.att.time_decay
            td.copy_(torch.where(torch.arange(64) % 2 == 0, 4.0, -12.0).view_as(td))
    idx = torch.randint(0, 97, (2, 100))
    logits, st = model(idx)
    logits.square().mean().backward()
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        first, s1 = model(idx[:, :37])
        second, s2 = model(idx[:, 37:], s1)
    torch.testing.assert_close(torch.cat([first, second], 1), logits.detach(), atol=1e-4, rtol=1e-4)
    checks.assert_states_close(s2, detach_state(st), 1e-4, 1e-4)
