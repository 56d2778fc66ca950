"""`export_checkpoint.py` on bad input (docs/design.md §5.10): a missing, partial or foreign
checkpoint stops with a non-zero exit code and one message naming the path, no Python traceback, and the
output .pth is neither created nor, when it exists, overwritten.

The inputs are tiny hand-made checkpoints laid out like the real ones (a Lightning .ckpt file; a ZeRO-2
directory of 2 ranks as Lightning + DeepSpeed write it: `latest`, tag dir, model states, one optimizer
shard per rank); `test_the_intact_fakes_export` shows each is exportable before one thing is broken.
Exports of real DDP / ZeRO-2 / ZeRO-3 runs are tested in test_strategies.py.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from rwkv.checkpoint import export_checkpoint
from tests.support.models import random_model
from tests.support.runs import run

pytestmark = pytest.mark.slow

WORLD = 2
OLD_OUTPUT = b"an earlier, good export"


def lightning_ckpt(sd: dict) -> dict:
    return {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "global_step": 3, "epoch": 0,
            "pytorch-lightning_version": "2.6.6"}


def write_zero2_dir(path: Path, sd: dict) -> Path:
    """What zero_to_fp32 reads of a ZeRO-2 checkpoint: parameter shapes in the model-states file, and per
    rank an equal slice of the flat fp32 master weights (padded to a multiple of 2 x world size)."""
    tag = path / "checkpoint"
    tag.mkdir(parents=True)
    (path / "latest").write_text("checkpoint")
    names = {f"model.{k}": v for k, v in sd.items()}
    torch.save({"module": names, "buffer_names": [], "param_shapes": [OrderedDict((k, v.shape) for k, v in
                names.items())], "shared_params": {}, "frozen_param_shapes": None, "ds_version": "0.19.8"},
               tag / "mp_rank_00_model_states.pt")
    flat = torch.cat([v.flatten() for v in names.values()])
    flat = torch.cat([flat, flat.new_zeros(-len(flat) % (2 * WORLD))])
    for rank, part in enumerate(flat.chunk(WORLD)):
        torch.save({"optimizer_state_dict": {"zero_stage": 2, "partition_count": [WORLD],
                                             "single_partition_of_fp32_groups": [part.clone()]}},
                   tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_inputs")
    sd = random_model("x070", n_layer=2, n_embd=64, vocab_size=320, head_size=16, seed=3).state_dict()
    torch.save(lightning_ckpt(sd), tmp / "good.ckpt")
    ds = write_zero2_dir(tmp / "ds_good", sd)
    return tmp, sd, ds


def test_the_intact_fakes_export(inputs, tmp_path):
    tmp, sd, ds = inputs
    for src in (tmp / "good.ckpt", ds):
        out = export_checkpoint(src, tmp_path / f"{src.name}.pth", "fp32")
        assert list(out) == list(sd) and all(torch.equal(out[k], sd[k]) for k in sd), src


# case -> (what the message says, whether an earlier export sits at the output path)
CASES = {
    "missing": ("no such checkpoint", False),
    "truncated": ("is it truncated?", True),
    "foreign_torch": ("does not hold an RWKV model", False),
    "not_torch": ("cannot be read as a checkpoint", False),
    "missing_tensor": ("missing (1): blocks.1.ffn.value.weight", True),
    "ds_no_latest": ("without a `latest` file", False),
    "ds_missing_shard": ("Are all ranks' shard files present?", True),
    "ds_no_model_states": ("holds no model states", False),
    "ds_torn_model_states": ("incomplete or unreadable DeepSpeed checkpoint (EOFError", True),
}


def make_bad_inputs(tmp: Path, sd: dict, ds: Path) -> dict:
    """case -> the bad checkpoint (file or directory)."""
    data = (tmp / "good.ckpt").read_bytes()
    (tmp / "truncated.ckpt").write_bytes(data[: len(data) // 2])  # a copy cut off mid-transfer
    torch.save(lightning_ckpt(torch.nn.Linear(8, 4).state_dict()), tmp / "foreign.ckpt")  # another model
    (tmp / "cfg.yaml").write_text("trainer:\n  max_steps: 3\n")  # not a torch file at all
    torch.save({k: v for k, v in sd.items() if k != "blocks.1.ffn.value.weight"}, tmp / "partial.pth")

    def broken_copy(name, *remove, empty=None):
        d = shutil.copytree(ds, tmp / name)
        for rel in remove:
            (d / rel).unlink()
        if empty:
            (d / empty).write_bytes(b"")  # a write killed right after the file was created
        return d

    return {
        "missing": tmp / "no_such.ckpt",
        "truncated": tmp / "truncated.ckpt",
        "foreign_torch": tmp / "foreign.ckpt",
        "not_torch": tmp / "cfg.yaml",
        "missing_tensor": tmp / "partial.pth",
        "ds_no_latest": broken_copy("ds_no_latest", "latest"),
        "ds_missing_shard": broken_copy("ds_missing_shard", "checkpoint/zero_pp_rank_1_mp_rank_00_optim_states.pt"),
        "ds_no_model_states": broken_copy("ds_no_model_states", "checkpoint/mp_rank_00_model_states.pt"),
        "ds_torn_model_states": broken_copy("ds_torn", empty="checkpoint/mp_rank_00_model_states.pt"),
    }


@pytest.fixture(scope="module")
def refusals(inputs, tmp_path_factory):
    """Every bad input through the real script, two at a time (each call pays ~5 s of start-up)."""
    tmp, sd, ds = inputs
    sources = make_bad_inputs(tmp, sd, ds)
    assert sources.keys() == CASES.keys()
    outs = tmp_path_factory.mktemp("export_outputs")

    def attempt(case):
        (outs / case).mkdir()
        out = outs / case / "model.pth"
        if CASES[case][1]:
            out.write_bytes(OLD_OUTPUT)
        return sources[case], run(["export_checkpoint.py", str(sources[case]), str(out)], check=False), out

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(CASES, pool.map(attempt, CASES), strict=True))


@pytest.mark.parametrize("case", CASES)
def test_bad_checkpoint_is_refused_clearly(refusals, case):
    says, existing = CASES[case]
    src, proc, out = refusals[case]
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    # one message (it may list several differences on more lines), naming the path and what is wrong
    assert proc.stderr.startswith(f"export_checkpoint.py: {src}: "), proc.stderr
    assert proc.stderr.count("export_checkpoint.py") == 1 and says in proc.stderr, proc.stderr
    assert "config" not in proc.stderr  # export has no config: advice about config keys would mislead
    if existing:
        assert out.read_bytes() == OLD_OUTPUT  # the earlier export is untouched
    assert sorted(p.name for p in out.parent.iterdir()) == (["model.pth"] if existing else [])  # no temp files
