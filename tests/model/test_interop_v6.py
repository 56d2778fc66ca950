"""Our x060 / x052 against PyPI's `rwkv` 0.8.32 on the same .pth (docs/model-spec.md §4.2), and
version detection in from_pth.

The files are fp32 on purpose: pip's v4–v6 loader folds ln0 into emb.weight in the file's dtype before
casting, so a bf16 file gives pip a bf16-rounded embedding even under `cpu fp32` (docs/model-spec.md §4.2); our model
applies ln0 in the compute dtype, as the trainer does.
"""

import pytest
import torch

from rwkv.checkpoint.official_pth import detect_version
from rwkv.model import (
    RWKVConfig,
    build_model,
    from_pip_state,
    from_pth,
    infer_config,
    load_state_dict,
    save_pth,
    to_pip_state,
)
from tests.support.models import random_model
from tests.support.pip_rwkv import run_pip_rwkv

# pip parity bound, as README states it: max |ours - pip| / max |pip| over each logits or state tensor.
# Measured 4.2e-8..7.1e-7 here (x060 max 5.0e-7, x052 max 7.1e-7), the size of pip's own token-by-token
# vs whole-sequence difference (5.3e-7, 5.5e-7): fp32 rounding in different summation orders. 2e-6 leaves
# ~3x for other BLAS builds and thread counts (same bound as test_interop_v7.py).
REL = 2e-6


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.slow
@pytest.mark.parametrize("version", ["x060", "x052"])
def test_pip_rwkv_loads_our_model(tmp_path, version):
    # n_layer 2: pip marks v5.2 only when it meets a 2-D time_decay after some ln_x key, which in official
    # order first happens at blocks.1 (docs/model-spec.md §4.2); official models all have many layers.
    model = random_model(version, n_layer=2, n_embd=128, vocab_size=1000, seed=1)
    pth = tmp_path / f"{version}.pth"
    save_pth(model, pth, dtype="fp32")
    ours = from_pth(pth).eval()

    tokens = torch.randint(0, 1000, (33,), generator=torch.Generator().manual_seed(2)).tolist()
    idx = torch.tensor([tokens])
    with torch.no_grad():
        seq_logits, seq_state = ours(idx)
        tok_rows, st = [], None
        for t in tokens:
            out, st = ours(torch.tensor([[t]]), st)
            tok_rows.append(out[0, 0])
    pip = run_pip_rwkv(pth, version, tokens, tmp_path / "pip", state_in=to_pip_state(seq_state))

    errs = {"seq": rel_err(seq_logits[0], pip["seq_logits"]),
            "tok": rel_err(torch.stack(tok_rows), pip["tok_logits"])}
    # carried state entry by entry: att x_prev, WKV S [H, key, value] (pip's v5/v6 layout), ffn x_prev
    for i, (mine, theirs) in enumerate(zip(to_pip_state(seq_state), pip["seq_state"], strict=True)):
        assert mine.shape == theirs.shape
        errs[f"state{i}"] = rel_err(mine, theirs)
    # pip's final state handed to our model continues like pip continuing from ours (both directions)
    with torch.no_grad():
        cont_from_pip, _ = ours(idx, from_pip_state(pip["seq_state"]))
        cont_from_ours, _ = ours(idx, seq_state)
    errs["cont_from_pip"] = rel_err(cont_from_pip[0], pip["cont_logits"])
    errs["cont_from_ours"] = rel_err(cont_from_ours[0], pip["cont_logits"])
    print({k: f"{v:.1e}" for k, v in errs.items()})  # the measured numbers, under pytest -s
    assert max(errs.values()) < REL, errs
    assert rel_err(pip["cont_logits"], pip["seq_logits"]) > 1e-3  # the state really mattered


@pytest.mark.parametrize("version,cls", [("x060", "RWKV6"), ("x052", "RWKV5")])
def test_from_pth_detects_version_and_sizes(tmp_path, version, cls):
    # unusual sizes must be read from shapes, never recomputed: head 32, dim_ffn 4C ("-f4"), and for
    # x060 the LoRA ranks that larger official models use (time_maa 64, time_decay 128)
    extra = dict(d_mix_lora=64, d_decay_lora=128) if version == "x060" else {}
    cfg = RWKVConfig(version=version, n_layer=3, n_embd=128, vocab_size=500, head_size=32, dim_ffn=512,
                     **extra)
    model = build_model(cfg, init=True)
    save_pth(model, tmp_path / "m.pth", dtype="fp32")
    sd = load_state_dict(tmp_path / "m.pth")
    assert detect_version(sd) == version and infer_config(sd) == cfg
    loaded = from_pth(tmp_path / "m.pth")
    assert type(loaded).__name__ == cls and loaded.cfg == cfg
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_detection_follows_pip_rules_and_rejects_older_versions(tmp_path):
    """pip (docs/model-spec.md §4.2): `time_maa` -> 6; `ln_x` + a 2-D time_decay [H, N>1] -> 5.2; x070 has att.r_k.
    Files pip would call 5.0/5.1 (no ln_x, or time_decay per head only) are refused with a clear error."""
    cfg = RWKVConfig(version="x052", n_layer=2, n_embd=64, head_size=16, vocab_size=50)
    sd = build_model(cfg).state_dict()
    assert detect_version(sd) == "x052"
    v51 = dict(sd, **{f"blocks.{l}.att.time_decay": torch.zeros(4) for l in range(2)})
    no_ln_x = {k: v for k, v in sd.items() if "ln_x" not in k}
    for bad in (v51, no_ln_x):
        with pytest.raises(ValueError, match="RWKV-4 and v5.0/5.1 files are not supported"):
            detect_version(bad)
    torch.save(v51, tmp_path / "v51.pth")
    with pytest.raises(ValueError, match=r"v51\.pth: unsupported RWKV checkpoint"):
        from_pth(tmp_path / "v51.pth")
    # pip reads n_att from att.key.weight; a dim_att != n_embd file is refused by name, not as a shape list
    wide = dict(sd, **{"blocks.0.att.key.weight": torch.zeros(128, 64),
                       "blocks.0.att.time_faaaa": torch.zeros(8, 16)})
    with pytest.raises(ValueError, match="dim_att 128"):
        infer_config(wide)
