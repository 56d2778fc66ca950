"""The Lightning side of PEFT (the hooks RWKVLitModule calls): set-up after the base model is built,
optimizer groups, and checkpoints that hold only the trainable tensors plus the base's path and hash.

Checkpoint layout (a normal Lightning .ckpt): `state_dict` has only the trainable tensors (`model.` +
their names), the optimizer state covers only them, and `checkpoint["rwkv"]["peft"]` records
`{base, base_sha256, spec, lora_config, trainable}`. On resume the base tensors come from
model.load_model, whose SHA-256 must equal the recorded one.

Under DeepSpeed the engine writes the module and optimizer shards itself (Lightning hands it the client
state without `state_dict`): `on_save` turns on the strategy's `exclude_frozen_parameters`, so the shards
hold only the trainable tensors and their optimizer state, and the engine loads them back non-strictly
(`strict_loading`) onto the model built from the base; `on_load` then checks the base and the names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import ConfigError
from . import apply_peft, file_sha256, lora_config_of, parse_peft, peft_param_groups, trainable_names

PREFIX = "model."


def setup(model, hparams):
    """Apply model.peft to the freshly built (and loaded) base model. No-op without model.peft."""
    spec = parse_peft(getattr(hparams, "peft", None))
    if spec is None:
        return model
    if not hparams.load_model:
        raise ConfigError("model.peft needs model.load_model: the base .pth the adapters and states apply to")
    apply_peft(model, spec)
    model.peft_spec = spec
    # host memory: activations by mmap, not from a fragmenting heap (rwkv/training/cpu_alloc.py says why)
    from ..training.cpu_alloc import prefer_low_memory

    prefer_low_memory()
    return model


def strict_loading(model) -> bool:
    """LightningModule.strict_loading for this model: False for a PEFT run. Its checkpoints lack the frozen
    base tensors; under DeepSpeed the engine loads the module shard before any hook could complete it
    (on_load completes it for the other strategies), so the engine must accept the missing keys. on_load
    checks the base's hash and the trained names instead."""
    return getattr(model, "peft_spec", None) is None


def param_groups(lit) -> list[dict] | None:
    """PEFT optimizer groups, or None for a full fine-tune (the caller's official groups then apply)."""
    spec = getattr(lit.model, "peft_spec", None)
    if spec is None:
        return None
    opt = lit.optimizer_config
    groups = peft_param_groups(lit.model, spec, opt.lr_init, opt.weight_decay)
    if not groups:
        raise ConfigError("model.peft leaves no trainable tensor")
    return groups


def _base_sha(lit) -> str:
    sha = getattr(lit, "_peft_base_sha", None)
    if sha is None:
        sha = lit._peft_base_sha = file_sha256(lit.hparams.load_model)
    return sha


def _lora_fields(model) -> dict | None:
    config = lora_config_of(model)
    if config is None:
        return None
    out = {}
    for f in dataclasses.fields(config):
        if not f.init or f.name in ("peft_type", "task_type", "base_model_name_or_path", "revision",
                                   "inference_mode", "auto_mapping"):
            continue
        v = getattr(config, f.name)
        v = sorted(v) if isinstance(v, set) else v
        if _plain(v):  # checkpoints must load with torch.load(weights_only=True) (Lightning's ckpt_path check)
            out[f.name] = v
    return out


def _plain(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    return False


def on_save(lit, checkpoint) -> None:
    spec = getattr(lit.model, "peft_spec", None)
    if spec is None:
        return
    names = trainable_names(lit.model)
    keep = {PREFIX + n for n in names}
    sd = checkpoint.get("state_dict")
    if sd is not None:
        checkpoint["state_dict"] = {k: v for k, v in sd.items() if k in keep}
    strategy = getattr(lit.trainer, "strategy", None) if lit._trainer is not None else None
    if hasattr(strategy, "exclude_frozen_parameters"):  # DeepSpeed: its engine writes the tensors itself
        strategy.exclude_frozen_parameters = True
    checkpoint.setdefault("rwkv", {})["peft"] = {
        "base": str(Path(lit.hparams.load_model).resolve()), "base_sha256": _base_sha(lit),
        "spec": dataclasses.asdict(spec), "lora_config": _lora_fields(lit.model), "trainable": names}


def on_load(lit, checkpoint) -> None:
    """Check the base, then complete the state dict with the base tensors so Lightning loads it strictly."""
    info = checkpoint.get("rwkv", {}).get("peft")
    spec = getattr(lit.model, "peft_spec", None)
    if info is None:
        if spec is not None and "state_dict" in checkpoint and not any(
                ".lora_" in k or k.endswith("time_state") for k in checkpoint["state_dict"]):
            raise ConfigError("the checkpoint is from a run without model.peft; resume it without model.peft")
        return
    if spec is None:
        raise ConfigError("the checkpoint is from a model.peft run; resume it with the same model.peft")
    if info["base_sha256"] != _base_sha(lit):
        raise ConfigError(f"model.load_model: {lit.hparams.load_model} is not the base this checkpoint was "
                          f"trained on ({info['base']}, sha256 {info['base_sha256'][:12]}…); resume with that "
                          "base file")
    names = info.get("trainable")
    if names is not None and sorted(names) != sorted(trainable_names(lit.model)):
        ours = set(trainable_names(lit.model))
        diff = sorted(set(names) ^ ours)
        raise ConfigError(f"model.peft: the checkpoint's trained tensors differ from this run's ({diff[0]} is "
                          f"{'only in this run' if diff[0] in ours else 'only in the checkpoint'}); resume "
                          "with the checkpoint's model.peft")
    sd = checkpoint.get("state_dict")
    if sd is not None:
        for k, v in lit.state_dict().items():
            sd.setdefault(k, v)
