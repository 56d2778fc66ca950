"""RWKVLitModule (rwkv/training/lit_module.py). One optimizer step through Lightning: the gradients the
optimizer sees equal the exact ones.

Catches any interaction between the segment loop and Lightning's loop (zero_grad placement, deferred
backward, micro-batch split and trimming, loss scaling), which the segment-loop tests alone cannot. Also:
the LR schedule by time and by token budget as the trainer applies it, and the per-version layerwise_lr
default.
"""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Timer
from torch.utils.data import DataLoader

from rwkv.errors import ConfigError
from rwkv.training.lit_module import RWKVLitModule
from rwkv.training.optim import lr_at
from rwkv.training.trainer import RWKVTrainer
from tests.support.models import perturb_
from tests.support.recipe import assert_relative_close, spec_grads, spec_truncated_grads


class CaptureGrads(pl.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.clone() for n, p in pl_module.model.named_parameters() if p.grad is not None}


def make_batch(lengths, V=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = max(lengths) + 1
    ids = torch.zeros(len(lengths), L, dtype=torch.long)
    mask = torch.zeros(len(lengths), L)
    for i, n in enumerate(lengths):
        ids[i, :n + 1] = torch.randint(0, V, (n + 1,), generator=g)
        mask[i, :n + 1] = (torch.rand(n + 1, generator=g) > 0.2).float()
    return {"input_ids": ids, "loss_mask": mask, "lengths": torch.tensor([n + 1 for n in lengths])}


def split(batch, micro):
    """The step's micro batches, as the official objective sees them (tests/support/recipe.py)."""
    return [{"input_ids": batch["input_ids"][s:s + micro], "loss_mask": batch["loss_mask"][s:s + micro].double()}
            for s in range(0, batch["input_ids"].shape[0], micro)]


@pytest.mark.parametrize("bptt", ["full", "truncated"])
def test_step_gradients(bptt):
    """The gradients the optimizer sees equal the official objective's (mean CE + L2Wrap per micro batch,
    averaged over micro batches): over whole samples for `full`, over detached 16-token windows for
    `truncated` — both computed independently of the trainer's loss and segment code."""
    torch.manual_seed(0)
    module = RWKVLitModule(n_layer=2, n_embd=64, head_size=16, vocab_size=97, ctx_len=16, bptt=bptt,
                           warmup_steps=0)
    perturb_(module.model, seed=1)  # the fresh init zeroes output projections: the state would not matter
    from copy import deepcopy

    reference = deepcopy(module.model)
    batch = make_batch([70, 23, 41, 5])  # 2 micro batches of 2 rows; up to 5 segments of 16
    cap = CaptureGrads()
    trainer = RWKVTrainer(accelerator="cpu", devices=1, max_steps=1, microbatch_size=2, target_batch_size=4,
                          precision="64-true", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, callbacks=[cap])
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    reference = reference.double()
    if bptt == "full":
        want = spec_grads(reference, split(batch, 2))
    else:
        want = spec_truncated_grads(reference, split(batch, 2), ctx=16)
        exact = spec_grads(reference, split(batch, 2))  # and truncation really changes the gradient here
        assert max((exact[n] - want[n]).abs().max() for n in want) > 1e-8
    assert_relative_close(cap.grads, want, rel=1e-10)


class SteppedClock(Timer):
    """Lightning's Timer with a clock that advances 40 s per finished optimizer step (100 s budget)."""

    def __init__(self):
        super().__init__(duration={"seconds": 100}, interval="step")
        self.steps = 0

    def time_elapsed(self, stage="train"):
        return 40.0 * self.steps

    def on_train_batch_end(self, trainer, *args, **kwargs):
        self.steps += 1
        super().on_train_batch_end(trainer, *args, **kwargs)


class CaptureLR(pl.Callback):
    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_schedule_by_time_anneals_by_the_time_budget():
    """max_steps alone would keep the lr near lr_init; bound to max_time, the cosine follows elapsed time
    and the Timer stops the run at the budget."""
    kw = dict(n_layer=1, n_embd=32, head_size=16, vocab_size=97, ctx_len=16, warmup_steps=0, lr_init=1e-3,
              lr_final=1e-4)
    batch = make_batch([20, 20])
    cap, clock = CaptureLR(), SteppedClock()
    trainer = RWKVTrainer(accelerator="cpu", devices=1, max_steps=1000, microbatch_size=2, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[cap, clock])
    trainer.fit(RWKVLitModule(schedule_by_time=True, **kw), train_dataloaders=DataLoader([batch] * 10, batch_size=None))
    sched = dict(lr_init=1e-3, lr_final=1e-4, warmup_steps=0, schedule="cosine", total_steps=1000)
    want = [lr_at(s, 0, time_progress=p, **sched) for s, p in enumerate([0.0, 0.4, 0.8])]
    assert cap.lrs == pytest.approx(want, rel=1e-9)  # step 3 is never taken: 120 s ≥ the 100 s budget
    assert want[2] < 0.25 * lr_at(2, 0, **sched)

    trainer = RWKVTrainer(accelerator="cpu", devices=1, max_steps=2, microbatch_size=2, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ConfigError, match="trainer.max_time"):
        trainer.fit(RWKVLitModule(schedule_by_time=True, **kw), train_dataloaders=DataLoader([batch], batch_size=None))


def test_token_budget_schedule_through_the_trainer():
    """The lrs the optimizer uses under a token budget follow the official formula (progress after the
    warm-up's tokens), with the warm-up tokens recorded by the module and kept in its checkpoint."""
    from tests.training.test_optim import official_lr

    batch = make_batch([20, 20])
    per_step = int(batch["lengths"].sum())
    budget = 8 * per_step
    cap = CaptureLR()
    module = RWKVLitModule(n_layer=1, n_embd=32, head_size=16, vocab_size=97, ctx_len=16, warmup_steps=2,
                           lr_init=1e-3, lr_final=1e-4, token_budget=budget)
    trainer = RWKVTrainer(accelerator="cpu", devices=1, max_steps=100, microbatch_size=2, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[cap])
    trainer.fit(module, train_dataloaders=DataLoader([batch] * 20, batch_size=None))
    want = [official_lr(s, lr_init=1e-3, lr_final=1e-4, warmup_steps=2, ctx_bsz=per_step, exit_tokens=budget)
            for s in range(8)]
    assert cap.lrs == pytest.approx(want, rel=1e-12)  # and the budget stopped the run after 8 steps
    assert module.warmup_tokens == 2 * per_step
    ckpt = {}
    module.on_save_checkpoint(ckpt)
    fresh = RWKVLitModule(n_layer=1, n_embd=32, head_size=16, vocab_size=97)
    fresh.on_load_checkpoint(ckpt)
    assert (fresh.tokens_seen, fresh.warmup_tokens) == (8 * per_step, 2 * per_step)


@pytest.mark.parametrize("version,default", [("x070", False), ("x060", True), ("x052", True)])
def test_layerwise_lr_defaults_to_the_official_setting_per_version(version, default):
    from rwkv.training.lit_module import RWKVLitModule

    module = RWKVLitModule(version=version, n_layer=1, n_embd=32, head_size=16, vocab_size=50)
    assert module.layerwise_lr is default
    assert RWKVLitModule(version=version, n_layer=1, n_embd=32, head_size=16, vocab_size=50,
                         layerwise_lr=not default).layerwise_lr is (not default)
