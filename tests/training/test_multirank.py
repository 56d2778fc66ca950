"""Two CPU ranks under DDP and DeepSpeed ZeRO-2/3 with per-rank data (tests/support/multirank.py):
validation with uneven segment counts finishes and equals the single-process value; a non-finite loss on
one rank stops every rank with the same report, or skips the step on every rank without a trace."""

import json
import subprocess
import sys

import pytest
import torch

from rwkv.checkpoint import read_training_checkpoint
from rwkv.training.loss import head_ce_l2wrap
from rwkv.training.segments import eval_sample
from tests.support.multirank import initial_model, val_rows
from tests.support.runs import ROOT, env

pytestmark = pytest.mark.slow
STRATEGIES = ["ddp", "deepspeed_stage_2", "deepspeed_stage_3"]
TIMEOUT = 300  # a hang (ranks waiting in different collectives) fails here instead of blocking CI


def launch(tmp_path, name, *args, check=True):
    out = tmp_path / name
    cmd = [sys.executable, "-m", "tests.support.multirank", "--out", str(out), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return out, proc


def single_process_val_loss(val_batches=2, long_factor=3):
    """The validation loss over both ranks' rows, in one process, with the initial weights."""
    module = initial_model()
    model = module.model.eval()
    loss_sum, learned = 0.0, 0.0
    for rank in (0, 1):
        for i in range(val_batches):
            b = val_rows(rank, i, long_factor)
            res = eval_sample(model, b["input_ids"], b["loss_mask"], 16,
                              lambda h, tg, wt: head_ce_l2wrap(h, model.head.weight, tg, wt, l2wrap=False))
            loss_sum += float(res.loss_sum)
            learned += float(res.learned)
    return loss_sum / learned


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_validation_with_uneven_segment_counts(tmp_path, strategy):
    """Rank 1's validation samples are 3× longer (4 segments against 2): ZeRO-3 gathers parameters in
    every forward, so unequal forward counts would hang. lr 0 keeps the weights at their initial values so
    that the value can be checked against one process over the same rows."""
    out, _ = launch(tmp_path, "val", "--strategy", strategy, "--steps", "0,1,2,3", "--val_every", "2",
                    "--lr", "0")
    rec = json.loads(out.with_suffix(".json").read_text())
    want = single_process_val_loss()
    assert len(rec["val"]) == 2
    # fp32; the order of the sums differs (per rank, then all-reduced), and under ZeRO-3 the logits come
    # from the head module instead of the fused head loss: round-off only
    for v in rec["val"]:
        assert v == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nonfinite_loss_on_one_rank_stops_every_rank(tmp_path, strategy):
    _, proc = launch(tmp_path, "stop", "--strategy", strategy, "--nan_rank", "1", "--nan_step", "1",
                     "--on_nonfinite", "stop", check=False)
    assert proc.returncode != 0
    msg = "non-finite loss at step 1 (rank 1, micro batch 0, segment 0, dataset rows unknown)"
    assert msg in proc.stderr, proc.stderr[-4000:]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nonfinite_skip_equals_never_seeing_the_batch(tmp_path, strategy):
    """Steps on batches 0, 1, 2 with batch 1's loss NaN on rank 1 only and `skip`, against steps on
    batches 0 and 2: the same weights, bit for bit (no partial gradient, no Adam moment or step-count
    change from the skipped step; DeepSpeed keeps gradient buffers of its own)."""
    skipped, proc = launch(tmp_path, "skip", "--strategy", strategy, "--steps", "0,1,2", "--nan_rank", "1",
                           "--nan_step", "1", "--on_nonfinite", "skip")
    assert "skipping step 1: non-finite loss (rank 1, micro batch 0, segment 0" in proc.stdout + proc.stderr
    never, _ = launch(tmp_path, "never", "--strategy", strategy, "--steps", "0,2")
    a = read_training_checkpoint(skipped.with_suffix(".ckpt"))
    b = read_training_checkpoint(never.with_suffix(".ckpt"))
    start = {k: v for k, v in initial_model().model.state_dict().items()}
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert max((a[k].float() - start[k].float()).abs().max() for k in a) > 1e-4  # both really trained
