"""`make gpu-check` (bench/gpu_check.py) on a machine without a GPU: the command says so and exits 0, its
pure parts (FLOP count, MFU, peak table, table layout, loss verdict) are right, and every section runs
end to end at tiny sizes on the CPU (`--smoke`) without the packages the GPU machine lacks."""

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, `make gpu-check` runs the whole check")
def test_make_gpu_check_without_gpu_says_so_and_exits_0(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    p = subprocess.run(["make", "gpu-check", f"PY={sys.executable}"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no GPU:" in p.stdout and "Nothing was run" in p.stdout
    assert "no GPU:" in (tmp_path / "gpu_check.txt").read_text()
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["gpu"] is None and summary["ok"] is True


@needs_make
def test_make_target_picks_the_interpreter():
    # --no-print-directory: under `make test` (CI) this make is nested and would add "Entering directory"
    dry = lambda *a: subprocess.run(["make", "--no-print-directory", "-n", "gpu-check", *a], cwd=ROOT,
                                    capture_output=True, text=True, timeout=60).stdout.strip()
    given = dry("PY=/opt/py/bin/python3", "ARGS=--sections wkv")
    assert given == "/opt/py/bin/python3 bench/gpu_check.py --sections wkv"
    expected = ".venv/bin/python" if (ROOT / ".venv" / "bin" / "python").exists() else "python3"
    assert dry().split() == [expected, "bench/gpu_check.py"]


def test_flop_count_matches_a_hand_count():
    """6·N with N counted by hand from the x070 tensor shapes (docs/model-spec.md §1.1/§1.2) for L=2, C=64,
    head size 16 (H=4), vocab 320, FFN 4C, all four LoRA ranks R(x) = max(32, …) = 32 at C=64."""
    from rwkv.model import RWKVConfig, build_model

    L, C, H, N, V, F, R = 2, 64, 4, 16, 320, 256, 32
    att = (6 * C          # x_r x_w x_k x_v x_a x_g
           + 3 * C        # w0 a0 v0
           + 2 * C        # k_k k_a
           + H * N        # r_k
           + 4 * 2 * C * R  # (w, a, v, g) × (down, up) LoRA matrices
           + 4 * C * C    # receptance key value output
           + 2 * C)       # ln_x weight, bias
    ffn = C + C * F + F * C  # x_k, key, value
    block = att + ffn + 2 * 2 * C  # ln1, ln2
    hand = L * block + 2 * C + 2 * C + V * C  # ln0 (layer 0), ln_out, head; not the embedding
    assert hand == 154240
    model = build_model(RWKVConfig(n_layer=L, n_embd=C, head_size=N, vocab_size=V))
    n = gpu_check.params_except_embedding(model)
    assert n == hand
    assert gpu_check.train_flops_per_token(n) == 6 * 154240
    # 1000 tok/s on a 1 GFLOP/s machine: 6·154240·1000 / 1e9
    assert gpu_check.mfu(1000.0, n, 1e9) == pytest.approx(0.92544)
    assert gpu_check.mfu(1000.0, n, None) is None


def test_bf16_peak_table():
    peak = gpu_check.bf16_peak_tflops
    assert peak("NVIDIA H200") == 989 and peak("NVIDIA H100 80GB HBM3") == 989
    assert peak("NVIDIA H200 NVL") == 835 and peak("NVIDIA H100 PCIe") == 756  # not the SXM numbers
    assert peak("NVIDIA A100-SXM4-80GB") == 312
    assert peak("NVIDIA GeForce GTX 1080") is None


def test_format_table_layout():
    lines = gpu_check.format_table(["backend", "ms"], [["cuda", "12.5"], ["chunked", "3.0"]])
    assert lines == [
        "| backend |   ms |",
        "|:--------|-----:|",
        "| cuda    | 12.5 |",
        "| chunked |  3.0 |",
    ]


def test_loss_verdict():
    ref = [5.0, 4.0, 3.0]
    assert gpu_check.loss_verdict(ref, [5.04, 4.1, 2.95])[0]  # 0.8%, 2.5%, 1.7%
    ok, rel = gpu_check.loss_verdict(ref, [5.06, 4.0, 3.0])  # step 0 is held to 1%
    assert not ok and rel[0] == pytest.approx(0.012)
    assert not gpu_check.loss_verdict(ref, [5.0, 4.2, 3.0])[0]  # 5% at step 1
    assert not gpu_check.loss_verdict(ref, [5.0, math.nan, 3.0])[0]
    assert not gpu_check.loss_verdict([], [])[0]


BLOCKED = """
import runpy, sys
for name in ("jsonargparse", "datasets", "deepspeed", "fla"):  # absent on the GPU machine
    sys.modules[name] = None
sys.argv = ["bench/gpu_check.py", *sys.argv[1:]]
runpy.run_path("bench/gpu_check.py", run_name="__main__")
"""


@pytest.mark.slow
def test_smoke_run_on_cpu_without_the_optional_packages(tmp_path):
    p = subprocess.run([sys.executable, "-c", BLOCKED, "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["ok"] is True and set(summary["verdicts"]) == set(gpu_check.SECTIONS)
    tests = summary["tests"]["summary"]  # the cuda tests ran, each skipped for want of a GPU
    assert tests in (tmp_path / "gpu_check_pytest.txt").read_text()  # the whole pytest output is kept
    assert summary["tests"]["ok"] and int(re.search(r"(\d+) skipped", tests).group(1)) > 0 and "fail" not in tests
    cmp = summary["compare"]
    assert len(cmp["fp32_cpu"]) == len(cmp["bf16_mixed"]) == 3 and cmp["bf16_mixed"][-1] < cmp["bf16_mixed"][0]
    wkv = {r["backend"]: r for r in summary["wkv"]["rows"]}
    assert wkv["chunked"]["fwd_bwd_ms"] > 0 and wkv["chunked"]["max_rel_diff_y"] < 1e-2
    assert "fla" in summary["wkv"]["fla"] or "No module" in summary["wkv"]["fla"]  # blocked: not timed
    (row,) = summary["train"]["rows"]
    assert row["tok_s"] > 0 and 0 < row["mfu_matmul"] and row["finite"]
    text = (tmp_path / "gpu_check.txt").read_text()
    assert "| backend" in text and "| model" in text and "gpu-check PASSED" in text
