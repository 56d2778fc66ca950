"""Model-level PEFT: LoRA through peft on our modules, merge, state tuning as the initial state (first token
and every packed-document reset), and the exact state-tuning gradient under full BPTT."""

import pytest
import torch
import torch.nn.functional as F

from rwkv.errors import ConfigError
from rwkv.model import official_order
from rwkv.model.state import zero_state
from rwkv.peft import (
    STATE_KEY,
    apply_peft,
    attach_time_state,
    merge_peft,
    parse_peft,
    peft_param_groups,
    time_states,
)
from rwkv.training.segments import run_sample
from tests.support.models import random_model

VERSIONS = ["x070", "x060", "x052"]


def lora_model(version="x070", **lora):
    model = random_model(version, n_layer=2, n_embd=128, vocab_size=300)
    spec = parse_peft({"lora": {"r": 4, "lora_alpha": 8, **lora}})
    apply_peft(model, spec)
    with torch.no_grad():  # peft starts B at zero (a no-op adapter): give it values so merge has work
        g = torch.Generator().manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def set_states(model, seed=3, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in model.blocks:
            b.att.time_state.copy_(torch.randn(b.att.time_state.shape, generator=g) * scale)


def explicit_state(model, states, B, dtype=torch.float32):
    """Our ordinary state tuple with the WKV entry = the state file's tensor (x070 [value, key] as-is,
    v5/v6 transposed to their [key, value] layout): the oracle for what time_state must mean."""
    st = zero_state(model.cfg, B, dtype=dtype)
    out = []
    for i, (a, _, f) in enumerate(st):
        S = states[STATE_KEY.format(i)].to(torch.float64 if dtype == torch.float64 else torch.float32)
        S = S if model.cfg.version == "x070" else S.transpose(-1, -2)
        out.append((a, S.unsqueeze(0).expand(B, -1, -1, -1).clone(), f))
    return tuple(out)


def test_lora_keeps_module_names_and_freezes_the_base():
    model = lora_model()
    names = [n for n, _ in model.named_parameters()]
    assert "blocks.0.att.receptance.base_layer.weight" in names
    assert "blocks.1.ffn.value.lora_A.default.weight" in names
    assert "blocks.0.att.w1" in names and "emb.weight" in names  # untouched modules keep their names
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    # default targets: att r/k/v/o and ffn key/value (x070), 6 linears × 2 layers × (A, B)
    assert len(trainable) == 2 * 6 * 2


def test_merge_equals_base_plus_adapters_and_has_official_keys():
    model = lora_model()
    x = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        want = model(x)[0]
        layer = model.blocks[1].att.key
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        w_expected = layer.base_layer.weight + (8 / 4) * B @ A  # W + (alpha / r)·B·A, independent of peft
    merge_peft(model)
    assert type(model.blocks[1].att.key) is torch.nn.Linear
    torch.testing.assert_close(model.blocks[1].att.key.weight, w_expected, rtol=1e-6, atol=1e-7)
    sd = model.state_dict()
    assert list(sd) == list(official_order(sd, model.cfg))  # no extra keys, official order
    with torch.no_grad():
        got = model(x)[0]
    # fp32: merged matmul vs base matmul + low-rank path, rounding of one addition order (issue: ≤ 1e-5 rel)
    assert ((got - want).norm() / want.norm()).item() <= 1e-5


@pytest.mark.parametrize("init", ["pissa", True])
@pytest.mark.parametrize("dora", [False, True])
def test_pissa_and_dora_train_and_merge(init, dora):
    model = random_model("x070", n_layer=2, n_embd=128, vocab_size=300)
    apply_peft(model, parse_peft({"lora": {"r": 4, "init_lora_weights": init, "use_dora": dora,
                                           "target_modules": ["key", "value"]}}))
    x = torch.randint(0, 300, (2, 16))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = F.cross_entropy(model(x)[0][:, :-1].reshape(-1, 300), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        want = model(x)[0]
        merge_peft(model)
        got = model(x)[0]
    assert ((got - want).norm() / want.norm()).item() <= 1e-5


@pytest.mark.parametrize("version", VERSIONS)
def test_zero_time_state_is_the_plain_model(version):
    model = random_model(version, n_layer=2, n_embd=128, vocab_size=300)
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        want = model(x)[0]
        attach_time_state(model)
        got = model(x)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("version", VERSIONS)
def test_time_state_is_the_initial_wkv_state(version):
    model = random_model(version, n_layer=2, n_embd=128, vocab_size=300)
    attach_time_state(model)
    set_states(model)
    states = time_states(model)
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        got, _ = model(x)
        want, _ = model(x, explicit_state(model, states, 2))
        plain, _ = model(x, zero_state(model.cfg, 2))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the state matters


@pytest.mark.parametrize("version", VERSIONS)
def test_every_packed_document_starts_from_the_time_state(version):
    model = random_model(version, n_layer=2, n_embd=128, vocab_size=300)
    attach_time_state(model)
    set_states(model)
    states = time_states(model)
    T, starts = 24, [[0, 7, 15], [0, 11]]  # rows reset at different columns
    x = torch.randint(0, 300, (2, T))
    reset = torch.zeros(2, T, dtype=torch.bool)
    for b, ss in enumerate(starts):
        reset[b, ss[1:]] = True
    with torch.no_grad():
        got, _ = model(x, None, reset)
        for b, ss in enumerate(starts):
            for a, e in zip(ss, ss[1:] + [T]):  # each document alone, from the tuned state
                want, _ = model(x[b:b + 1, a:e], explicit_state(model, states, 1))
                torch.testing.assert_close(got[b:b + 1, a:e], want, rtol=1e-5, atol=1e-5)


def _sample_loss(model, idx, targets, reset):
    logits, _ = model(idx, None, reset)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")


@pytest.mark.parametrize("version", ["x070", "x060"])
def test_full_bptt_state_gradient_equals_whole_sample_fp64(version):
    torch.manual_seed(0)
    model = random_model(version, n_layer=2, n_embd=64, head_size=32, vocab_size=100, dtype=torch.float64)
    attach_time_state(model)
    set_states(model, scale=0.2)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [b.att.time_state for b in model.blocks]
    for p in params:
        p.requires_grad_(True)
    L, ctx = 40, 8  # five segments
    ids = torch.randint(0, 100, (2, L + 1))
    mask = torch.ones(2, L + 1, dtype=torch.float64)
    reset = torch.zeros(2, L + 1, dtype=torch.bool)
    reset[1, 27] = True  # a packed document starting inside the fourth segment of row 1

    # oracle: one unsegmented forward of the whole sample, autograd to the parameters
    loss = _sample_loss(model, ids[:, :-1], ids[:, 1:], reset[:, :-1]) / mask[:, 1:].sum()
    want = torch.autograd.grad(loss, params)

    def loss_fn(hidden, tg, wt):
        logits = model.head(hidden)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tg.reshape(-1), reduction="none")
        return (ce * wt.reshape(-1)).sum()

    def grads(bptt):
        for p in params:
            p.grad = None
        run_sample(model, ids, mask, ctx, bptt, loss_fn, lambda t: t.backward(), reset=reset)
        return [p.grad.clone() for p in params]

    for g, w in zip(grads("full"), want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)  # fp64: exact up to summation order
    # truncated only sees the first segment (and the reset document directly): a different gradient
    trunc = grads("truncated")
    assert not torch.allclose(trunc[0], want[0], rtol=1e-3, atol=1e-6)


def test_bf16_model_keeps_state_gradient_and_fp32_states():
    model = random_model("x070", n_layer=2, n_embd=128, vocab_size=300)
    attach_time_state(model)
    model = model.to(torch.bfloat16)
    x = torch.randint(0, 300, (1, 12))
    model(x)[0].float().sum().backward()
    assert model.blocks[0].att.time_state.grad is not None


def test_train_parts_freeze_everything_else():
    model = random_model("x070", n_layer=2, n_embd=128, vocab_size=300)
    apply_peft(model, parse_peft({"train_parts": ["ln", "time"], "state_tuning": True}))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "blocks.0.ln0.weight" in trainable and "ln_out.bias" in trainable and "blocks.1.att.ln_x.weight" in trainable
    assert "blocks.1.att.x_r" in trainable and "blocks.1.att.r_k" in trainable and "blocks.1.ffn.x_k" in trainable
    assert "blocks.1.att.time_state" in trainable
    for frozen in ("emb.weight", "head.weight", "blocks.1.att.w1", "blocks.1.att.key.weight", "blocks.0.att.v0"):
        assert frozen not in trainable, frozen
    groups = peft_param_groups(model, parse_peft({"state_tuning": True, "state_lr": 0.5}), lr_init=1e-3)
    state_group = next(g for g in groups if any(n.endswith("time_state") for n in g["names"]))
    assert state_group["lr_scale"] == pytest.approx(500.0)
    assert all(n.endswith("time_state") for n in state_group["names"])


@pytest.mark.parametrize("cfg, key", [
    ({"lora": {"target_modules": ["recepttance"]}}, "model.peft.lora.target_modules"),
    ({"lora": {"r": 4, "rank": 8}}, "model.peft.lora.rank"),
    ({"train_parts": ["lns"]}, "model.peft.train_parts"),
    ({"state_tunning": True}, "model.peft.state_tunning"),
    ({"lora": {"target_modules": ["head"]}}, "model.peft.lora.target_modules"),
])
def test_bad_configs_name_the_key(cfg, key):
    model = random_model("x070", n_layer=1, n_embd=64, head_size=32, vocab_size=50)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        apply_peft(model, parse_peft(cfg))


def test_adapter_directory_round_trip_and_base_mismatch(tmp_path):
    from rwkv.peft import save_adapter

    model = lora_model()
    save_adapter(model, tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    again = random_model("x070", n_layer=2, n_embd=128, vocab_size=300)  # the same base (same seed)
    apply_peft(again, parse_peft({"adapter": str(tmp_path / "adapter")}))
    assert all(".lora_" in n for n, p in again.named_parameters() if p.requires_grad)
    x = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], model(x)[0], rtol=0, atol=0)
    wider = random_model("x070", n_layer=2, n_embd=192, vocab_size=300)
    with pytest.raises(ConfigError, match=r"model\.peft\.adapter"):
        apply_peft(wider, parse_peft({"adapter": str(tmp_path / "adapter")}))
    with pytest.raises(ConfigError, match=r"model\.peft\.adapter"):
        apply_peft(random_model("x070", n_layer=2, n_embd=128, vocab_size=300),
                   parse_peft({"adapter": str(tmp_path / "missing")}))


