"""Test-only callbacks that kill a real training process at a chosen point (resume tests, docs/checkpoints.md)."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch


class CrashAfterStep(pl.Callback):
    """Exit hard (no cleanup, like a SIGKILL) when optimizer step `step` has finished, before the
    checkpoint of that step is written (ModelCheckpoint runs after user callbacks)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            os._exit(17)


class CrashDuringCheckpointWrite(pl.Callback):
    """From optimizer step `step` on, the next checkpoint write dies half-way: torch.save writes part of
    its bytes, then the process exits hard."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step < self.step:
            return
        real_save = torch.save

        def dying_save(obj, f, *args, **kwargs):
            import io

            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            if isinstance(f, (str, os.PathLike)):
                with open(f, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
            else:
                f.write(data[: len(data) // 2])
                f.flush()
            os._exit(18)

        torch.save = dying_save
