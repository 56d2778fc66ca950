"""Loggers selectable in YAML, the loss-curve command, bf16-mixed, and the NaN/inf guard."""

import math

import pytest
import torch

from rwkv.checkpoint import read_training_checkpoint
from tests.support.runs import fit, make_config, preload, read_metrics, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guards")
    cfg = make_config(tmp)
    preload(cfg)
    return tmp


def cfg_for(data, tmp_path, over):
    base = {"data": {"data_path": str(data / "data")}, "trainer": {"default_root_dir": str(tmp_path / "run")}}
    for k, v in over.items():
        base.setdefault(k, {}).update(v)
    return make_config(tmp_path, base, corpus=data / "corpus.jsonl")


def test_tensorboard_and_wandb_offline_with_bf16_mixed(data, tmp_path):
    loggers = [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path / "run")}},
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
         "init_args": {"save_dir": str(tmp_path / "tb")}},
        {"class_path": "lightning.pytorch.loggers.WandbLogger",
         "init_args": {"save_dir": str(tmp_path / "wb"), "offline": True, "project": "rwkv-test"}},
    ]
    fit(cfg_for(data, tmp_path, {"trainer": {"logger": loggers, "precision": "bf16-mixed", "max_steps": 2}}))
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert list((tmp_path / "wb").rglob("*.wandb"))  # the offline run file
    losses = [float(r["train/loss"]) for r in read_metrics(tmp_path / "run") if r.get("train/loss")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_loss_curve_png(data, tmp_path):
    fit(cfg_for(data, tmp_path, {}))
    out = tmp_path / "curve.png"
    run(["-m", "rwkv.tools.plot_loss", str(tmp_path / "run"), "-o", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    p = run(["-m", "rwkv.tools.plot_loss", str(tmp_path / "nothing")], check=False)
    assert p.returncode == 2 and "no metrics.csv" in p.stderr


def test_nonfinite_loss_stops_with_step_and_rows(data, tmp_path):
    cb = {"class_path": "tests.support.faults.NonFiniteLossAt", "init_args": {"step": 2}}
    p = fit(cfg_for(data, tmp_path, {"trainer": {"callbacks": [cb]}}), check=False)
    assert p.returncode != 0
    msg = p.stderr + p.stdout
    assert "non-finite loss at step 2" in msg and "dataset rows [" in msg and "on_nonfinite_loss: skip" in msg


def test_nonfinite_loss_skip_leaves_weights_untouched(data, tmp_path):
    flag = tmp_path / "flag.txt"
    cb = {"class_path": "tests.support.faults.NonFiniteLossAt", "init_args": {"step": 2, "out": str(flag)}}
    fit(cfg_for(data, tmp_path, {"trainer": {"callbacks": [cb]}, "model": {"on_nonfinite_loss": "skip"}}))
    assert flag.read_text() == "unchanged"
    w = read_training_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(t).all() for t in w.values())
