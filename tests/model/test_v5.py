"""x052 model: names/order/shapes (docs/model-spec.md §2.2), state carrying, document reset, dtypes, grad_cp."""

import pytest
import torch
import torch.nn.functional as F

from rwkv.model import RWKVConfig, build_model
from rwkv.model.v5 import RWKV5
from tests.support import model_checks as checks
from tests.support.models import random_model

# Official registration order (RWKV-LM RWKV-v5/src/model.py, RWKV_Tmix_x052 / RWKV_CMix_x052)
ATT_ORDER = ["time_mix_k", "time_mix_v", "time_mix_r", "time_mix_g", "time_decay", "time_faaaa",
             "receptance.weight", "key.weight", "value.weight", "output.weight", "gate.weight",
             "ln_x.weight", "ln_x.bias"]
FFN_ORDER = ["time_mix_k", "time_mix_r", "key.weight", "receptance.weight", "value.weight"]


def test_parameter_names_order_and_shapes():
    cfg = RWKVConfig(version="x052", n_layer=3, n_embd=768, vocab_size=65536)
    assert cfg.d_mix_lora is None and cfg.d_decay_lora is None  # x052 has no LoRA
    with torch.device("meta"):
        model = build_model(cfg)
    assert isinstance(model, RWKV5)
    sd = model.state_dict()
    assert list(sd) == checks.official_keys(3, ATT_ORDER, FFN_ORDER)
    C, H, N, Fd = 768, 12, 64, 2688
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    a, f = "blocks.1.att.", "blocks.2.ffn."
    for name in ATT_ORDER[:4]:
        assert shapes[a + name] == (1, 1, C), name
    # time_decay is [H, N] in x052 (pip detects v5.2 from its second dimension, docs/model-spec.md §4.2)
    assert shapes[a + "time_decay"] == (H, N) and shapes[a + "time_faaaa"] == (H, N)
    for name in ("receptance", "key", "value", "output", "gate"):
        assert shapes[a + name + ".weight"] == (C, C)
    assert shapes[f + "time_mix_k"] == (1, 1, C) and shapes[f + "time_mix_r"] == (1, 1, C)
    assert shapes[f + "key.weight"] == (Fd, C) and shapes[f + "value.weight"] == (C, Fd)
    assert all(p.requires_grad for p in model.parameters())


def test_ln_x_equals_official_divided_groupnorm():
    """Official x052: GroupNorm(y / head_size_divisor, eps=1e-5); ours and pip's: GroupNorm(y, eps=64e-5)."""
    model = random_model("x052", n_layer=1, n_embd=128, vocab_size=10).double()
    ln_x = model.blocks[0].att.ln_x
    y = torch.randn(7, 128, dtype=torch.float64) * 3
    official = F.group_norm(y / 8, 2, ln_x.weight, ln_x.bias, eps=1e-5)
    torch.testing.assert_close(ln_x(y), official, atol=1e-12, rtol=0)


def test_mix_convention_is_complement_of_maa():
    """time_mix = 1 keeps the current token only (z·mix + z_prev·(1 − mix)), docs/model-spec.md §2.2: then the first
    token's logits do not depend on the carried x_prev."""
    model = random_model("x052", n_layer=2, n_embd=64, head_size=16, vocab_size=97).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "time_mix" in name:
                p.fill_(1.0)
    idx = torch.randint(0, 97, (1, 5))
    st = tuple((torch.randn(1, 64).double(), torch.zeros(1, 4, 16, 16).double(), torch.randn(1, 64).double())
               for _ in range(2))
    with torch.no_grad():
        torch.testing.assert_close(model(idx, st)[0], model(idx)[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("split", [[1, 16, 20], [17, 63, 20], [50, 50]])
def test_segments_equal_one_call(split):
    checks.check_segments_equal_whole("x052", split)


def test_token_by_token_equals_parallel_fp32():
    checks.check_token_by_token_equals_parallel_fp32("x052")


def test_state_is_a_value_never_mutated():
    checks.check_state_never_mutated("x052")


def test_document_reset_equals_documents_alone():
    checks.check_reset_equals_documents_alone("x052")


def test_grad_cp_gives_identical_gradients():
    checks.check_grad_cp_identical_grads("x052")


def test_gradient_reaches_carried_state():
    checks.check_gradient_reaches_carried_state("x052")


def test_bf16_model_keeps_wkv_state_fp32():
    checks.check_bf16_keeps_wkv_state_fp32("x052")
