"""`lightning_trainer.py` through the real script on a tiny CPU config."""

import math

import pytest
import torch
import yaml

from rwkv.model import load_state_dict
from tests.support.runs import fit, make_config, preload, read_metrics, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One preloaded dataset and one 4-step run, shared by the checks below."""
    tmp = tmp_path_factory.mktemp("fit")
    cfg = make_config(tmp)
    preload(cfg)
    proc = fit(cfg)
    return tmp, cfg, proc


def test_fit_runs_logs_and_saves_config(trained):
    tmp, cfg, proc = trained
    rows = read_metrics(tmp / "run")
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]  # it learns something in 4 steps at lr 3e-3
    val = [r for r in rows if r.get("val/loss")]
    assert len(val) == 2  # val_check_interval: 2 -> after steps 2 and 4
    assert float(val[-1]["val/ppl"]) == pytest.approx(math.exp(float(val[-1]["val/loss"])), rel=1e-4)
    assert all(float(r["train/tok_s"]) > 0 for r in rows if r.get("train/tok_s"))
    saved = yaml.safe_load(next((tmp / "run").glob("logs/version_*/config.yaml")).read_text())
    assert saved["model"]["segments"]["bptt"] == "full"
    assert saved["trainer"]["microbatch_size"] == 2 and saved["data"]["format"]["tokenizer"] == "bytes"
    assert (tmp / "run" / "checkpoints" / "last.ckpt").is_file()


def test_vocab_comes_from_the_tokenizer(trained):
    tmp, _, _ = trained
    ckpt = torch.load(tmp / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    sd = ckpt["state_dict"]
    assert sd["model.emb.weight"].shape[0] == ckpt["hyper_parameters"]["vocab_size"] >= 257


def test_export_of_the_run_loads(trained, tmp_path):
    tmp, _, _ = trained
    out = tmp_path / "m.pth"
    run(["export_checkpoint.py", str(tmp / "run" / "checkpoints" / "last.ckpt"), str(out), "--dtype", "fp32"])
    sd = load_state_dict(out)
    assert list(sd)[0] == "emb.weight" and "blocks.1.att.r_k" in sd


def test_print_config_and_validate(trained):
    tmp, cfg, _ = trained
    p = run(["lightning_trainer.py", "fit", "-c", str(cfg), "--print_config"])
    printed = yaml.safe_load(p.stdout)
    assert printed["model"]["segments"]["ctx_len"] == 32
    assert "ctx_len" not in printed["data"] and "micro_batch_size" not in printed["data"]  # linked: stated once
    p = run(["lightning_trainer.py", "validate", "-c", str(cfg), "--ckpt_path",
             str(tmp / "run" / "checkpoints" / "last.ckpt")])
    assert "val/loss" in p.stdout


def test_fit_without_preload_names_the_command(tmp_path):
    cfg = make_config(tmp_path)
    p = fit(cfg, check=False)
    assert p.returncode != 0
    assert f"python preload_datapath.py {cfg}" in p.stderr + p.stdout
    assert "Traceback" not in p.stderr  # one clear message, not a stack trace


def test_auto_preload(tmp_path):
    cfg = make_config(tmp_path, {"data": {"loader": {"auto_preload": True}}, "trainer": {"max_steps": 1}})
    fit(cfg)
    assert (tmp_path / "data").is_dir()
