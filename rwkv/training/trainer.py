"""`RWKVTrainer`: Lightning's Trainer plus the batch settings infctx users know from the template project.

`trainer.microbatch_size` is the number of samples per forward pass per device; `trainer.target_batch_size`
(optional) is the number of samples per optimizer step over all devices, from which the accumulation
count is derived: max(1, target // (microbatch · world_size)). Accumulation happens *inside* one training
step (the data loader yields the whole group), so gradients are reduced once per optimizer step under DDP
and DeepSpeed alike; Lightning's own `accumulate_grad_batches` therefore stays 1 (a value given for it is
taken as our accumulation count).
"""

from __future__ import annotations

from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from ..checkpoint.resume import AtomicCheckpointIO
from ..errors import ConfigError


class RWKVTrainer(Trainer):
    def __init__(self, *args, microbatch_size: int = 1, target_batch_size: int | None = None, **kwargs):
        """
        Args:
            microbatch_size: Samples per forward pass per device (the DataLoader's micro batch).
            target_batch_size: Samples per optimizer step over all devices; sets gradient accumulation.
        """
        if microbatch_size < 1:
            raise ConfigError(f"trainer.microbatch_size must be ≥ 1, got {microbatch_size}")
        accumulate = kwargs.pop("accumulate_grad_batches", 1) or 1
        if target_batch_size and accumulate != 1:
            raise ConfigError("set either trainer.target_batch_size or trainer.accumulate_grad_batches, not both")
        plugins = kwargs.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        super().__init__(*args, accumulate_grad_batches=1, **kwargs)
        self.microbatch_size = microbatch_size
        self.target_batch_size = target_batch_size
        self._accumulate = accumulate

    @property
    def rwkv_accumulate(self) -> int:
        """Micro batches per optimizer step on each device."""
        if not self.target_batch_size:
            return self._accumulate
        per_pass = self.microbatch_size * self.world_size
        acc = max(1, self.target_batch_size // per_pass)
        if acc * per_pass != self.target_batch_size:
            rank_zero_warn(f"trainer.target_batch_size {self.target_batch_size} is not a multiple of "
                           f"microbatch_size × devices = {per_pass}; using {acc * per_pass} samples per step")
        return acc

    @property
    def samples_per_step(self) -> int:
        """Samples per optimizer step on each device: RWKVDataModule's train batch (one batch per step)."""
        return self.microbatch_size * self.rwkv_accumulate
