"""Optimizer (rwkv/training/optim.py): parameter groups and LR schedule (docs/model-spec.md §1.6)."""

import math

import pytest
import torch

from rwkv.model import RWKVConfig, build_model
from rwkv.training.optim import build_optimizer, lr_at, param_groups

# docs/model-spec.md §1.6, transcribed per version for a 2-layer model with weight_decay 0.1: parameter name
# (after "blocks.i." for block parameters) → (lr scale, weight decay). Written from the spec's rules, not
# from the code: D = the decay group (wd on, 1×), ONE = 1× without decay.
D, ONE, TWO = (1.0, 0.1), (1.0, 0.0), (2.0, 0.0)
TOP = {"emb.weight": D, "head.weight": D, "ln_out.weight": ONE, "ln_out.bias": ONE,
       "blocks.0.ln0.weight": ONE, "blocks.0.ln0.bias": ONE}
COMMON_BLOCK = {"ln1.weight": ONE, "ln1.bias": ONE, "ln2.weight": ONE, "ln2.bias": ONE,
                "att.receptance.weight": D, "att.key.weight": D, "att.value.weight": D, "att.output.weight": D,
                "att.ln_x.weight": ONE, "att.ln_x.bias": ONE, "ffn.key.weight": D, "ffn.value.weight": D}
GROUP_TABLES = {
    # x070, current train_temp: only att.w0 is 2× (with or without layerwise_lr)
    ("x070", False): {**{f"att.x_{c}": ONE for c in "rwkvag"}, "att.w1": ONE, "att.w2": ONE, "att.w0": TWO,
                      "att.a1": ONE, "att.a2": ONE, "att.a0": ONE, "att.v1": ONE, "att.v2": ONE, "att.v0": ONE,
                      "att.g1": ONE, "att.g2": ONE, "att.k_k": ONE, "att.k_a": ONE, "att.r_k": ONE,
                      "ffn.x_k": ONE},
    # x060 with the RWKV-v5 folder's layerwise_lr (its default): _w1/_w2 1× before the time_decay rule
    ("x060", True): {**{f"att.time_maa_{c}": ONE for c in "xwkvrg"}, "att.time_maa_w1": ONE,
                     "att.time_maa_w2": ONE, "att.time_decay": TWO, "att.time_decay_w1": ONE,
                     "att.time_decay_w2": ONE, "att.time_faaaa": ONE, "att.gate.weight": D,
                     "ffn.time_maa_k": ONE, "ffn.time_maa_r": ONE, "ffn.receptance.weight": D},
    # x060 without it: no 2× group at all
    ("x060", False): {**{f"att.time_maa_{c}": ONE for c in "xwkvrg"}, "att.time_maa_w1": ONE,
                      "att.time_maa_w2": ONE, "att.time_decay": ONE, "att.time_decay_w1": ONE,
                      "att.time_decay_w2": ONE, "att.time_faaaa": ONE, "att.gate.weight": D,
                      "ffn.time_maa_k": ONE, "ffn.time_maa_r": ONE, "ffn.receptance.weight": D},
    ("x052", True): {**{f"att.time_mix_{c}": ONE for c in "kvrg"}, "att.time_decay": TWO, "att.time_faaaa": ONE,
                     "att.gate.weight": D, "ffn.time_mix_k": ONE, "ffn.time_mix_r": ONE,
                     "ffn.receptance.weight": D},
}
GROUP_TABLES["x070", True] = GROUP_TABLES["x070", False]


def expected_groups(model, version, layerwise):
    table = {**COMMON_BLOCK, **GROUP_TABLES[version, layerwise]}
    want = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = n.split(".", 2)[2] if n.startswith("blocks.") and not n.startswith("blocks.0.ln0") else n
        want[n] = TOP[n] if n in TOP else table[key]  # a KeyError here is a parameter the table misses
    return want


