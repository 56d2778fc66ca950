"""`python -m rwkv <command>`: one command line that reaches the same functions as the top-level scripts."""

import subprocess
import sys

import pytest
import torch

from tests.support.runs import ROOT, env

pytestmark = pytest.mark.slow  # each call starts a Python process with torch (~5-10 s)


def rwkv(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "rwkv", *args], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"python -m rwkv {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def test_init_export_sample_through_one_command(tmp_path):
    init = tmp_path / "init.pth"
    rwkv("init", "--n_layer", "2", "--n_embd", "64", "--head_size", "16", "--vocab_size", "bytes", str(init))
    out = tmp_path / "model.pth"
    rwkv("export", str(init), str(out), "--dtype", "fp32")
    a = torch.load(init, map_location="cpu", weights_only=True)
    b = torch.load(out, map_location="cpu", weights_only=True)
    assert list(a) == list(b) and all(torch.equal(a[k].float(), b[k]) for k in a)
    text = rwkv("sample", str(out), "--prompt", "Q:", "--tokens", "4", "--temperature", "0").stdout
    assert text.strip()


def test_help_lists_commands_and_reaches_lightningcli():
    assert all(c in rwkv("--help").stdout for c in ("fit", "preload", "init", "export", "sample"))
    assert "--trainer" in rwkv("fit", "--help").stdout  # LightningCLI's own help: the command word arrived
    bad = rwkv("train", check=False)
    assert bad.returncode == 2 and "unknown command 'train'" in bad.stderr
