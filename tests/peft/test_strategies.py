"""PEFT (LoRA + state tuning) with 2 CPU ranks under DDP and DeepSpeed ZeRO-2/3 through the real script:
checkpoints hold only the trainable tensors (DeepSpeed shards included), an interrupted run resumed from
its step-2 checkpoint ends where the uninterrupted run ends, resuming against another base fails clearly,
and export_checkpoint.py --adapter/--state works on each run's checkpoint."""

import shutil
from pathlib import Path

import pytest
import torch

from rwkv.peft import STATE_KEY, load_state_file
from rwkv.peft.merge import load_lightning_checkpoint
from tests.peft.test_training import LORA, make_base
from tests.support.runs import fit, make_config, preload, run, write_corpus

pytestmark = pytest.mark.slow

STRATEGIES = ["ddp", "deepspeed_stage_2", "deepspeed_stage_3"]
STEPS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peft_strategies")
    corpus = write_corpus(tmp / "corpus.jsonl", n_docs=64, seed=3, min_words=1, max_words=120)
    preload(make_config(tmp, corpus=corpus))
    return tmp, corpus, make_base(tmp / "base.pth", seed=0)


def two_rank_config(tmp, corpus, data_dir, base, strategy, name):
    ckpt = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(tmp / name / "ckpt"), "every_n_train_steps": 1, "save_top_k": -1,
                          "save_last": True}}
    over = {"trainer": {"devices": 2, "max_steps": STEPS, "val_check_interval": None, "limit_val_batches": 0,
                        "strategy": strategy, "default_root_dir": str(tmp / name), "callbacks": [ckpt]},
            "data": {"data_path": str(data_dir)},
            "model": {"load_model": str(base), "n_layer": None, "n_embd": None, "head_size": 16,
                      "peft": {"lora": LORA, "state_tuning": True, "state_lr": 0.05}, "lr_init": 1e-2}}
    return make_config(tmp, over, corpus=corpus, name=f"{name}.yaml")


@pytest.fixture(scope="module", params=STRATEGIES)
def straight(request, data, tmp_path_factory):
    """An uninterrupted STEPS-step run per strategy, checkpointing every step. Its base is a copy of its
    own, so a test can later put another model under the same path."""
    tmp_data, corpus, base0 = data
    strategy = request.param
    tmp = tmp_path_factory.mktemp(strategy)
    base = tmp / "base.pth"
    shutil.copy(base0, base)
    fit(two_rank_config(tmp, corpus, tmp_data / "data", base, strategy, "straight"), timeout=900)
    return {"tmp": tmp, "corpus": corpus, "data": tmp_data / "data", "base": base, "strategy": strategy,
            "ckpt": tmp / "straight" / "ckpt"}


def trained_tensors(ckpt: Path) -> dict:
    """The trained tensors of a .ckpt file or a DeepSpeed directory (consolidated by zero_to_fp32)."""
    sd = load_lightning_checkpoint(ckpt)["state_dict"]
    return {k.removeprefix("model."): v for k, v in sd.items()}


def all_tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from all_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from all_tensors(v)


def test_checkpoint_holds_no_frozen_base_tensor(straight):
    last = straight["ckpt"] / "last.ckpt"
    base = torch.load(straight["base"])
    trained = lambda k: ".lora_" in k or k.endswith("att.time_state")
    files = sorted(last.rglob("*.pt")) if last.is_dir() else [last]
    assert files
    numel = 0
    for f in files:
        ck = torch.load(f, map_location="cpu", weights_only=False)
        for key in ("state_dict", "module"):  # Lightning's state dict / DeepSpeed's module shard
            assert all(trained(k) for k in ck.get(key) or {}), (f.name, sorted(ck[key])[:3])
        assert not ck.get("frozen_param_fragments") and not ck.get("frozen_param_shapes"), f.name
        numel += sum(t.numel() for t in all_tensors(ck))
    # Everything stored (weights, fp32 masters, both Adam moments, on both ranks) is a small multiple of the
    # trained tensors and far less than the base's frozen tensors, the smallest of which would already show.
    n_trained = sum(v.numel() for v in trained_tensors(last).values())
    n_base = sum(v.numel() for v in base.values())
    assert numel <= 6 * n_trained < n_base, (numel, n_trained, n_base)


def test_resume_continues_exactly(straight):
    tmp = straight["tmp"]
    cfg = two_rank_config(tmp, straight["corpus"], straight["data"], straight["base"], straight["strategy"],
                          "resumed")
    fit(cfg, "--ckpt_path", str(straight["ckpt"] / "epoch=0-step=2.ckpt"), timeout=900)
    a = trained_tensors(straight["ckpt"] / "last.ckpt")
    b = trained_tensors(tmp / "resumed" / "ckpt" / "last.ckpt")
    assert a.keys() == b.keys() and a
    for k in a:  # same data, same optimizer state, same reduction order: bit for bit
        assert torch.equal(a[k], b[k]), k


def test_two_ranks_train_and_export(straight, tmp_path):
    strategy, base, ckpt_dir = straight["strategy"], straight["base"], straight["ckpt"]
    last = ckpt_dir / "last.ckpt"
    if strategy == "ddp":
        sd = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
        assert all(".lora_" in k or k.endswith("time_state") for k in sd)
    out = tmp_path / "merged.pth"
    run(["export_checkpoint.py", str(last), str(out), "--dtype", "fp32", "--adapter", str(tmp_path / "adapter"),
         "--state", str(tmp_path / "state.pth")])
    base_sd, merged = torch.load(base), torch.load(out)
    assert list(merged) == list(base_sd)
    targeted = ("receptance.", "key.", "value.", "output.")
    for k, w in base_sd.items():
        if not any(t in k for t in targeted):
            assert torch.equal(merged[k], w), k  # frozen base tensors untouched on every rank
    assert any(not torch.equal(merged[k], base_sd[k]) for k in base_sd if "att.key." in k)
    states = load_state_file(tmp_path / "state.pth")
    assert set(states) == {STATE_KEY.format(i) for i in range(2)}
    assert all(v.abs().max() > 0 for v in states.values())


def test_resume_against_another_base_fails_clearly(straight):
    tmp, base = straight["tmp"], straight["base"]
    shutil.copy(base, tmp / "base.orig")
    try:
        make_base(base, seed=1)  # another model at the recorded base path
        cfg = two_rank_config(tmp, straight["corpus"], straight["data"], base, straight["strategy"], "wrongbase")
        proc = fit(cfg, "--ckpt_path", str(straight["ckpt"] / "epoch=0-step=2.ckpt"), check=False, timeout=900)
    finally:
        shutil.copy(tmp / "base.orig", base)
    assert proc.returncode != 0
    assert "model.load_model" in proc.stderr and "not the base this checkpoint was trained on" in proc.stderr
