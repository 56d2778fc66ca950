"""`RWKVCLI`: the LightningCLI behind `python lightning_trainer.py fit|validate -c cfg.yaml` (docs/design.md §4).

The model class (RWKVLitModule) and data class (RWKVDataModule) are fixed, so YAML says
`model: {n_layer: …, segments: {…}, optimizer: {…}}` and `data: {data_path: …, origin: {…}, format: {…},
rows: {…}, loader: {…}}`. Values are stated once and linked: the tokenizer's vocab goes to the model,
`model.segments.ctx_len` to the data (official sampler windows), `trainer.microbatch_size` to the data loader.
A link's target (`data.ctx_len`, `data.micro_batch_size`) is no key of the fit config, so each value has one
spelling. Keys that moved into a group are still accepted in their old place, in YAML files and on the
command line, with one warning each (rwkv/moved_keys.py).
`fit --auto_resume true` resumes from the newest complete checkpoint when one exists.
"""

from __future__ import annotations

import os
import sys

from jsonargparse import Namespace, get_loader, set_loader
from lightning.pytorch.cli import LightningCLI

from .data.config import MOVED as DATA_MOVED
from .data.datamodule import RWKVDataModule
from .moved_keys import regroup, regroup_argv
from .training.config import MOVED as MODEL_MOVED
from .training.lit_module import RWKVLitModule
from .training.strategies import register_strategies
from .training.trainer import RWKVTrainer

TRAINER_DEFAULTS = {
    "gradient_clip_val": 1.0,  # docs/model-spec.md §1.6 (DeepSpeed gets it through its config)
    "num_sanity_val_steps": 0,
    "use_distributed_sampler": False,  # RWKVDataModule builds per-rank samplers (resumable, official)
    "log_every_n_steps": 1,
    "max_epochs": 1,
}


#: jsonargparse loader mode for our YAML: plain YAML, with moved keys put in their groups
PARSER_MODE = "rwkv_yaml"
#: section → {old flat key: its group}
MOVED_KEYS = {"model": MODEL_MOVED, "data": DATA_MOVED}


def _load_regrouped(text: str):
    """jsonargparse's YAML loader, then old flat keys of a whole config (a `-c` file) moved into their
    groups. jsonargparse loads command-line values through the same function; those are no config dicts."""
    value = get_loader("yaml")(text)
    if isinstance(value, dict):
        value = regroup_config(value)
    return value


def regroup_config(cfg: dict) -> dict:
    """A config dict (`{trainer:, model:, data:}`, possibly under a subcommand) with moved keys regrouped."""
    out = dict(cfg)
    for name, value in cfg.items():
        if name in MOVED_KEYS and isinstance(value, dict):
            out[name] = regroup(name, value, MOVED_KEYS[name])
        elif name in ("fit", "validate") and isinstance(value, dict):
            out[name] = regroup_config(value)
    return out


class RWKVCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True):
        register_strategies()
        set_loader(PARSER_MODE, _load_regrouped)
        # the command line as given, for the `--data.*` overrides that error messages repeat
        self._argv = [str(a) for a in (sys.argv[1:] if args is None else args)] if not isinstance(
            args, dict | Namespace) else []
        super().__init__(
            RWKVLitModule, RWKVDataModule, trainer_class=RWKVTrainer, args=args, run=run,
            trainer_defaults=dict(TRAINER_DEFAULTS), save_config_kwargs={"overwrite": True},
        )

    def init_parser(self, **kwargs):
        kwargs.setdefault("parser_mode", PARSER_MODE)  # the main parser and every subcommand's
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser, args) -> None:
        """Old flat keys on the command line (`--model.lr_init 1e-3`) spelled with their group before
        parsing; in a dict (args given from Python) the same, through `regroup_config`."""
        if isinstance(args, dict | Namespace):
            self.config = parser.parse_object(regroup_config(args) if isinstance(args, dict) else args)
            return
        argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        for section, moved in MOVED_KEYS.items():
            argv = regroup_argv(argv, section, moved)
        self.config = parser.parse_args(argv)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.segments.ctx_len", "data.ctx_len")
        parser.link_arguments("trainer.microbatch_size", "data.micro_batch_size")
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.add_argument("--auto_resume", type=bool, default=False,
                            help="fit: resume from the newest complete checkpoint of the run, if any")

    def before_instantiate_classes(self) -> None:
        import torch

        if torch.cuda.is_available():  # tf32 matmuls on GPU; never at import
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        cfg = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = cfg["trainer"]
        root = trainer.get("default_root_dir") or "runs"
        # Defaults written into the config itself, so the resolved config saved with the run shows them.
        if trainer.get("logger") in (None, True):
            trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                 "init_args": {"save_dir": root, "name": "logs"}}
        callbacks = trainer.get("callbacks") or []
        names = [str(getattr(cb, "class_path", "") or (cb.get("class_path") if isinstance(cb, dict) else ""))
                 for cb in callbacks]
        # A fixed directory (not per logger version), so that resume finds the previous run's checkpoints.
        # It follows default_root_dir: configs name no ModelCheckpoint dirpath, so `--trainer.default_root_dir`
        # moves checkpoints with the logs; a dirpath the user states is kept.
        ckpt_dir = os.path.join(root, "checkpoints")
        for cb, name in zip(callbacks, names):
            if name.endswith("ModelCheckpoint"):
                _default_dirpath(cb, ckpt_dir)
        if trainer.get("enable_checkpointing") is not False and not any("ModelCheckpoint" in n for n in names):
            callbacks.append(Namespace(class_path="lightning.pytorch.callbacks.ModelCheckpoint",
                                       init_args=Namespace(dirpath=ckpt_dir, save_last=True)))
        if trainer.get("enable_progress_bar") is not False and not any("ProgressBar" in n for n in names):
            callbacks.append(Namespace(class_path="lightning.pytorch.callbacks.TQDMProgressBar",
                                       init_args=Namespace(refresh_rate=1)))
        trainer["callbacks"] = callbacks

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        cfg_files = self.config.get(self.subcommand, self.config).get("config") if self.subcommand else None
        if cfg_files:
            self.datamodule.config_path = os.fspath(cfg_files[0])
        self.datamodule.preload_overrides = data_overrides(self._argv)

    def before_fit(self) -> None:
        cfg = self.config[self.subcommand]
        if cfg.get("auto_resume") and not cfg.get("ckpt_path"):
            from .checkpoint.resume import find_resume_checkpoint

            ckpt = None
            for cb in self.trainer.checkpoint_callbacks:  # callbacks without a dirpath write per run version
                if cb.dirpath and (ckpt := find_resume_checkpoint(cb.dirpath)):
                    break
            if ckpt:
                self.trainer.print(f"auto_resume: resuming from {ckpt}")
                self.config_init[self.subcommand]["ckpt_path"] = str(ckpt)  # what fit() receives
            else:
                self.trainer.print("auto_resume: no complete checkpoint found, starting from scratch")
        if not self.config_init[self.subcommand].get("ckpt_path"):
            for cb in self.trainer.checkpoint_callbacks:
                if cb.dirpath and os.path.exists(os.path.join(cb.dirpath, "last.ckpt")):
                    self.trainer.print(f"warning: {earlier_last_message(cb.dirpath)}", file=sys.stderr)


def earlier_last_message(ckpt_dir: str) -> str:
    """A fresh run whose checkpoint directory already holds a last.ckpt: Lightning keeps that file and names
    this run's `last-v1.ckpt` (then -v2, ...), so `last.ckpt` would still be the earlier model."""
    return (f"{ckpt_dir}/last.ckpt is from an earlier run and stays as it is: this run's last checkpoint will be "
            f"{ckpt_dir}/last-vN.ckpt (the newest N). To continue that run use --ckpt_path last or --auto_resume "
            f"true; to start afresh use another --trainer.default_root_dir or remove {ckpt_dir}.")


def data_overrides(argv: list[str]) -> list[str]:
    """The `--data.KEY VALUE`, `--data.KEY=VALUE` and `--data VALUE` items of a command line, in order:
    what `preload_datapath.py CONFIG` needs on its own command line to build the same data."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith(("--data.", "--data=")) or a == "--data":
            if "=" in a or i + 1 == len(argv):
                out.append(a)
            else:
                out += [a, argv[i + 1]]
                i += 1
        i += 1
    return out


def _default_dirpath(callback, ckpt_dir: str) -> None:
    """Set a ModelCheckpoint callback's `dirpath` to `ckpt_dir` when the config leaves it unset."""
    if isinstance(callback, dict):
        init = callback.setdefault("init_args", {})
        if isinstance(init, dict) and not init.get("dirpath"):
            init["dirpath"] = ckpt_dir
        return
    init = getattr(callback, "init_args", None)
    if init is None:
        callback.init_args = Namespace(dirpath=ckpt_dir)
    elif not init.get("dirpath"):
        init["dirpath"] = ckpt_dir


def main(args=None) -> None:
    import warnings

    from .errors import user_error_types
    from .training.cpu_alloc import tune_cpu_allocator

    tune_cpu_allocator()  # page reuse between steps on CPU (rwkv/training/cpu_alloc.py)

    # Lightning's own use of a deprecated torch API; nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        RWKVCLI(args=args)
    except user_error_types() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
