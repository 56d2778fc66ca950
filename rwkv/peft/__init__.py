"""Parameter-efficient fine-tuning of our plain RWKV modules: LoRA (PiSSA, DoRA, … — anything
`peft.LoraConfig` offers) injected by the `peft` library, state tuning, merge and export (docs/design.md).

* LoRA: `peft.inject_adapter_in_model` wraps the targeted `nn.Linear`s in place, so every other module
  keeps its official name and `rwkv.model.from_pth` models take adapters directly; `merge_peft` folds them
  back (peft's own merge) and leaves the official modules and keys.
* State tuning: `blocks.{i}.att.time_state`, a [H, N, N] parameter per layer in the pip/Runner state-file
  layout [H, value, key] (docs/model-spec.md §4.2). The time-mix uses it as the WKV state before the first
  token of every sample and after every packed-document reset (rwkv.model.state.wkv_from_initial).
* `train_parts` unfreezes groups of base parameters; every other base parameter is frozen.

`peft` (which imports transformers) is imported only when LoRA is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch
from torch import nn

from ..atomic import swap_in_dir
from ..errors import ConfigError

KEYS = ("lora", "state_tuning", "train_parts", "adapter", "state_lr")
TRAIN_PARTS = ("ln", "time", "emb", "head")
DEFAULT_TARGETS = ["receptance", "key", "value", "output"]
# Adam lr of the initial states. The state is a sum of many v·kᵀ outer products whose entries are O(1),
# far larger than a weight's per-step change: RWKV-PEFT's published state-tuning recipe uses lr 1 → 0.01
# with Adam; 1.0 is the peak here too. It follows the run's schedule (scaled by state_lr / lr_init).
DEFAULT_STATE_LR = 1.0
STATE_KEY = "blocks.{}.att.time_state"


@dataclasses.dataclass
class PeftSpec:
    lora: dict | None = None
    state_tuning: bool = False
    train_parts: tuple[str, ...] = ()
    adapter: str | None = None
    state_lr: float = DEFAULT_STATE_LR

    @property
    def uses_lora(self) -> bool:
        return self.lora is not None or self.adapter is not None


def parse_peft(cfg) -> PeftSpec | None:
    """`model.peft` (a dict from the YAML) -> PeftSpec, with errors naming the key."""
    if cfg is None:
        return None
    if isinstance(cfg, PeftSpec):
        return cfg
    if not isinstance(cfg, dict):
        raise ConfigError(f"model.peft must be a mapping with keys {', '.join(KEYS)}, got {cfg!r}")
    unknown = sorted(set(cfg) - set(KEYS))
    if unknown:
        raise ConfigError(f"model.peft.{unknown[0]}: unknown key; model.peft takes {', '.join(KEYS)}")
    lora = cfg.get("lora")
    if lora is not None and not isinstance(lora, dict):
        raise ConfigError("model.peft.lora must be a mapping of peft.LoraConfig fields (r, lora_alpha, "
                          f"target_modules, …) or null, got {lora!r}")
    parts = cfg.get("train_parts") or ()
    if isinstance(parts, str):
        parts = (parts,)
    for p in parts:
        if p not in TRAIN_PARTS:
            raise ConfigError(f"model.peft.train_parts: unknown part {p!r}; choose from {', '.join(TRAIN_PARTS)}")
    st = cfg.get("state_tuning", False)
    if not isinstance(st, bool):
        raise ConfigError(f"model.peft.state_tuning must be true or false, got {st!r}")
    state_lr = cfg.get("state_lr")
    state_lr = DEFAULT_STATE_LR if state_lr is None else float(state_lr)
    if not state_lr > 0:
        raise ConfigError(f"model.peft.state_lr must be > 0, got {state_lr}")
    adapter = cfg.get("adapter")
    if adapter is not None and lora is not None:
        raise ConfigError("model.peft.adapter and model.peft.lora are both set: the adapter directory's "
                          "adapter_config.json defines the LoRA; remove model.peft.lora")
    spec = PeftSpec(lora=dict(lora) if lora is not None else None, state_tuning=st, train_parts=tuple(parts),
                    adapter=str(adapter) if adapter is not None else None, state_lr=state_lr)
    if not (spec.uses_lora or spec.state_tuning or spec.train_parts):
        raise ConfigError("model.peft is set but trains nothing: set model.peft.lora, model.peft.state_tuning "
                          "or model.peft.train_parts (or remove model.peft for a full fine-tune)")
    return spec


# ---- LoRA ------------------------------------------------------------------------------------------
def linear_names(model) -> list[str]:
    """Leaf names of the nn.Linear modules a LoRA can target (receptance, key, value, output, gate, head)."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})


