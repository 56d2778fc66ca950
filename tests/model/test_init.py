"""Official init per parameter family (docs/model-spec.md §1.4) and the init_model.py script."""

import math
import subprocess
import sys

import pytest
import torch

from rwkv.model import RWKVConfig, build_model, load_state_dict
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(RWKVConfig(n_layer=3, n_embd=256, vocab_size=1000), init=True)


def assert_orthogonal(W, gain):
    W = W.double()
    G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
    torch.testing.assert_close(G, gain**2 * torch.eye(G.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)


def test_zero_matrices(model):
    for b in model.blocks:
        for t in (b.att.w1, b.att.a1, b.att.v1, b.att.g1, b.att.output.weight, b.ffn.value.weight):
            assert torch.count_nonzero(t) == 0


def test_orthogonal_matrices_and_gains(model):
    V, C = 1000, 256
    for b in model.blocks:
        for t in (b.att.w2, b.att.a2, b.att.v2, b.att.g2):
            assert_orthogonal(t, 0.1)
        assert_orthogonal(b.att.receptance.weight, 1.0)
        assert_orthogonal(b.att.key.weight, 0.1)
        assert_orthogonal(b.att.value.weight, 1.0)
        assert_orthogonal(b.ffn.key.weight, 1.0)  # [4C, C]: gain 1.0, no √(rows/cols) (docs/model-spec.md §1.4)
    assert_orthogonal(model.head.weight, 0.5 * math.sqrt(V / C))


def official_vectors(l, L, C, N):
    """docs/model-spec.md §1.4 written out per channel with plain floats, as the official trainer's loops do;
    independent of rwkv.model.init (whose channel_ramps/layer_ratios the model is built from)."""
    r01, r10 = l / (L - 1), 1.0 - l / L
    rows = {k: [] for k in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "ffn_x_k")}
    for n in range(C):
        ddd, lin = n / C, n / (C - 1) - 0.5
        zz = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
        zig = zz * abs(zz)
        for name, p in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
            rows[name].append(1 - ddd ** (p * r10))
        rows["w0"].append(-6 + 6 * (n / (C - 1)) ** (1 + r01 ** 0.3) + 0.5 + 2.5 * zig)
        rows["a0"].append(-0.19 + 0.3 * zig + 0.4 * lin)
        rows["v0"].append(0.73 - 0.4 * lin)
        rows["k_k"].append(0.71 - 0.1 * lin)
        rows["ffn_x_k"].append(1 - ddd ** (r10 ** 4))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in rows.items()}


def test_per_layer_vectors(model):
    C, N, L = 256, 64, 3
    for l, b in enumerate(model.blocks):
        a = b.att
        expect = official_vectors(l, L, C, N)
        got = {name: getattr(a, name) for name in expect if name != "ffn_x_k"} | {"ffn_x_k": b.ffn.x_k}
        for name, want in expect.items():
            # atol 1e-6: the model holds fp32 copies of fp64 formulas (rounding <= 6e-8 for |value| <= 9)
            torch.testing.assert_close(got[name].detach().double().flatten(), want, atol=1e-6, rtol=0,
                                       msg=f"layer {l} {name}")
        assert torch.all(a.k_a == 1.02) and torch.all(a.r_k == -0.04)
        assert torch.allclose(a.ln_x.weight, torch.full((C,), ((l + 1) / L) ** 0.7))
        assert torch.count_nonzero(a.ln_x.bias) == 0
    # spot values by hand: layer 0, channel 0 (zz = -1) and the last channel
    a0 = model.blocks[0].att
    assert a0.x_r.flatten()[0].item() == 1.0 and a0.x_r.flatten()[-1].item() == pytest.approx(1 - (255 / 256) ** 0.2)
    assert a0.w0.flatten()[0].item() == pytest.approx(-6 + 0.5 + 2.5 * -1.0)


def test_embedding_and_layernorms(model):
    e = model.emb.weight
    assert e.abs().max() <= 1e-4 and e.std() > 4e-5  # U(−1e-4, 1e-4): std 5.8e-5
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0), name


def run_init(*args):
    return subprocess.run([sys.executable, "init_model.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_init_model_script(tmp_path):
    out = tmp_path / "m.pth"
    p = run_init("--n_layer", 2, "--n_embd", 128, "--vocab_size", 1000, "--seed", 3, out)
    assert p.returncode == 0, p.stderr
    assert "736,512 parameters" in p.stdout  # 2VC + 4C + L(19C + 2C·ΣD + 12C²), docs/model-spec.md §1.1
    sd = load_state_dict(out)
    assert all(t.dtype == torch.bfloat16 for t in sd.values())
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]  # no temporary file left behind
    before = out.stat().st_mtime_ns
    p = run_init("--n_layer", 2, "--n_embd", 128, "--vocab_size", 1000, "--skip-if-exists", out)
    assert p.returncode == 0 and "skipped" in p.stdout and out.stat().st_mtime_ns == before
    p = run_init("--n_layer", 2, "--n_embd", 100, "--vocab_size", "world", tmp_path / "bad.pth")
    assert p.returncode != 0 and "head_size" in p.stderr and not (tmp_path / "bad.pth").exists()
    p = run_init("--n_layer", 2, "--n_embd", 128, "--vocab_size", "wrld", tmp_path / "bad.pth")
    assert p.returncode != 0 and "--vocab_size" in p.stderr
