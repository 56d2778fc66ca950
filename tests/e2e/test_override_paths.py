"""Command-line overrides reach every path a run writes or suggests (docs/design.md §4).

A shipped GPU recipe run as a new user would (CPU overrides, a tiny World-vocab model, a temporary
`--trainer.default_root_dir`) must put its checkpoints under that directory, not under the recipe's own
`out/...`; and the "data_path does not exist" error must suggest a preload command that repeats the
user's `--data.*` overrides, so that running it builds the data the fit was asked to use.
"""

import json
import shlex
import subprocess
import sys

import pytest

from tests.support.runs import ROOT, env, run

RECIPE = "configs/finetune-world-chat.yaml"  # World tokenizer, chat format, its own ModelCheckpoint callback

# What a user changes to try a GPU recipe on a laptop: no checkpoint to load, a tiny model, CPU, fp32.
CPU_OVERRIDES = [
    "--trainer.accelerator", "cpu", "--trainer.strategy", "auto", "--trainer.precision", "32-true",
    "--trainer.microbatch_size", "2", "--trainer.target_batch_size", "2", "--trainer.max_steps", "2",
    "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
    "--model.load_model", "null", "--model.version", "x070", "--model.n_layer", "2", "--model.n_embd", "64",
    "--model.head_size", "16", "--model.segments.ctx_len", "32", "--model.segments.grad_cp", "false",
]


def write_chats(path, n=24):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                             {"role": "assistant", "content": f"It is {2 * i}."}]}) + "\n")
    return path


def data_args(tmp):
    return ["--data.origin.source_data_files", str(write_chats(tmp / "chat.jsonl")), "--data.data_path",
            str(tmp / "my data"), "--data.rows.test_split", "2", "--data.rows.num_proc", "1"]


@pytest.mark.slow
def test_recipe_checkpoints_follow_default_root_dir(tmp_path):
    recipe_ckpts = ROOT / "out" / "chat-ft" / "checkpoints"
    before = set(recipe_ckpts.rglob("*")) if recipe_ckpts.exists() else set()
    data = data_args(tmp_path)
    run(["preload_datapath.py", RECIPE, *data])
    root = tmp_path / "run"
    run(["lightning_trainer.py", "fit", "-c", RECIPE, *CPU_OVERRIDES, *data, "--trainer.default_root_dir", str(root)])
    assert (root / "checkpoints" / "last.ckpt").is_file()  # beside the logs ...
    assert list(root.glob("logs/version_*/metrics.csv"))
    after = set(recipe_ckpts.rglob("*")) if recipe_ckpts.exists() else set()
    assert after == before  # ... and nothing in the recipe's own out/chat-ft
    # a second fresh run into the same directory: Lightning keeps the first last.ckpt and writes last-v1.ckpt,
    # and the trainer says so (exporting last.ckpt would give the earlier model)
    again = run(["lightning_trainer.py", "fit", "-c", RECIPE, *CPU_OVERRIDES, *data,
                 "--trainer.default_root_dir", str(root)])
    assert "last.ckpt is from an earlier run" in again.stderr
    assert (root / "checkpoints" / "last-v1.ckpt").is_file()


@pytest.mark.slow
def test_missing_data_suggests_the_preload_command_with_the_data_overrides(tmp_path):
    data = data_args(tmp_path)
    args = ["lightning_trainer.py", "fit", "-c", RECIPE, *CPU_OVERRIDES, *data,
            "--trainer.default_root_dir", str(tmp_path / "run")]
    p = run(args, check=False)
    assert p.returncode == 2, p.stderr[-3000:]
    line = next(ln for ln in p.stderr.splitlines() if "Build it with: " in ln)
    command = line.split("Build it with: ", 1)[1].split(" (or set data.loader.auto_preload")[0]
    words = shlex.split(command)
    assert words[:2] == ["python", "preload_datapath.py"] and words[3:] == data
    assert (ROOT / words[2]).resolve() == (ROOT / RECIPE).resolve()  # the CLI reports the config's full path
    # the suggested command, run as printed, builds exactly the data that fit then accepts
    subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=ROOT, env=env(), check=True,
                   capture_output=True, timeout=600)
    assert (tmp_path / "my data").is_dir()
    run(args)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