def lora_config(fields: dict, model):
    """A peft.LoraConfig from model.peft.lora, checked against the model's module names."""
    from peft import LoraConfig

    fields = dict(fields)
    fields.setdefault("target_modules", list(DEFAULT_TARGETS))
    targets = fields["target_modules"]
    if isinstance(targets, str):
        targets = [targets]
    names = linear_names(model)
    if isinstance(targets, (list, tuple)):
        for t in targets:
            leaf = str(t).rsplit(".", 1)[-1]
            if leaf not in names and not any(n == t or n.endswith("." + str(t)) for n, _ in model.named_modules()):
                raise ConfigError(f"model.peft.lora.target_modules: {t!r} is not a module of this "
                                  f"{model.cfg.version} model; linear modules are {', '.join(names)}")
            if leaf == "head":
                raise ConfigError("model.peft.lora.target_modules: 'head' cannot take a LoRA (the loss reads "
                                  "head.weight directly, docs/design.md); use model.peft.train_parts: [head]")
    valid = {f.name for f in dataclasses.fields(LoraConfig)}
    for k in fields:
        if k not in valid:
            raise ConfigError(f"model.peft.lora.{k}: not a peft.LoraConfig field (e.g. r, lora_alpha, "
                              "lora_dropout, init_lora_weights, use_dora, target_modules)")
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.peft.lora: {e}") from e


def inject_lora(model, config):
    from peft import inject_adapter_in_model

    try:
        return inject_adapter_in_model(config, model)
    except ValueError as e:  # peft's NoMatchingPeftModuleError is a ValueError
        raise ConfigError(f"model.peft.lora.target_modules: {e}") from e


def lora_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def has_lora(model) -> bool:
    return any(".lora_" in n for n, _ in model.named_parameters())


@torch.no_grad()
def merge_peft(model):
    """Fold the adapters into the base weights (peft's merge) and put the plain nn.Linear back; drop the
    learned states. The model then has exactly the official modules and keys. In place; returns model."""
    if has_lora(model):
        for name, layer in lora_layers(model):
            layer.merge()
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, leaf, layer.get_base_layer())
    for block in model.blocks:
        if "time_state" in block.att._parameters:
            del block.att._parameters["time_state"]
    return model


# ---- state tuning ----------------------------------------------------------------------------------
def attach_time_state(model, states: dict | None = None, source: str = "state file"):
    """Give every layer a learned initial state `blocks.{i}.att.time_state` [H, N, N] (fp32, zeros = the
    untuned model), or the tensors of a state file ({blocks.{i}.att.time_state: [H, value, key]})."""
    H, N = model.cfg.n_head, model.cfg.head_size
    for i, block in enumerate(model.blocks):
        ref = next(block.att.parameters())
        # fp32 (the WKV state's precision, docs/model-spec.md §3.4), fp64 in an fp64 model
        t = torch.zeros(H, N, N, dtype=torch.float64 if ref.dtype == torch.float64 else torch.float32,
                        device=ref.device)
        if states is not None:
            key = STATE_KEY.format(i)
            if key not in states:
                raise ConfigError(f"{source}: no {key}; a state file holds {STATE_KEY.format('i')} "
                                  f"[{H}, {N}, {N}] for each of the {model.cfg.n_layer} layers")
            got = torch.as_tensor(states[key])
            if tuple(got.shape) != (H, N, N):
                raise ConfigError(f"{source}: {key} has shape {list(got.shape)}, this model needs [{H}, {N}, {N}]")
            t.copy_(got.float())
        block.att.time_state = nn.Parameter(t)
    if states is not None:
        extra = sorted(set(states) - {STATE_KEY.format(i) for i in range(model.cfg.n_layer)})
        if extra:
            raise ConfigError(f"{source}: unexpected key {extra[0]} (the model has {model.cfg.n_layer} layers)")
    return model


def time_states(model) -> dict:
    """{blocks.{i}.att.time_state: [H, N, N] fp32} of a state-tuned model (pip/Runner state-file layout)."""
    return {STATE_KEY.format(i): b.att.time_state.detach().float().cpu().contiguous()
            for i, b in enumerate(model.blocks) if "time_state" in b.att._parameters}


def load_state_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"state file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ConfigError(f"{path}: not a state file (a dict of blocks.{{i}}.att.time_state tensors)")
    return sd


def to_pip_state_list(states: dict, cfg) -> list[torch.Tensor]:
    """A state file as the `rwkv` pip state list (3 entries per layer, zeros for the token-shift entries):
    x070 uses the [H, value, key] tensor as-is, v5/v6 transposed to pip's [H, key, value] (docs/model-spec.md §4.2)."""
    out = []
    for i in range(cfg.n_layer):
        S = states[STATE_KEY.format(i)].float()
        out += [torch.zeros(cfg.n_embd), S if cfg.version == "x070" else S.transpose(-1, -2).contiguous(),
                torch.zeros(cfg.n_embd)]
    return out


# ---- freezing and optimizer groups -----------------------------------------------------------------
def _part_of(name: str, p, n_embd: int) -> str | None:
    """Which train_parts group a base parameter belongs to (None: a weight matrix that only a LoRA adapts)."""
    if name == "emb.weight":
        return "emb"
    if name == "head.weight":
        return "head"
    parts = name.split(".")
    if any(q in ("ln0", "ln1", "ln2", "ln_x", "ln_out") for q in parts):
        return "ln"
    # per-channel vectors of the time/channel mixes, C numbers each: x_*, w0/a0/v0, k_k/k_a, r_k (x070);
    # time_maa_*, time_decay, time_faaaa (x060/x052). Their low-rank matrices (w1/w2, time_maa_w1 …) are larger.
    if len(parts) == 4 and parts[2] in ("att", "ffn") and parts[3] != "time_state" and p.numel() == n_embd:
        return "time"
    return None


