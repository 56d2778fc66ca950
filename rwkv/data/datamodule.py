"""`RWKVDataModule`: the only module of rwkv.data that imports Lightning.

Its `__init__` is `DataConfig.__init__` (inherited, not redefined): that typed signature and its group
dataclasses (origin, format, rows, loader), with one docstring line per key, are the schema of the YAML
`data:` section for LightningCLI and for preload_datapath.py alike. Fit never tokenizes: `setup()`
memory-maps what `preload_datapath.py` wrote, after checking that its manifest matches the current config
(docs/design.md §3.6).
"""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from ..errors import DataError
from .config import DataConfig
from .loader import BinidxWindows, Collate, TokenRows
from .sampler import OfficialSampler, RowSampler


class RWKVDataModule(DataConfig, pl.LightningDataModule):
    """Preloaded RWKV training data (see docs/data.md): train/test rows, per-rank samplers, batches."""

    #: Set by the CLI to the YAML path, so messages can name `python preload_datapath.py <path>`.
    config_path: str | None = None
    #: Set by the CLI to the command line's `--data.*` items, repeated in that command.
    preload_overrides: tuple[str, ...] | list[str] = ()

    # -- sizes linked into the model --------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """The tokenizer's padded model vocab (world 65536, neox 50304, bytes 320, HF: len→×64)."""
        from .tokenizers import tokenizer_vocab_size

        return tokenizer_vocab_size(self.tokenizer)

    # -- lifecycle ---------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _preload_command(self) -> str:
        import shlex

        config = shlex.quote(self.config_path) if self.config_path else "<your config.yaml>"
        return " ".join(["python preload_datapath.py", config, *map(shlex.quote, self.preload_overrides)])

    def prepare_data(self) -> None:
        """Build a missing/stale data_path when auto_preload is on. Lightning calls this on local
        rank 0 of each node while the other ranks wait at its barrier; only global rank 0 builds
        (one builder per shared file system), then every rank checks and loads in setup()."""
        if self.source is None or self.sampler == "official":
            return
        if self._rank_world()[0] != 0:
            return
        from .preload import data_status, preload

        status, _ = data_status(self)
        if status != "ok" and self.auto_preload and status != "foreign":
            preload(self)

    def setup(self, stage: str | None = None) -> None:
        self.train_rows = self.test_rows = self.windows = None
        if self.sampler == "official":
            self._setup_official()
            return
        from .preload import data_status

        status, manifest = data_status(self) if self.source is not None else ("ok", None)
        if status != "ok":
            why = {
                "missing": f"data.data_path {self.data_path} does not exist",
                "stale": f"data.data_path {self.data_path} was built from a different data config or "
                         "source files (its manifest hash differs)",
                "foreign": f"data.data_path {self.data_path} was not written by preload_datapath.py",
            }[status]
            hint = "" if status == "foreign" else " (or set data.loader.auto_preload: true)"
            raise DataError(f"{why}. Build it with: {self._preload_command()}{hint}")
        import datasets

        try:
            dd = datasets.load_from_disk(str(self.data_path))
        except Exception as e:  # noqa: BLE001
            raise DataError(f"data.data_path {self.data_path}: not a saved DatasetDict ({e}); rebuild it "
                            f"with {self._preload_command()}") from None
        if isinstance(dd, datasets.Dataset):
            dd = datasets.DatasetDict({"train": dd})
        if "train" not in dd or "input_ids" not in dd["train"].column_names:
            raise DataError(f"data.data_path {self.data_path}: needs a train split with an input_ids column")
        self.manifest = manifest
        self.train_rows = TokenRows(_with_mask(dd["train"]))
        self.test_rows = TokenRows(_with_mask(dd["test"])) if "test" in dd else None

    def _setup_official(self) -> None:
        from .binidx import BinIdxReader, check_magic_prime, magic_prime

        reader = BinIdxReader(self.source_data_files)
        p = self.magic_prime or magic_prime(reader.num_tokens, self.ctx_len)
        warning = check_magic_prime(p, reader.num_tokens, self.ctx_len)
        if warning:
            import warnings

            warnings.warn(warning, stacklevel=2)
        self.resolved_magic_prime = p
        self.windows = BinidxWindows(reader, self.ctx_len)

    def _ready(self) -> bool:
        return getattr(self, "train_rows", None) is not None or getattr(self, "windows", None) is not None

    # -- loaders -----------------------------------------------------------------------------
    def _loader(self, dataset, sampler, batch_size: int, cls=DataLoader, **kw) -> DataLoader:
        return cls(
            dataset, batch_size=batch_size, sampler=sampler, drop_last=False,
            collate_fn=Collate(self.reset_state_per_document), num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0, **kw,
        )

    def samples_per_step(self) -> int:
        """The train loader's batch on this rank. RWKVTrainer accumulates inside one training step, so there
        one batch is one optimizer step: its `samples_per_step` (trainer.microbatch_size × the accumulation
        count). Any other Lightning Trainer accumulates across batches itself (accumulate_grad_batches), and
        gets micro batches; so does the module without a trainer. The data package does not import training
        (docs/design.md §2), hence the test for the attribute rather than for the class."""
        trainer = getattr(self, "trainer", None)
        if hasattr(trainer, "samples_per_step"):
            return int(trainer.samples_per_step)
        return self.micro_batch_size

    def train_dataloader(self) -> DataLoader:
        if not self._ready():
            self.setup("fit")
        rank, world = self._rank_world()
        step = self.samples_per_step()
        if self.sampler == "official":
            # one step's samples play the role of the official micro batch in ii = … + idx·world + rank
            sampler = OfficialSampler(self.resolved_magic_prime, self.ctx_len, rank=rank, world_size=world,
                                      micro_batch_size=step, epoch_begin=self.epoch_begin)
            dataset = self.windows
        else:
            seed = self.seed if self.sampler_seed is None else self.sampler_seed
            # A sorted dataset is meant to be read in order (infctx: no shuffle when sorted).
            sampler = RowSampler(len(self.train_rows), rank=rank, world_size=world,
                                 shuffle=self.shuffle and not self.sort_by_length, seed=seed)
            dataset = self.train_rows
        self.train_sampler = sampler
        return self._loader(dataset, sampler, step, cls=ResumableDataLoader, position_fn=self._train_position)

    def val_dataloader(self) -> DataLoader:
        if not self._ready():
            self.setup("validate")
        rank, world = self._rank_world()
        rows = self.test_rows if self.test_rows is not None else []
        # Padding by wrapping repeats a few test rows on some ranks; every rank runs the same steps.
        sampler = RowSampler(len(rows), rank=rank, world_size=world, shuffle=False)
        return self._loader(rows, sampler, self.micro_batch_size)

    # -- mid-epoch resume ----------------------------------------------------------------------
    def _train_position(self) -> dict:
        """(epoch, samples of this rank already trained on in it), from the trainer's progress counter:
        the loader's own iterator runs ahead of training (prefetch, workers)."""
        sampler = self.train_sampler
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return sampler.state_dict()
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": int(sampler.epoch), "skip_samples": int(done) * self.samples_per_step()}


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning checkpoints and restores (its `state_dict`/`load_state_dict`
    protocol): the state is the sampler's epoch and how many of this rank's samples were trained on."""

    def __init__(self, *args, position_fn, **kwargs):
        super().__init__(*args, **kwargs)
        self._position_fn = position_fn

    def state_dict(self) -> dict:
        return self._position_fn()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def _with_mask(ds):
    """Datasets built elsewhere (source: null) may lack loss_mask: then every token is learned."""
    if "loss_mask" in ds.column_names:
        return ds
    return ds.map(lambda b: {"loss_mask": [[1] * len(x) for x in b["input_ids"]]}, batched=True,
                  desc="adding loss_mask")
