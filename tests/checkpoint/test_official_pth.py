"""rwkv/checkpoint/official_pth.py: config inference, prefix stripping, mismatch errors, order and dtype on
save; and its names reachable from rwkv.model, the public entry point."""

import subprocess
import sys

import pytest
import torch

import rwkv.model
from rwkv.checkpoint import official_pth
from rwkv.checkpoint.official_pth import (
    CheckpointMismatch,
    from_pth,
    infer_config,
    load_state_dict,
    save_pth,
)
from rwkv.model import RWKVConfig, build_model
from tests.conftest import ROOT
from tests.support.models import random_model


def test_infer_config_reads_ranks_from_shapes(tmp_path):
    # unusual ranks (older formula) must be read back, never recomputed (docs/model-spec.md §1.1)
    cfg = RWKVConfig(n_layer=3, n_embd=128, vocab_size=500, d_decay_lora=96, d_aaa_lora=64, d_mv_lora=32,
                     d_gate_lora=160, head_size=32)
    save_pth(build_model(cfg, init=True), tmp_path / "m.pth")
    assert infer_config(load_state_dict(tmp_path / "m.pth")) == cfg


def test_strip_wrapper_prefixes_and_lightning_checkpoint(tmp_path):
    model = random_model(n_layer=2, n_embd=64, head_size=16, vocab_size=50)
    wrapped = {f"_forward_module.model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "l.ckpt")
    loaded = from_pth(tmp_path / "l.ckpt")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_save_is_flat_official_order_and_dtype(tmp_path):
    model = random_model(n_layer=2, n_embd=64, head_size=16, vocab_size=50)
    shuffled = dict(reversed(list(model.state_dict().items())))
    save_pth(shuffled, tmp_path / "m.pth", dtype="fp16", cfg=model.cfg)
    raw = torch.load(tmp_path / "m.pth", weights_only=True)
    assert list(raw) == list(model.state_dict())
    assert all(t.dtype == torch.float16 for t in raw.values())


def test_mismatch_lists_missing_unexpected_and_misshaped(tmp_path):
    save_pth(random_model(n_layer=2, n_embd=64, head_size=16, vocab_size=50), tmp_path / "m.pth")
    want = RWKVConfig(n_layer=3, n_embd=64, head_size=16, vocab_size=60)
    with pytest.raises(CheckpointMismatch) as e:
        from_pth(tmp_path / "m.pth", config=want)
    msg = str(e.value)
    assert "missing (" in msg and "blocks.2.att.x_r" in msg
    assert "mis-shaped (" in msg and "emb.weight: file (50, 64) vs model (60, 64)" in msg
    assert str(tmp_path / "m.pth") in msg
    sd = load_state_dict(tmp_path / "m.pth")
    sd["blocks.0.att.gate.weight"] = torch.zeros(64, 64)
    with pytest.raises(CheckpointMismatch, match=r"unexpected \(1\): blocks.0.att.gate.weight"):
        from_pth_sd = RWKVConfig(n_layer=2, n_embd=64, head_size=16, vocab_size=50)
        from rwkv.checkpoint.official_pth import check_state_dict
        check_state_dict(sd, from_pth_sd)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_state_dict(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: cannot be read"):
        load_state_dict(tmp_path / "junk.pth")
    good = tmp_path / "good.pth"
    save_pth(random_model(n_layer=2, n_embd=64, head_size=16, vocab_size=50), good)
    (tmp_path / "torn.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="torn.pth"):
        load_state_dict(tmp_path / "torn.pth")


def test_public_names_stay_in_rwkv_model():
    for name in ("from_pth", "save_pth", "load_state_dict", "infer_config", "check_state_dict", "official_order",
                 "CheckpointMismatch"):
        assert name in rwkv.model.__all__ and getattr(rwkv.model, name) is getattr(official_pth, name)
    with pytest.raises(AttributeError):
        rwkv.model.no_such_name  # noqa: B018


def test_from_pth_imports_no_training_library():
    """The model layer's loaders stay usable in a notebook without Lightning or DeepSpeed (docs/design.md §2)."""
    code = ("import sys; from rwkv.model import from_pth, save_pth\n"
            "print([m for m in ('lightning', 'deepspeed', 'datasets', 'peft') if m in sys.modules])")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr[-2000:]
