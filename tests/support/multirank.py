"""A small 2-rank training/validation run with per-rank data, launched as `python -m tests.support.multirank`
(Lightning re-launches the same command for rank 1; see tests/training/test_multirank.py).

Why not the CLI: these tests need to choose exactly which rows each rank sees (one rank's samples longer
than the other's, a non-finite loss on one rank only), which the data pipeline's sampler decides otherwise.
The model, trainer, strategies and step are the real ones.
"""

from __future__ import annotations

import argparse
import json

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from rwkv.training.lit_module import RWKVLitModule
from rwkv.training.strategies import register_strategies
from rwkv.training.trainer import RWKVTrainer
from tests.support.models import perturb_

V = 97
MODEL = dict(n_layer=2, n_embd=64, head_size=16, vocab_size=V, ctx_len=16, bptt="full")


def rows(rank: int, step: int, n: int, length: int, seed: int = 0):
    """`n` samples of `length` tokens (+1 target), deterministic per (rank, step)."""
    g = torch.Generator().manual_seed(seed * 100_003 + rank * 1009 + step)
    ids = torch.randint(0, V, (n, length + 1), generator=g)
    mask = (torch.rand(n, length + 1, generator=g) > 0.2).float()
    return {"input_ids": ids, "loss_mask": mask, "lengths": torch.full((n,), length + 1)}


def val_rows(rank: int, i: int, long_factor: int):
    """Validation batches: rank 1's samples are `long_factor`× longer (more segments) than rank 0's."""
    return rows(rank, 1000 + i, 2, 20 * (long_factor if rank == 1 else 1), seed=1)


def train_rows(rank: int, step: int):
    return rows(rank, step, 2, 40 + 7 * rank + 3 * step)


def first(items):
    return items[0]


def loader(batches):
    # one prepared batch per step; batch_size=1 gives DeepSpeed's config a batch sampler to read
    return DataLoader(batches, batch_size=1, collate_fn=first)


class PerRankData(pl.LightningDataModule):
    def __init__(self, steps: list[int], val_batches: int, long_factor: int):
        super().__init__()
        self.steps, self.val_batches, self.long_factor = steps, val_batches, long_factor

    def train_dataloader(self):
        rank = self.trainer.global_rank
        return loader([train_rows(rank, s) for s in self.steps])

    def val_dataloader(self):
        rank = self.trainer.global_rank
        return loader([val_rows(rank, i, self.long_factor) for i in range(self.val_batches)])


class Record(pl.Callback):
    """Writes val losses (rank 0) and, on the chosen rank and step, makes the loss non-finite."""

    def __init__(self, out: str, nan_rank: int | None, nan_step: int | None):
        self.out, self.nan_rank, self.nan_step, self.val = out, nan_rank, nan_step, []

    def on_validation_end(self, trainer, pl_module):  # after the module's epoch-end hook logged val/loss
        if trainer.is_global_zero and not trainer.sanity_checking:
            self.val.append(float(trainer.callback_metrics["val/loss"]))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.nan_rank and trainer.global_step == self.nan_step:
            real = pl_module._loss_fn
            pl_module._loss_fn = lambda *a, **k: real(*a, **k) * float("nan")
            self._restore = real

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if getattr(self, "_restore", None) is not None:
            pl_module._loss_fn, self._restore = self._restore, None

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            with open(self.out + ".json", "w") as f:
                json.dump({"val": self.val, "global_step": trainer.global_step}, f)


def initial_model():
    """The same perturbed weights on every rank (and in the test process that checks the results)."""
    torch.manual_seed(0)
    module = RWKVLitModule(**MODEL, lr_schedule="constant", warmup_steps=0, lr_init=2e-3, lr_final=2e-3)
    perturb_(module.model, seed=1)
    return module


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strategy", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", default="0,1,2", help="training batch ids, in order")
    ap.add_argument("--val_every", type=int, default=0, help="validate every N steps (0: no validation)")
    ap.add_argument("--val_batches", type=int, default=2)
    ap.add_argument("--long_factor", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--nan_rank", type=int, default=None)
    ap.add_argument("--nan_step", type=int, default=None)
    ap.add_argument("--on_nonfinite", default="stop")
    args = ap.parse_args()
    register_strategies()
    module = initial_model()
    module.hparams.optimizer.update(lr_init=args.lr, lr_final=args.lr)
    module.hparams.update(on_nonfinite_loss=args.on_nonfinite)
    steps = [int(s) for s in args.steps.split(",")]
    rec = Record(args.out, args.nan_rank, args.nan_step)
    val = dict(val_check_interval=args.val_every, check_val_every_n_epoch=None, num_sanity_val_steps=0) \
        if args.val_every else dict(limit_val_batches=0)
    trainer = RWKVTrainer(accelerator="cpu", devices=2, strategy=args.strategy, max_steps=len(steps),
                          microbatch_size=1, target_batch_size=4, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                          callbacks=[rec], **val)
    trainer.fit(module, datamodule=PerRankData(steps, args.val_batches, args.long_factor))
    trainer.save_checkpoint(args.out + ".ckpt")


if __name__ == "__main__":
    main()