def apply_peft(model, spec: PeftSpec, adapter_base: str | None = None):
    """Freeze the base, inject LoRA (from spec.lora or spec.adapter), add learned states, unfreeze
    train_parts. Returns the model (the same object)."""
    layer0_unused = {id(p) for p in model.parameters() if not p.requires_grad}  # x070 layer-0 v0/v1/v2
    if spec.adapter is not None:
        load_adapter(model, spec.adapter)
    elif spec.lora is not None:
        inject_lora(model, lora_config(spec.lora, model))
    for n, p in model.named_parameters():
        part = _part_of(n, p, model.cfg.n_embd)
        p.requires_grad_(".lora_" in n or (part in spec.train_parts and id(p) not in layer0_unused))
    if spec.state_tuning:
        attach_time_state(model)
    return model


def part_names(model, part: str) -> list[str]:
    return [n for n, p in model.named_parameters() if _part_of(n, p, model.cfg.n_embd) == part]


def peft_param_groups(model, spec: PeftSpec, lr_init: float, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer groups of a PEFT run: adapters and unfrozen base tensors at the run's lr (weight decay on
    the adapter matrices when set), the learned states at spec.state_lr (lr_scale = state_lr / lr_init,
    so they follow the same schedule shape). Frozen tensors are left out."""
    groups: dict[str, dict] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if n.endswith("att.time_state"):
            key, scale, wd = "state", spec.state_lr / lr_init if lr_init else 1.0, 0.0
        elif ".lora_" in n and p.dim() >= 2 and weight_decay > 0 and "magnitude" not in n:
            key, scale, wd = "lora_decay", 1.0, weight_decay
        else:
            key, scale, wd = "weights", 1.0, 0.0
        g = groups.setdefault(key, {"params": [], "names": [], "weight_decay": wd, "lr_scale": scale})
        g["params"].append(p)
        g["names"].append(n)
    return list(groups.values())


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def count_params(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return train, total


# ---- base identity ---------------------------------------------------------------------------------
def file_sha256(path) -> str:
    """SHA-256 of a base model file; for a directory (a Hugging Face model dir) of its files' names and
    contents in sorted order."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


# ---- adapters in peft's format ---------------------------------------------------------------------
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_INFO = "rwkv_base.json"


def lora_config_of(model):
    """The LoraConfig the adapters were injected with (peft keeps it on every LoRA layer's owner)."""
    cfg = getattr(model, "peft_config", None)
    if isinstance(cfg, dict) and "default" in cfg:
        return cfg["default"]
    return None


def save_adapter(model, out_dir, base: dict | None = None) -> Path:
    """Write the adapters in peft's standard format (adapter_config.json + adapter_model.safetensors, the
    keys peft's get_peft_model_state_dict produces) into a fresh directory, then rename it into place."""
    import json
    import shutil
    import tempfile

    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = lora_config_of(model)
    if config is None or not has_lora(model):
        raise ConfigError("--adapter: this run has no LoRA adapters (model.peft.lora was not set)")
    init = config.init_lora_weights
    if isinstance(init, str) and init.lower() not in ("gaussian",):
        raise ConfigError(f"--adapter: init_lora_weights={init!r} changes the base weights, so its adapter does "
                          "not apply to the original base; use the merged .pth instead")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        sd = get_peft_model_state_dict(model)
        save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(tmp / ADAPTER_WEIGHTS))
        config.save_pretrained(str(tmp))
        if base:
            (tmp / BASE_INFO).write_text(json.dumps(base, indent=1) + "\n")
        swap_in_dir(tmp, out)  # the previous adapter stays whole until the new one is complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_adapter(model, adapter_dir):
    """Put a peft-format adapter directory onto a model built from its base .pth (continue training or
    evaluate). Errors name model.peft.adapter."""
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    if not (d / ADAPTER_CONFIG).is_file() or not (d / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"model.peft.adapter: {d} is not a peft adapter directory (needs {ADAPTER_CONFIG} "
                          f"and {ADAPTER_WEIGHTS}, as export_checkpoint.py --adapter writes)")
    config = LoraConfig.from_pretrained(str(d))
    config.inference_mode = False
    try:
        inject_lora(model, config)
    except ConfigError as e:  # say which setting brought these target modules
        raise ConfigError(f"model.peft.adapter: {d} does not fit this base model ({e})") from e
    weights = load_file(str(d / ADAPTER_WEIGHTS))
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as e:  # size mismatch: an adapter trained on another base shape
        raise ConfigError(f"model.peft.adapter: {d} does not fit this base model ({e})") from e
    bad = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if bad:
        raise ConfigError(f"model.peft.adapter: {d} has tensors this model has no module for (e.g. {bad[0]})")
    return model
