"""PEFT through the real scripts: lightning_trainer.py fit with model.peft, checkpoints with only the
trainable tensors, exact resume, base mismatch, export_checkpoint.py --adapter/--state, peft's own API
on the exported adapter, pip `rwkv` on the merged file and from the state file, dragon_test.py --state."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rwkv.model import from_pth, save_pth
from rwkv.peft import STATE_KEY, attach_time_state, load_state_file, to_pip_state_list
from tests.support.models import random_model
from tests.support.pip_rwkv import run_pip_rwkv
from tests.support.runs import fit, make_config, preload, run

pytestmark = pytest.mark.slow

VOCAB = 320  # the bytes tokenizer's padded vocab
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["receptance", "key", "value", "output"]}
CKPT = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": None, "every_n_train_steps": 1, "save_last": True, "save_top_k": -1}}


def make_base(path, seed):
    model = random_model("x070", n_layer=2, n_embd=64, head_size=16, vocab_size=VOCAB, seed=seed)
    save_pth(model, path, dtype="fp32")
    return path


def config(tmp, name, base, peft, corpus, data_dir, steps=4):
    ckpt = {**CKPT, "init_args": {**CKPT["init_args"], "dirpath": str(tmp / name / "ckpt")}}
    over = {"trainer": {"max_steps": steps, "callbacks": [ckpt], "default_root_dir": str(tmp / name),
                        "val_check_interval": None, "limit_val_batches": 0},
            "data": {"data_path": str(data_dir)},
            "model": {"load_model": str(base), "n_layer": None, "n_embd": None, "head_size": 16,
                      "peft": peft, "lr_init": 1e-2, "lr_final": 1e-3}}
    return make_config(tmp, over, corpus=corpus, name=f"{name}.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peft")
    base = make_base(tmp / "base.pth", seed=0)
    cfg0 = make_config(tmp)
    preload(cfg0)
    corpus, data_dir = tmp / "corpus.jsonl", tmp / "data"
    peft = {"lora": LORA, "state_tuning": True, "state_lr": 0.05}
    fit(config(tmp, "straight", base, peft, corpus, data_dir))
    return {"tmp": tmp, "base": base, "peft": peft, "corpus": corpus, "data": data_dir,
            "ckpt": tmp / "straight" / "ckpt"}


def trained_tensors(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_checkpoint_holds_only_trainable_tensors_and_the_base_identity(trained):
    ck = torch.load(trained["ckpt"] / "last.ckpt", map_location="cpu", weights_only=False)
    keys = set(ck["state_dict"])
    assert keys and all(".lora_" in k or k.endswith("att.time_state") for k in keys), sorted(keys)[:5]
    assert {f"model.{STATE_KEY.format(i)}" for i in range(2)} <= keys
    info = ck["rwkv"]["peft"]
    import hashlib
    assert info["base_sha256"] == hashlib.sha256(trained["base"].read_bytes()).hexdigest()
    # Adam moments exist for the trained tensors only
    n_state = sum(len(s) > 0 for s in ck["optimizer_states"][0]["state"].values())
    assert n_state == len(keys)


def test_resume_continues_exactly(trained):
    tmp = trained["tmp"]
    cfg = config(tmp, "resumed", trained["base"], trained["peft"], trained["corpus"], trained["data"])
    fit(cfg, "--ckpt_path", str(trained["ckpt"] / "epoch=0-step=2.ckpt"))
    a = trained_tensors(trained["ckpt"] / "last.ckpt")
    b = trained_tensors(tmp / "resumed" / "ckpt" / "last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_against_another_base_fails_clearly(trained):
    tmp = trained["tmp"]
    # LightningCLI takes model.load_model from the checkpoint's hyper-parameters on resume, so the case to
    # catch is a base path whose file now holds another model: a copy of the checkpoint pointing at one
    other = make_base(tmp / "other.pth", seed=1)
    ck = torch.load(trained["ckpt"] / "last.ckpt", map_location="cpu", weights_only=False)
    ck["hyper_parameters"]["load_model"] = str(other)
    torch.save(ck, tmp / "moved.ckpt")
    cfg = config(tmp, "wrongbase", other, trained["peft"], trained["corpus"], trained["data"])
    proc = fit(cfg, "--ckpt_path", str(tmp / "moved.ckpt"), check=False)
    assert proc.returncode != 0
    assert "model.load_model" in proc.stderr and "not the base this checkpoint was trained on" in proc.stderr


def test_bad_peft_config_names_the_key(trained):
    tmp = trained["tmp"]
    cfg = config(tmp, "typo", trained["base"], {"lora": LORA, "train_parts": ["lnn"]}, trained["corpus"],
                 trained["data"])
    proc = fit(cfg, check=False)
    assert proc.returncode != 0 and "model.peft.train_parts" in proc.stderr and "'lnn'" in proc.stderr


@pytest.fixture(scope="module")
def exported(trained):
    tmp = trained["tmp"]
    out, adapter, state = tmp / "merged.pth", tmp / "adapter", tmp / "state.pth"
    run(["export_checkpoint.py", str(trained["ckpt"] / "last.ckpt"), str(out), "--dtype", "fp32",
         "--adapter", str(adapter), "--state", str(state)])
    return {**trained, "out": out, "adapter": adapter, "state": state}


def test_merged_export_is_base_plus_adapters_and_the_base_stayed_frozen(exported):
    base = torch.load(exported["base"], map_location="cpu")
    merged = torch.load(exported["out"], map_location="cpu")
    assert list(merged) == list(base)  # official keys and order, nothing extra
    ad = load_file(str(exported["adapter"] / "adapter_model.safetensors"))
    cfg = json.loads((exported["adapter"] / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    changed = 0
    for k, w in base.items():
        mod = k.removesuffix(".weight")
        a_key, b_key = f"{mod}.lora_A.weight", f"{mod}.lora_B.weight"
        if a_key in ad:  # oracle from the adapter file: W + (alpha/r)·B·A
            torch.testing.assert_close(merged[k], w + scale * ad[b_key] @ ad[a_key], rtol=1e-5, atol=1e-6)
            changed += int(not torch.equal(merged[k], w))
        else:  # every other base tensor is bit-identical after training
            assert torch.equal(merged[k], w), k
    assert changed == 2 * 6  # all targeted linears moved (2 layers × att r/k/v/o + ffn key/value)


def test_peft_loads_the_adapter_onto_a_from_pth_model(exported):
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    model = from_pth(exported["base"])
    config = LoraConfig.from_pretrained(str(exported["adapter"]))
    model = inject_adapter_in_model(config, model)
    set_peft_model_state_dict(model, load_file(str(exported["adapter"] / "adapter_model.safetensors")))
    merged = from_pth(exported["out"])
    x = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        want, got = model(x)[0], merged(x)[0]
    # fp32, merged weight vs base + low-rank path: one rounding per matmul (issue bound 1e-5 relative)
    assert ((got - want).norm() / want.norm()).item() <= 1e-5


def test_pip_forward_from_the_state_file_and_on_the_merged_file(exported, tmp_path):
    states = load_state_file(exported["state"])
    assert set(states) == {STATE_KEY.format(i) for i in range(2)}
    assert all(tuple(v.shape) == (4, 16, 16) and v.dtype == torch.float32 for v in states.values())
    assert any(v.abs().max() > 0 for v in states.values())  # the states learned something
    model = from_pth(exported["out"])
    tokens = torch.randint(1, VOCAB, (24,)).tolist()
    with torch.no_grad():
        plain = model(torch.tensor([tokens]))[0][0]
        attach_time_state(model, states)
        tuned = model(torch.tensor([tokens]))[0][0]
    pip = run_pip_rwkv(exported["out"], "x070", tokens, tmp_path, state_in=to_pip_state_list(states, model.cfg))
    # pip runs its own fp32 per-token/TorchScript path: 1e-4 covers a different summation order
    assert (pip["seq_logits"] - plain).abs().max().item() <= 1e-4 * max(1.0, plain.abs().max().item())
    assert (pip["cont_logits"] - tuned).abs().max().item() <= 1e-4 * max(1.0, tuned.abs().max().item())
    assert (tuned - plain).abs().max().item() > 1e-3  # the state file changes the output


def test_dragon_samples_with_a_state_file(exported):
    proc = run(["dragon_test.py", str(exported["out"]), "--tokens", "8", "--state", str(exported["state"]),
                "--tokenizer", "bytes", "--prompt", "alpha"])
    assert "8 tokens" in proc.stderr
    bad = exported["tmp"] / "bad_state.pth"
    torch.save({STATE_KEY.format(0): torch.zeros(4, 16, 16)}, bad)
    proc = run(["dragon_test.py", str(exported["out"]), "--state", str(bad), "--tokenizer", "bytes"], check=False)
    assert proc.returncode == 2 and "blocks.1.att.time_state" in proc.stderr
