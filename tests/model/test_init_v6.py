"""Official init of x060 (docs/model-spec.md §2.1) and x052 (§2.2) per parameter family, and init_model.py."""

import math
import subprocess
import sys

import pytest
import torch

from rwkv.model import RWKVConfig, build_model, from_pth, infer_config, load_state_dict
from tests.conftest import ROOT

C, N, L, V = 256, 64, 3, 1000


@pytest.fixture(scope="module")
def x060():
    torch.manual_seed(0)
    return build_model(RWKVConfig(version="x060", n_layer=L, n_embd=C, vocab_size=V), init=True)


@pytest.fixture(scope="module")
def x052():
    torch.manual_seed(0)
    return build_model(RWKVConfig(version="x052", n_layer=L, n_embd=C, vocab_size=V), init=True)


def ratios(l):
    return l / (L - 1), 1 - l / L  # r01, r10 (docs/model-spec.md §1.4)


# Expected values written out from the spec formulas, independently of rwkv.model.init_v6.
n = torch.arange(C, dtype=torch.float64)
ddd = n / C


def decay(l):
    return -6 + 5 * (n / (C - 1)) ** (0.7 + 1.3 * ratios(l)[0])


def bonus(l):
    return ratios(l)[0] * (1 - n / (C - 1)) + ((n + 1) % 3 - 1) * 0.1


def close(t, want, msg):
    torch.testing.assert_close(t.detach().double().flatten(), want, atol=1e-6, rtol=0, msg=msg)


def assert_orthogonal(W, gain):
    W = W.detach().double()
    G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
    torch.testing.assert_close(G, gain**2 * torch.eye(G.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("version", ["x060", "x052"])
def test_linear_layers_gains_and_zeros(version, request):
    model = request.getfixturevalue(version)
    for b in model.blocks:
        assert_orthogonal(b.att.receptance.weight, 1.0)
        assert_orthogonal(b.att.key.weight, 0.1)
        assert_orthogonal(b.att.value.weight, 1.0)
        assert_orthogonal(b.att.gate.weight, 0.1)
        assert_orthogonal(b.ffn.key.weight, 1.0)  # [F, C]: gain used as-is (docs/model-spec.md §2.1)
        for t in (b.att.output.weight, b.ffn.receptance.weight, b.ffn.value.weight):
            assert torch.count_nonzero(t) == 0
    assert_orthogonal(model.head.weight, 0.5 * math.sqrt(V / C))


@pytest.mark.parametrize("version", ["x060", "x052"])
def test_emb_layernorms_and_ln_x(version, request):
    model = request.getfixturevalue(version)
    e = model.emb.weight
    assert e.abs().max() <= 1e-4 and e.std() > 4e-5  # U(−1e-4, 1e-4)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0), name
    for l, b in enumerate(model.blocks):
        assert torch.allclose(b.att.ln_x.weight, torch.full((C,), ((l + 1) / L) ** 0.7))
        assert torch.count_nonzero(b.att.ln_x.bias) == 0


def test_x060_time_mix_vectors(x060):
    for l, b in enumerate(x060.blocks):
        r01, r10 = ratios(l)
        a = b.att
        for name in ("time_maa_x", "time_maa_w", "time_maa_k"):
            close(getattr(a, name), 1 - ddd ** r10, f"{l} {name}")
        close(a.time_maa_v, 1 - (ddd ** r10 + 0.3 * r01), f"{l} time_maa_v")
        close(a.time_maa_r, 1 - ddd ** (0.5 * r10), f"{l} time_maa_r")
        close(a.time_maa_g, 1 - ddd ** (0.5 * r10), f"{l} time_maa_g")
        close(b.ffn.time_maa_k, 1 - ddd ** (r10 ** 3), f"{l} ffn.time_maa_k")
        close(b.ffn.time_maa_r, 1 - ddd ** (r10 ** 3), f"{l} ffn.time_maa_r")


def test_x060_decay_bonus_and_loras(x060):
    for l, b in enumerate(x060.blocks):
        a = b.att
        close(a.time_decay, decay(l), f"{l} time_decay")
        close(a.time_faaaa, bonus(l), f"{l} time_faaaa")
        assert a.time_faaaa.shape == (C // N, N)
        for name in ("time_maa_w1", "time_decay_w1"):
            assert torch.count_nonzero(getattr(a, name)) == 0, name
        for name in ("time_maa_w2", "time_decay_w2"):  # U(−0.01, 0.01): bounded, not constant
            t = getattr(a, name)
            assert t.abs().max() <= 0.01 and 0.004 < t.std() < 0.0075, name  # std of U(±a) = a/√3
    # spot values independent of any helper: layer 0 channel 0 (r01 = 0: −6 and zigzag 0)
    assert x060.blocks[0].att.time_decay.flatten()[0].item() == -6.0
    assert x060.blocks[0].att.time_faaaa.flatten()[:3].tolist() == pytest.approx([0.0, 0.1, -0.1])
    assert x060.blocks[2].att.time_decay.flatten()[-1].item() == pytest.approx(-1.0)


def test_x052_mix_decay_and_bonus(x052):
    for l, b in enumerate(x052.blocks):
        r01, r10 = ratios(l)
        a = b.att
        close(a.time_mix_k, ddd ** r10, f"{l} time_mix_k")
        close(a.time_mix_v, ddd ** r10 + 0.3 * r01, f"{l} time_mix_v")
        close(a.time_mix_r, ddd ** (0.5 * r10), f"{l} time_mix_r")
        close(a.time_mix_g, ddd ** (0.5 * r10), f"{l} time_mix_g")
        close(b.ffn.time_mix_k, ddd ** r10, f"{l} ffn.time_mix_k")
        close(b.ffn.time_mix_r, ddd ** r10, f"{l} ffn.time_mix_r")
        assert a.time_decay.shape == (C // N, N) and a.time_faaaa.shape == (C // N, N)
        close(a.time_decay, decay(l), f"{l} time_decay")
        close(a.time_faaaa, bonus(l), f"{l} time_faaaa")


def test_single_layer_init_is_finite():
    """L = 1 divides by zero in the original r01 = l/(L−1); we use r01 = 0 (rwkv.model.init.layer_ratios)."""
    for version in ("x060", "x052"):
        model = build_model(RWKVConfig(version=version, n_layer=1, n_embd=64, head_size=32, vocab_size=50),
                            init=True)
        assert all(torch.isfinite(p).all() for p in model.parameters())


def run_init(*args):
    return subprocess.run([sys.executable, "init_model.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("version,cls", [("x060", "RWKV6"), ("x052", "RWKV5")])
def test_init_model_script(tmp_path, version, cls):
    out = tmp_path / f"{version}.pth"
    p = run_init("--version", version, "--n_layer", 2, "--n_embd", 128, "--vocab_size", 1000, out)
    assert p.returncode == 0, p.stderr
    sd = load_state_dict(out)
    assert all(t.dtype == torch.bfloat16 for t in sd.values())  # official files are bf16 (docs/model-spec.md §1.2)
    cfg = infer_config(sd)
    assert (cfg.version, cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.dim_ffn) == (version, 2, 128, 1000, 448)
    n_params = sum(t.numel() for t in sd.values())
    assert f"{n_params:,} parameters" in p.stdout
    model = from_pth(out)
    assert type(model).__name__ == cls
    assert torch.isfinite(model(torch.randint(0, 1000, (1, 8)))[0]).all()
