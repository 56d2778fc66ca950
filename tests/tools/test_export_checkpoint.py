"""The real `export_checkpoint.py` script, once per format, and a fine-tune that starts from a Hugging Face
directory (`model.load_model`) and ends in one again."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rwkv.model import load_state_dict
from tests.support.models import random_model
from tests.support.runs import fit, make_config, preload, read_metrics, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A Lightning checkpoint as the trainer writes it (`model.` prefix, non-tensor entries); head size 64
    (H = 1 at 64 channels) so that the HF export is exact."""
    tmp = tmp_path_factory.mktemp("cli")
    sd = random_model("x070", n_layer=2, n_embd=64, vocab_size=320, head_size=64, seed=11).state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "global_step": 3, "epoch": 0},
               tmp / "last.ckpt")
    return sd, tmp / "last.ckpt"


def test_pth_is_the_default(ckpt, tmp_path):
    sd, src = ckpt
    p = run(["export_checkpoint.py", str(src), str(tmp_path / "m.pth")])
    assert "(bf16, pth)" in p.stdout
    got = torch.load(tmp_path / "m.pth", weights_only=True)
    assert list(got) == list(sd) and all(torch.equal(got[k], v.to(torch.bfloat16)) for k, v in sd.items())


def test_safetensors(ckpt, tmp_path):
    sd, src = ckpt
    p = run(["export_checkpoint.py", str(src), str(tmp_path / "m.safetensors"), "--format", "safetensors"])
    assert "(fp16, safetensors)" in p.stdout
    got = load_file(tmp_path / "m.safetensors")
    assert sorted(got) == sorted(sd) and all(torch.equal(got[k], v.half()) for k, v in sd.items())


def test_hf_and_back_to_pth(ckpt, tmp_path):
    sd, src = ckpt
    run(["export_checkpoint.py", str(src), str(tmp_path / "hf"), "--format", "hf", "--dtype", "fp32"])
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["model_type"] == "rwkv7" and cfg["dtype"] == "float32" and cfg["hidden_size"] == 64
    run(["export_checkpoint.py", str(tmp_path / "hf"), str(tmp_path / "back.pth"), "--dtype", "fp32"])
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert list(back) == list(sd) and all(torch.equal(back[k], v) for k, v in sd.items())


def test_refusals_are_one_line_without_traceback(tmp_path):
    sd = random_model("x060", n_layer=2, n_embd=64, vocab_size=320, head_size=32).state_dict()
    torch.save(sd, tmp_path / "v6.pth")
    p = run(["export_checkpoint.py", str(tmp_path / "v6.pth"), str(tmp_path / "hf"), "--format", "hf"], check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "a x060 model" in p.stderr and "--format pth or --format safetensors" in p.stderr
    assert not (tmp_path / "hf").exists()
    p = run(["export_checkpoint.py", str(tmp_path / "v6.pth"), str(tmp_path / "x.pth"), "--tokenizer", "neox"],
            check=False)
    assert p.returncode == 2 and "--tokenizer applies to --format hf only" in p.stderr


def test_finetune_from_an_hf_directory(ckpt, tmp_path):
    sd, src = ckpt
    run(["export_checkpoint.py", str(src), str(tmp_path / "start"), "--format", "hf", "--dtype", "fp32"])
    # an unusual end-of-document id, so that the export can be seen to take it from the run's config
    over = {"model": {"load_model": str(tmp_path / "start"), "n_layer": None, "n_embd": None, "head_size": 64},
            "data": {"format": {"eod_token_id": 5}},
            "trainer": {"max_steps": 2, "val_check_interval": None, "limit_val_batches": 0}}
    cfg = make_config(tmp_path, over)
    preload(cfg)
    fit(cfg)
    losses = [float(r["train/loss"]) for r in read_metrics(tmp_path / "run") if r.get("train/loss")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
    p = run(["export_checkpoint.py", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), str(tmp_path / "tuned"),
             "--format", "hf", "--dtype", "fp32"])
    assert "data.format.tokenizer 'bytes', data.format.eod_token_id 5 from" in p.stdout and "config.yaml" in p.stdout
    assert "no tokenizer files written" in p.stdout
    written = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert written["eos_token_id"] == 5 and written["bos_token_id"] == 5
    tuned = load_state_dict(tmp_path / "tuned")
    assert list(tuned) == list(sd)
    changed = [k for k in sd if not torch.equal(tuned[k], sd[k])]
    # everything trains except layer 0's unused v0/v1/v2 (frozen), which travel unchanged
    assert sorted(set(sd) - set(changed)) == ["blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"]


def test_readme_table_commands(ckpt, tmp_path):
    """Each command of the README's "Use your model elsewhere" table, as written, with out/demo moved into
    a temporary directory (its last.ckpt is this module's checkpoint)."""
    import re
    import shlex
    import shutil

    from tests.conftest import ROOT

    sd, src = ckpt
    text = (ROOT / "README.md").read_text()
    section = re.search(r"## Use your model elsewhere\n(.*?)\n## ", text, re.S).group(1)
    commands = re.findall(r"^\|[^|]+\| `(python export_checkpoint\.py [^`]+)` \|", section, re.M)
    assert [c.split()[-1] if "--format" in c else "pth" for c in commands] == ["pth", "safetensors", "hf"]
    demo = tmp_path / "demo"
    (demo / "checkpoints").mkdir(parents=True)
    shutil.copy(src, demo / "checkpoints" / "last.ckpt")
    for cmd in commands:
        args = shlex.split(cmd.replace("out/demo", str(demo)))
        assert args[:2] == ["python", "export_checkpoint.py"]
        run(args[1:])
    # model.pth is bf16 (the default), the others are converted from it
    head = sd["head.weight"].to(torch.bfloat16)
    assert torch.equal(load_file(demo / "model.safetensors")["head.weight"], head.half())
    got = load_state_dict(demo / "hf")
    assert all(torch.equal(got[k], v.to(torch.bfloat16)) for k, v in sd.items())