@pytest.mark.parametrize("version,layerwise", sorted(GROUP_TABLES))
def test_official_parameter_groups(version, layerwise):
    model = build_model(RWKVConfig(version=version, n_layer=2, n_embd=64, head_size=16, vocab_size=100))
    got = {n: (g["lr_scale"], g["weight_decay"]) for g in param_groups(model, 0.1, layerwise) for n in g["names"]}
    assert got == expected_groups(model, version, layerwise)
    if version == "x070":
        assert "blocks.0.att.v1" not in got  # frozen, unused in layer 0
    no_wd = {n: (g["lr_scale"], g["weight_decay"]) for g in param_groups(model, 0.0, layerwise) for n in g["names"]}
    assert no_wd == {n: (scale, 0.0) for n, (scale, _) in got.items()}


def test_time_first_is_3x_with_layerwise_lr():
    """RWKV-4's `time_first` (no version here has it): 3× with layerwise_lr, 1× without."""
    m = torch.nn.Module()
    m.att = torch.nn.Module()
    m.att.time_first = torch.nn.Parameter(torch.zeros(4))
    assert [g["lr_scale"] for g in param_groups(m, 0.1, True)] == [3.0]
    assert [g["lr_scale"] for g in param_groups(m, 0.1, False)] == [1.0]


def test_optimizer_is_decoupled_adamw_with_groups():
    model = build_model(RWKVConfig(n_layer=1, n_embd=32, head_size=16, vocab_size=10))
    opt = build_optimizer(param_groups(model, 0.01), 1e-3, (0.9, 0.99), 1e-18)
    assert isinstance(opt, torch.optim.AdamW)
    assert {(g["lr_scale"], g["weight_decay"]) for g in opt.param_groups} == {(1.0, 0.0), (2.0, 0.0), (1.0, 0.01)}
    assert opt.defaults["betas"] == (0.9, 0.99) and opt.defaults["eps"] == 1e-18


def official_lr(step, *, lr_init, lr_final, warmup_steps, ctx_bsz, exit_tokens):
    """docs/model-spec.md §1.6 as written: token progress after the warm-up's tokens, cosine, warm-up factor."""
    progress = (step * ctx_bsz - warmup_steps * ctx_bsz) / (exit_tokens - warmup_steps * ctx_bsz)
    progress = min(max(progress, 0.0), 1.0)
    f = lr_final / lr_init
    lr = lr_init * ((0.5 + f / 2) + (0.5 - f / 2) * math.cos(math.pi * progress))
    if step < warmup_steps:
        lr *= 0.01 + 0.99 * step / warmup_steps
    return lr


def test_token_budget_schedule_equals_the_official_formula():
    kw = dict(lr_init=6e-4, lr_final=6e-5, warmup_steps=10)
    ctx_bsz, budget = 512 * 16, 100 * 512 * 16
    for step in (0, 3, 9, 10, 11, 37, 60, 99, 100, 140):
        want = official_lr(step, ctx_bsz=ctx_bsz, exit_tokens=budget, **kw)
        got = lr_at(step, step * ctx_bsz, schedule="cosine", total_tokens=budget, warmup_tokens=10 * ctx_bsz, **kw)
        assert got == pytest.approx(want, rel=1e-12), step
        # without the recorded warm-up tokens (an older checkpoint) the mean tokens per step stands in
        assert lr_at(step, step * ctx_bsz, schedule="cosine", total_tokens=budget, **kw) == pytest.approx(want)


def test_lr_schedule_warmup_cosine_linear_and_steps():
    kw = dict(lr_init=6e-4, lr_final=6e-5, warmup_steps=10)
    assert lr_at(0, 0, schedule="cosine", total_steps=110, **kw) == pytest.approx(6e-4 * 0.01)
    assert lr_at(5, 0, schedule="cosine", total_steps=110, **kw) == pytest.approx(6e-4 * (0.01 + 0.99 * 0.5))
    assert lr_at(10, 0, schedule="cosine", total_steps=110, **kw) == pytest.approx(6e-4)
    assert lr_at(60, 0, schedule="cosine", total_steps=110, **kw) == pytest.approx((6e-4 + 6e-5) / 2)
    assert lr_at(110, 0, schedule="cosine", total_steps=110, **kw) == pytest.approx(6e-5)
    assert lr_at(60, 0, schedule="linear", total_steps=110, **kw) == pytest.approx((6e-4 + 6e-5) / 2)
    assert lr_at(3, 0, schedule="constant", **kw) == pytest.approx(6e-4 * (0.01 + 0.99 * 0.3))
