"""Test-only callback that makes the loss non-finite for one optimizer step (for the NaN/inf guard tests of
tests/e2e/test_logging_guards.py)."""

import lightning.pytorch as pl
import torch


class NonFiniteLossAt(pl.Callback):
    def __init__(self, step: int, out: str | None = None):
        self.step, self.out = step, out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            real = pl_module._loss_fn
            pl_module._loss_fn = lambda *a: real(*a) * float("nan")
            self._restore = real
            self._before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if getattr(self, "_restore", None) is not None:
            pl_module._loss_fn = self._restore
            self._restore = None
            after = {n: p.detach() for n, p in pl_module.model.named_parameters()}
            unchanged = all(torch.equal(self._before[n], after[n]) for n in after)
            if self.out:
                with open(self.out, "w") as f:
                    f.write("unchanged" if unchanged else "changed")