def test_pissa_adapter_export_is_refused(tmp_path):
    from rwkv.peft import save_adapter

    model = random_model("x070", n_layer=1, n_embd=64, head_size=32, vocab_size=50)
    apply_peft(model, parse_peft({"lora": {"r": 2, "init_lora_weights": "pissa"}}))
    with pytest.raises(ConfigError, match="merged"):
        save_adapter(model, tmp_path / "a")


def test_grad_cp_gives_the_same_lora_and_state_gradients():
    grads = []
    for grad_cp in (False, True):
        model = lora_model()
        model.grad_cp = grad_cp
        attach_time_state(model)
        set_states(model)
        x = torch.randint(0, 300, (2, 20))
        reset = torch.zeros(2, 20, dtype=torch.bool)
        reset[0, 9] = True
        model(x, None, reset)[0].square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and any("time_state" in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)  # recomputation order only


@pytest.mark.parametrize("version", ["x060", "x052"])
def test_lora_merge_on_v6_and_v5(version):
    model = random_model(version, n_layer=2, n_embd=128, vocab_size=300)
    apply_peft(model, parse_peft({"lora": {"r": 4, "target_modules": ["receptance", "key", "value", "output",
                                                                      "gate"]}}))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    x = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        want = model(x)[0]
        merge_peft(model)
        got = model(x)[0]
    assert list(model.state_dict()) == list(official_order(model.state_dict(), model.cfg))
    assert ((got - want).norm() / want.norm()).item() <= 1e-5


