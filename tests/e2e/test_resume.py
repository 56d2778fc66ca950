"""Checkpoints and resume through the real script.

A run killed mid-training and resumed with `--ckpt_path last` (or `--auto_resume true`) ends with exactly
the weights of an uninterrupted run: the step count, the LR schedule and the data position all continue.
A process killed while writing a checkpoint never leaves a torn checkpoint for resume to pick up.
"""

import csv

import pytest
import torch

from rwkv.checkpoint import read_training_checkpoint
from rwkv.checkpoint.resume import is_complete
from tests.support.runs import fit, make_config, preload, read_metrics

pytestmark = pytest.mark.slow

EVERY_STEP = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
              "init_args": {"dirpath": None, "every_n_train_steps": 1, "save_last": True, "save_top_k": -1}}


def config(tmp, name, data_dir, corpus, crash=None, strategy=None):
    ckpt = {**EVERY_STEP, "init_args": {**EVERY_STEP["init_args"], "dirpath": str(tmp / name / "ckpt")}}
    callbacks = [ckpt] + ([crash] if crash else [])
    over = {"trainer": {"max_steps": 6, "callbacks": callbacks, "default_root_dir": str(tmp / name),
                        "val_check_interval": None, "limit_val_batches": 0},
            "data": {"data_path": str(data_dir)}, "model": {"warmup_steps": 2}}
    if strategy:
        over["trainer"]["strategy"] = strategy
    return make_config(tmp, over, corpus=corpus, name=f"{name}.yaml")


def final_weights(run_dir):
    return read_training_checkpoint(run_dir / "ckpt" / "last.ckpt")


def lr_by_step(run_dir):
    return {int(r["step"]): float(r["lr"]) for r in read_metrics(run_dir) if r.get("lr")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    cfg = make_config(tmp)
    preload(cfg)
    corpus, data_dir = tmp / "corpus.jsonl", tmp / "data"
    fit(config(tmp, "straight", data_dir, corpus))
    return tmp, corpus, data_dir


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_killed_run_resumes_exactly(reference, tmp_path):
    tmp, corpus, data_dir = reference
    crash = {"class_path": "tests.support.crash.CrashAfterStep", "init_args": {"step": 4}}
    p = fit(config(tmp_path, "run", data_dir, corpus, crash), check=False)
    assert p.returncode == 17  # killed after step 4, before its checkpoint
    ck = torch.load(tmp_path / "run" / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 3
    fit(config(tmp_path, "run", data_dir, corpus), "--ckpt_path", "last")
    # it really resumed: a run restarted from scratch (same seed, same data order) would also end with the
    # straight run's weights, but would train 6 steps; the resumed process trains the 3 after the checkpoint
    newest = max((tmp_path / "run").rglob("metrics.csv"), key=lambda p: p.stat().st_mtime_ns)
    with open(newest) as f:
        own_steps = [r["step"] for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(own_steps) == 3, (newest, own_steps)
    assert_same(final_weights(tmp_path / "run"), final_weights(tmp / "straight"))
    straight, resumed = lr_by_step(tmp / "straight"), lr_by_step(tmp_path / "run")
    assert set(range(6)) <= set(resumed) and all(resumed[s] == straight[s] for s in straight)


@pytest.mark.parametrize("strategy", [None, "deepspeed_stage_2"])
def test_kill_during_checkpoint_write_never_tears(reference, tmp_path, strategy):
    tmp, corpus, data_dir = reference
    crash = {"class_path": "tests.support.crash.CrashDuringCheckpointWrite", "init_args": {"step": 4}}
    p = fit(config(tmp_path, "run", data_dir, corpus, crash, strategy), check=False)
    assert p.returncode == 18  # died half-way through writing the step-4 checkpoint
    ckpts = sorted((tmp_path / "run" / "ckpt").glob("*.ckpt"))
    assert ckpts and all(is_complete(c) for c in ckpts), ckpts  # no torn checkpoint is visible
    assert not any("step=4" in c.name for c in ckpts)
    p = fit(config(tmp_path, "run", data_dir, corpus, strategy=strategy), "--auto_resume", "true")
    assert "auto_resume: resuming from" in p.stdout + p.stderr
    straight = tmp / "straight"
    if strategy is not None:  # the uninterrupted reference under the same strategy
        straight = tmp_path / "straight"
        fit(config(tmp_path, "straight", data_dir, corpus, strategy=strategy))
    assert_same(final_weights(tmp_path / "run"), final_weights(straight))
