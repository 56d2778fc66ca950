"""rwkv/checkpoint/training_checkpoint.py: Lightning .ckpt files and DeepSpeed directories read back as
official-name tensors, and clear errors for torn or partial ones. tests/e2e/test_export.py runs the same
through the export command on real training runs."""

import pytest
import torch

from rwkv.checkpoint.training_checkpoint import ExportError, read_training_checkpoint
from tests.support.models import random_model


def test_lightning_checkpoint_gives_official_names_and_tensors_only(tmp_path):
    sd = random_model(n_layer=2, n_embd=64, head_size=16, vocab_size=50).state_dict()
    # wrapper prefixes are stripped, non-tensor entries dropped, the rest of the checkpoint ignored
    ckpt = {"state_dict": {**{f"_forward_module.model.{k}": v for k, v in sd.items()}, "model.step_count": 3},
            "global_step": 7, "optimizer_states": []}
    torch.save(ckpt, tmp_path / "last.ckpt")
    got = read_training_checkpoint(tmp_path / "last.ckpt")
    assert list(got) == list(sd) and all(torch.equal(got[k], v) for k, v in sd.items())
    torch.save(sd, tmp_path / "flat.pth")  # an official file passes through
    assert list(read_training_checkpoint(tmp_path / "flat.pth")) == list(sd)


def test_torn_and_partial_checkpoints_name_the_path(tmp_path):
    with pytest.raises(ExportError, match="no such checkpoint"):
        read_training_checkpoint(tmp_path / "nope.ckpt")
    torch.save({"state_dict": {"emb.weight": torch.zeros(50, 64)}}, tmp_path / "a.ckpt")
    data = (tmp_path / "a.ckpt").read_bytes()
    (tmp_path / "torn.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="torn.ckpt: cannot be read as a checkpoint.*truncated"):
        read_training_checkpoint(tmp_path / "torn.ckpt")
    torch.save({"epoch": 1}, tmp_path / "other.ckpt")
    with pytest.raises(ExportError, match="not a Lightning checkpoint"):
        read_training_checkpoint(tmp_path / "other.ckpt")
    ds = tmp_path / "ds.ckpt"
    ds.mkdir()
    with pytest.raises(ExportError, match="without a `latest` file"):
        read_training_checkpoint(ds)
    (ds / "latest").write_text("global_step4")
    with pytest.raises(ExportError, match="holds no model states"):
        read_training_checkpoint(ds)
