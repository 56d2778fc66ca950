"""Per-rank samplers built by the DataModule itself (the trainer runs `use_distributed_sampler=False`).

Both samplers: deterministic per (seed, epoch); the same number of samples on every rank (so every
rank runs the same number of steps); `set_epoch(epoch)`; an integer `skip_samples` = local samples of
the current epoch to skip (honoured by `__iter__`; `__len__` stays the whole epoch), used to resume mid-epoch; and
`state_dict()` / `load_state_dict()` holding (epoch, skip_samples).

`set_epoch(e)` resets `skip_samples` only when e differs from the current epoch: Lightning calls
`set_epoch` at every epoch start, including the first epoch after a resume, which must keep the
restored skip.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from .binidx import MINI_EPOCH, golden_factor


class _EpochState(torch.utils.data.Sampler):
    epoch: int = 0
    skip_samples: int = 0

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.skip_samples = 0
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "skip_samples": self.skip_samples}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state.get("epoch", 0))
        self.skip_samples = int(state.get("skip_samples", 0))

    def _local_len(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        # The whole epoch, also after a resume: Lightning counts the restored batches as done and ends
        # the epoch when its batch counter reaches len(loader); iteration yields only the rest.
        return self._local_len()


class RowSampler(_EpochState):
    """Row indices for one rank: a seeded permutation per epoch (or dataset order), padded by
    wrapping around to a multiple of world_size, then every world_size-th index from `rank`."""

    def __init__(self, num_rows: int, *, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 seed: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_rows, self.rank, self.world_size = int(num_rows), int(rank), int(world_size)
        self.shuffle, self.seed = bool(shuffle), int(seed)
        self.epoch, self.skip_samples = 0, 0

    def _local_len(self) -> int:
        return -(-self.num_rows // self.world_size) if self.num_rows else 0

    def local_indices(self) -> np.ndarray:
        """All of this rank's indices for the current epoch (before skip_samples)."""
        if self.num_rows == 0:
            return np.zeros(0, dtype=np.int64)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows)
        else:
            order = np.arange(self.num_rows)
        order = np.resize(order, self._local_len() * self.world_size)  # np.resize wraps around
        return order[self.rank :: self.world_size]

    def __iter__(self):
        for i in self.local_indices()[self.skip_samples :]:
            yield int(i)


class OfficialSampler(_EpochState):
    """RWKV-LM's pretraining sampler (docs/model-spec.md §6.2). Yields token offsets into the flat binidx stream:
    ii = 1 + epoch·40320 + idx·world_size + rank, offset = ((φ·ii³) mod p)·ctx_len, where
    epoch = epoch_begin + the Lightning epoch and idx is the local sample index."""

    def __init__(self, magic_prime: int, ctx_len: int, *, rank: int = 0, world_size: int = 1,
                 micro_batch_size: int = 1, epoch_begin: int = 0):
        real_bsz = world_size * micro_batch_size
        if MINI_EPOCH % real_bsz:
            raise DataError(
                f"data.loader.sampler official: world size {world_size} × data.micro_batch_size {micro_batch_size} "
                f"(linked from trainer.microbatch_size) = {real_bsz} must divide the 40320-sample mini-epoch "
                "(docs/model-spec.md §6.2); pick a micro batch size / device count whose product divides 40320"
            )
        self.p, self.ctx_len, self.phi = int(magic_prime), int(ctx_len), golden_factor(int(magic_prime))
        self.rank, self.world_size, self.micro_batch_size = rank, world_size, micro_batch_size
        self.epoch_begin = int(epoch_begin)
        self.epoch_steps = MINI_EPOCH // real_bsz
        self.epoch, self.skip_samples = 0, 0

    def _local_len(self) -> int:
        return self.epoch_steps * self.micro_batch_size

    def sample_counter(self, idx: int) -> int:
        return 1 + (self.epoch_begin + self.epoch) * MINI_EPOCH + idx * self.world_size + self.rank

    def __iter__(self):
        p, phi, ctx = self.p, self.phi, self.ctx_len
        for idx in range(self.skip_samples, self._local_len()):
            # Exact integers: ii³ exceeds 2⁶⁴ for the Pile, so reduce mod p first (docs/model-spec.md §6.2).
            yield (phi * pow(self.sample_counter(idx), 3, p)) % p * ctx
