"""The typed groups of `model:` (rwkv/training/config.py) and the keys that moved into them
(rwkv/moved_keys.py): every old flat key still works in a YAML file, on the command line and as a keyword
argument, with exactly one warning naming its new place; checkpoints written before the move (flat
hparams) still load, resume and export."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from rwkv import moved_keys
from rwkv.checkpoint.export import export_checkpoint
from rwkv.moved_keys import MovedConfigKeyWarning
from rwkv.training.config import MOVED, OptimizerConfig, SegmentConfig
from rwkv.training.lit_module import RWKVLitModule
from rwkv.training.trainer import RWKVTrainer
from tests.conftest import ROOT

# One non-default value for every moved key.
OLD = {"ctx_len": 32, "bptt": 2, "grad_cp": True, "lr_init": 1.5e-3, "lr_final": 1e-5, "lr_schedule": "linear",
       "warmup_steps": 7, "token_budget": 1000, "schedule_by_time": True, "beta1": 0.8, "beta2": 0.95,
       "adam_eps": 1e-8, "weight_decay": 0.1, "layerwise_lr": True}
TINY = ROOT / "configs" / "test" / "tiny.yaml"

PARSE = r"""
import contextlib, io, json, sys, warnings
import yaml
from rwkv import moved_keys
from rwkv.cli import RWKVCLI

def parse(args):
    moved_keys._warned.clear()
    buf = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with contextlib.redirect_stdout(buf):
                RWKVCLI(args=["fit", *args, "--print_config"])
        except SystemExit as e:
            assert e.code in (0, None), e.code
    return {"cfg": yaml.safe_load(buf.getvalue()),
            "moved": [str(w.message) for w in caught if issubclass(w.category, moved_keys.MovedConfigKeyWarning)]}

old_yaml, tiny, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
print(json.dumps({"yaml": parse(["-c", old_yaml]), "argv": parse(["-c", tiny, *argv])}))
"""


def test_every_moved_key_is_covered():
    assert set(OLD) == set(MOVED)


def _flat_model(model: dict) -> dict:
    """A `model:` section as it was written before the groups: every grouped key directly under model."""
    out = {k: v for k, v in model.items() if k not in ("segments", "optimizer")}
    for group in ("segments", "optimizer"):
        out.update(model.get(group) or {})
    return out


def _assert_moved(result, where):
    model = result["cfg"]["model"]
    for key, value in OLD.items():
        group = MOVED[key]
        assert model[group][key] == value, (where, key, model[group])
        assert key not in model, (where, key)
    # exactly one warning per old key, each naming the new place
    assert len(result["moved"]) == len(OLD), (where, result["moved"])
    for key, group in MOVED.items():
        hits = [m for m in result["moved"] if m.startswith(f"model.{key} is now model.{group}.{key}")]
        assert len(hits) == 1, (where, key, result["moved"])


def test_old_flat_keys_in_yaml_and_on_the_command_line(tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["model"] = {**_flat_model(cfg["model"]), **OLD}
    old_yaml = tmp_path / "old.yaml"
    old_yaml.write_text(yaml.safe_dump(cfg))
    argv = []
    for key, value in OLD.items():
        text = value if isinstance(value, str) else json.dumps(value)  # true, 0.0015
        argv += [f"--model.{key}={text}"] if key == "lr_init" else [f"--model.{key}", text]
    p = subprocess.run([sys.executable, "-c", PARSE, str(old_yaml), str(TINY), *argv], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    _assert_moved(out["yaml"], "yaml")
    _assert_moved(out["argv"], "argv")  # the command line wins over the grouped values of tiny.yaml


def test_old_flat_keywords_land_in_their_groups_and_warn_once():
    moved_keys._warned.clear()
    shape = dict(n_layer=1, n_embd=32, head_size=16, vocab_size=50)
    with pytest.warns(MovedConfigKeyWarning) as caught:
        old = RWKVLitModule(**shape, **OLD)
    messages = [str(w.message) for w in caught if w.category is MovedConfigKeyWarning]
    assert sorted(messages) == sorted(moved_keys.moved_message("model", k, g) for k, g in MOVED.items())
    new = RWKVLitModule(**shape, segments=SegmentConfig(**{k: OLD[k] for k in ("ctx_len", "bptt", "grad_cp")}),
                        optimizer=OptimizerConfig(**{k: v for k, v in OLD.items() if MOVED[k] == "optimizer"}))
    assert old.segment_config == new.segment_config and old.optimizer_config == new.optimizer_config
    assert dict(old.hparams) == dict(new.hparams)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", MovedConfigKeyWarning)  # once per process, not once per use
        RWKVLitModule(**shape, lr_init=1e-3)
    with pytest.raises(TypeError, match="lr_initial"):
        RWKVLitModule(**shape, lr_initial=1e-3)


def _batches(n, V=97):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (2, 41), generator=g)
    batch = {"input_ids": ids, "loss_mask": torch.ones(2, 41), "lengths": torch.tensor([41, 41])}
    return DataLoader([batch] * n, batch_size=None)


def _trainer(steps, root):
    return RWKVTrainer(accelerator="cpu", devices=1, max_steps=steps, microbatch_size=2, logger=False,
                       enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                       default_root_dir=root)


def _module():
    torch.manual_seed(0)
    return RWKVLitModule(n_layer=1, n_embd=32, head_size=16, vocab_size=97, segments=SegmentConfig(ctx_len=16),
                         optimizer=OptimizerConfig(lr_init=1e-3, lr_final=1e-4, warmup_steps=0))


def test_checkpoint_with_flat_hparams_loads_resumes_and_exports(tmp_path):
    trainer = _trainer(2, tmp_path)
    trainer.fit(_module(), train_dataloaders=_batches(6))
    new = tmp_path / "new.ckpt"
    trainer.save_checkpoint(new)
    ck = torch.load(new, map_location="cpu", weights_only=True)  # grouped hparams are plain values
    hp = ck["hyper_parameters"]
    assert hp["segments"]["ctx_len"] == 16 and hp["optimizer"]["lr_init"] == 1e-3
    ck["hyper_parameters"] = _flat_model(hp)  # as saved before the groups existed
    old = tmp_path / "old.ckpt"
    torch.save(ck, old)

    moved_keys._warned.clear()
    with pytest.warns(MovedConfigKeyWarning):
        loaded = RWKVLitModule.load_from_checkpoint(old, map_location="cpu")
    assert dict(loaded.hparams) == dict(_module().hparams)
    for (n, a), b in zip(loaded.model.state_dict().items(), ck["state_dict"].values()):
        assert torch.equal(a, b), n

    # resume: the steps continue from the old checkpoint's
    resumed = _trainer(4, tmp_path)
    resumed.fit(_module(), train_dataloaders=_batches(6), ckpt_path=old)
    assert resumed.global_step == 4

    a = export_checkpoint(old, tmp_path / "old.pth", dtype="fp32")
    b = export_checkpoint(new, tmp_path / "new.pth", dtype="fp32")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
