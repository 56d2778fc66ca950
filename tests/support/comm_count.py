"""Test-only instruments that count gradient reductions per optimizer step in a real multi-process run.

`CountReductions` writes, per optimizer step, how many gradient-reduction calls happened:
* DDP: calls of the DDP communication hook (one per gradient bucket per reduction);
* DeepSpeed ZeRO: calls of the ZeRO optimizer's per-parameter reduction entry point.
The counts go to `<out>.rank<r>.json`.
"""

from __future__ import annotations

import json

import lightning.pytorch as pl
import torch.distributed as dist

_calls = {"n": 0}


def counting_allreduce_hook(state, bucket):
    """DDP comm hook: the default all-reduce (average), counted."""
    _calls["n"] += 1
    tensor = bucket.buffer().div_(dist.get_world_size())
    return dist.all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])


class CountReductions(pl.Callback):
    def __init__(self, out: str):
        self.out = out
        self.per_step: list[int] = []
        self._last = 0

    def on_train_start(self, trainer, pl_module):
        from lightning.pytorch.strategies import DeepSpeedStrategy

        if not isinstance(trainer.strategy, DeepSpeedStrategy):
            # Lightning registers `ddp_comm_hook` on CUDA only; register the counting hook directly
            trainer.model.register_comm_hook(state=None, hook=counting_allreduce_hook)
        else:
            opt = trainer.model.optimizer
            real = opt.reduce_ready_partitions_and_remove_grads

            def counted(*args, **kwargs):
                _calls["n"] += 1
                return real(*args, **kwargs)

            opt.reduce_ready_partitions_and_remove_grads = counted

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.per_step.append(_calls["n"] - self._last)
        self._last = _calls["n"]
        with open(f"{self.out}.rank{trainer.global_rank}.json", "w") as f:
            json.dump(self.per_step, f)
