"""PEFT (LoRA + state tuning) with 2 CPU ranks under DDP and DeepSpeed ZeRO-2/3 through the real script,
then export_checkpoint.py --adapter/--state on each run's checkpoint."""

import pytest
import torch

from rwkv.peft import STATE_KEY, load_state_file
from tests.peft.test_train import LORA, make_base
from tests.support.runs import fit, make_config, preload, run, write_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peft_strategies")
    corpus = write_corpus(tmp / "corpus.jsonl", n_docs=64, seed=3, min_words=1, max_words=120)
    preload(make_config(tmp, corpus=corpus))
    return tmp, corpus, make_base(tmp / "base.pth", seed=0)


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_stage_2", "deepspeed_stage_3"])
def test_two_ranks_train_and_export(data, tmp_path, strategy):
    tmp, corpus, base = data
    ckpt_dir = tmp_path / "ckpt"
    over = {"trainer": {"devices": 2, "max_steps": 3, "val_check_interval": None, "limit_val_batches": 0,
                        "strategy": strategy, "default_root_dir": str(tmp_path / "run"),
                        "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                       "init_args": {"dirpath": str(ckpt_dir), "save_last": True}}]},
            "data": {"data_path": str(tmp / "data")},
            "model": {"load_model": str(base), "n_layer": None, "n_embd": None, "head_size": 16,
                      "peft": {"lora": LORA, "state_tuning": True, "state_lr": 0.05}, "lr_init": 1e-2}}
    fit(make_config(tmp_path, over, corpus=corpus), timeout=900)
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