@pytest.mark.parametrize("version", ["x060", "x052"])
def test_pip_forward_from_a_v6_v5_state_file(version, tmp_path):
    """pip's v5/v6 state is [H, key, value]; the state file is [H, value, key] (docs/model-spec.md §4.2)."""
    from rwkv.model import save_pth
    from rwkv.peft import to_pip_state_list
    from tests.support.pip_rwkv import run_pip_rwkv

    model = random_model(version, n_layer=2, n_embd=128, vocab_size=300)
    save_pth(model, tmp_path / "m.pth", dtype="fp32")
    attach_time_state(model)
    set_states(model)
    states = time_states(model)
    tokens = torch.randint(0, 300, (12,)).tolist()
    with torch.no_grad():
        ours = model(torch.tensor([tokens]))[0][0]
    pip = run_pip_rwkv(tmp_path / "m.pth", version, tokens, tmp_path, state_in=to_pip_state_list(states, model.cfg))
    # pip's fp32 path, different summation order: the interop tests' bound
    assert (pip["cont_logits"] - ours).abs().max().item() <= 1e-4 * max(1.0, ours.abs().max().item())


def test_fused_loss_with_a_frozen_head_gives_the_same_hidden_gradient_and_no_head_gradient():
    from rwkv.training.loss import head_ce_l2wrap

    torch.manual_seed(0)
    W = torch.randn(300, 32, dtype=torch.float64)
    h = torch.randn(2, 7, 32, dtype=torch.float64)
    tg, wt = torch.randint(0, 300, (2, 7)), torch.rand(2, 7, dtype=torch.float64)
    grads = []
    for train_head in (True, False):
        hh, WW = h.clone().requires_grad_(), W.clone().requires_grad_(train_head)
        loss = head_ce_l2wrap(hh, WW, tg, wt)
        (0.37 * loss).backward()  # the upstream gradient scales both paths
        grads.append((loss.detach(), hh.grad, WW.grad))
    (l_t, gh_t, gw_t), (l_f, gh_f, gw_f) = grads
    assert gw_t is not None and gw_f is None  # a frozen (PEFT) head forms no [V, C] gradient
    assert torch.equal(l_t, l_f) and torch.equal(gh_t, gh_f)
