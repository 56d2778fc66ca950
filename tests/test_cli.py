"""The training command's own helpers (rwkv/cli.py): the `--data.*` overrides a suggested preload command
repeats, and the checkpoint directory filled into a ModelCheckpoint without one. The command itself runs
in tests/e2e/ (test_fit.py, test_override_paths.py)."""

from rwkv.cli import _default_dirpath, data_overrides


def test_data_overrides_keeps_only_data_items_in_order():
    argv = ["fit", "-c", "a.yaml", "--data.data_path", "x y", "--model.n_layer", "2", "--data.tokenizer=world",
            "--data", "{num_proc: 1}", "--trainer.default_root_dir", "r", "--database", "no", "--data.last"]
    assert data_overrides(argv) == ["--data.data_path", "x y", "--data.tokenizer=world", "--data",
                                    "{num_proc: 1}", "--data.last"]


def test_default_dirpath_fills_only_an_unset_dirpath():
    from jsonargparse import Namespace

    unset = Namespace(class_path="lightning.pytorch.callbacks.ModelCheckpoint", init_args=Namespace(dirpath=None))
    given = Namespace(class_path="lightning.pytorch.callbacks.ModelCheckpoint", init_args=Namespace(dirpath="mine"))
    as_dict = {"class_path": "ModelCheckpoint", "init_args": {"save_last": True}}
    for cb in (unset, given, as_dict):
        _default_dirpath(cb, "root/checkpoints")
    assert unset.init_args.dirpath == "root/checkpoints"
    assert given.init_args.dirpath == "mine"
    assert as_dict["init_args"] == {"save_last": True, "dirpath": "root/checkpoints"}
