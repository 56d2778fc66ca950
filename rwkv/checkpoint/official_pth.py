"""Official `.pth` files: load, infer the config from shapes, check, save in official key order.

docs/model-spec.md §4.1: a flat dict[str, Tensor], keys and shapes of §1.2 / §2 in module registration order,
no wrapper prefixes, no non-tensor entries. Loaders never assume LoRA formulas: ranks come from shapes.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..atomic import atomic_file
from ..model.config import RWKVConfig
from ..model.registry import build_model
from .safetensors_io import is_safetensors, load_safetensors

# Prefixes that training wrappers put in front of the official names (Lightning's LightningModule
# attribute, DeepSpeed / Lightning `_forward_module.`, DDP `module.`, torch.compile `_orig_mod.`).
WRAPPER_PREFIXES = ("_forward_module.", "module.", "model.", "_orig_mod.")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class CheckpointMismatch(ValueError):
    """A state dict does not fit the requested model; the message lists every difference."""


def strip_prefixes(sd: dict) -> dict:
    out = {}
    for key, val in sd.items():
        changed = True
        while changed:
            changed = False
            for p in WRAPPER_PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = val
    return out


def load_state_dict(path) -> dict:
    """Read a .pth (or a Lightning checkpoint's `state_dict`), an official-name .safetensors, or a Hugging
    Face (fla) RWKV-7 directory / cached hub id (docs/model-spec.md §4.4) as a flat {official name: tensor}
    dict."""
    from . import hf  # here, not at the top: hf.py imports this module

    path = Path(path)
    if not path.exists() and (cached := hf.hub_cache_dir(str(path))) is not None:
        path = cached
    if hf.is_hf_dir(path):
        return hf.load_hf(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file (expected an RWKV .pth, a .safetensors file or a "
                                "Hugging Face RWKV-7 directory with config.json)")
    if is_safetensors(path):
        return strip_prefixes(load_safetensors(path))
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name and what to do
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise ValueError(f"{path}: cannot be read as a torch .pth file ({type(e).__name__}: {e}). "
                             "Is it complete (not truncated) and a PyTorch checkpoint?") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not an RWKV weights file (expected a flat dict of tensors)")
    return strip_prefixes(obj)


def _n_layer(sd: dict) -> int:
    ids = [int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))]
    if not ids:
        raise ValueError("no `blocks.N.` keys found: not an RWKV model state dict")
    return max(ids) + 1


def detect_version(sd: dict) -> str:
    """x070 has att.r_k; x060 has time_maa_*; x052 has a 2-D time_decay [H,N] and ln_x (docs/model-spec.md §4.2).

    pip scans keys in file order (ln_x -> 5, gate.weight -> 5.1, then a time_decay with shape[1] > 1 ->
    5.2; time_maa -> 6); on official files this order-independent test gives the same answer.
    """
    if any(k.endswith("att.r_k") for k in sd):
        return "x070"
    if any(".time_maa_" in k for k in sd):
        return "x060"
    td = sd.get("blocks.0.att.time_decay")
    if td is not None and td.dim() == 2 and td.shape[1] > 1 and any("ln_x" in k for k in sd):
        return "x052"
    raise ValueError("unsupported RWKV checkpoint: found none of att.r_k (x070), time_maa (x060) or a "
                     "per-head time_decay with ln_x (x052); RWKV-4 and v5.0/5.1 files are not supported")


def infer_config(sd: dict) -> RWKVConfig:
    """Version and all sizes from tensor shapes (docs/model-spec.md §1.2, §2, §4.2)."""
    version = detect_version(sd)
    V, C = sd["emb.weight"].shape
    L = _n_layer(sd)
    kw = dict(version=version, n_layer=L, n_embd=C, vocab_size=V,
              dim_ffn=sd["blocks.0.ffn.key.weight"].shape[0])
    if version == "x070":
        H, N = sd["blocks.0.att.r_k"].shape
        mv = sd[f"blocks.{1 if L > 1 else 0}.att.v1"]  # layer 0's v1 is unused; fla reads layer 1 too
        kw.update(head_size=N, d_decay_lora=sd["blocks.0.att.w1"].shape[1],
                  d_aaa_lora=sd["blocks.0.att.a1"].shape[1], d_mv_lora=mv.shape[1],
                  d_gate_lora=sd["blocks.0.att.g1"].shape[1])
    else:
        H, N = sd["blocks.0.att.time_faaaa"].shape
        dim_att = sd["blocks.0.att.key.weight"].shape[0]  # pip's n_att (docs/model-spec.md §4.2)
        if dim_att != C or H * N != C:
            raise ValueError(f"{version} checkpoint with dim_att {dim_att} (time_faaaa {H}x{N}) != "
                             f"n_embd {C}: only dim_att = n_embd (as in the official releases) is supported")
        kw.update(head_size=N)
        if version == "x060":
            kw.update(d_mix_lora=sd["blocks.0.att.time_maa_w1"].shape[1] // 5,
                      d_decay_lora=sd["blocks.0.att.time_decay_w1"].shape[1])
    return RWKVConfig(**kw)


def expected_shapes(cfg: RWKVConfig) -> dict:
    """Official keys in registration order with their shapes, without allocating (meta device)."""
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


LOAD_HINT = "Remove the size keys from the config to take them from the file, or load the right file."


def check_state_dict(sd: dict, cfg: RWKVConfig, source: str = "state dict", hint: str = LOAD_HINT) -> None:
    """One error listing missing, unexpected and mis-shaped keys (the commonest user error); `hint` says
    what to do in the caller's situation."""
    want = expected_shapes(cfg)
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    misshaped = [f"{k}: file {tuple(sd[k].shape)} vs model {want[k]}"
                 for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    if missing or unexpected or misshaped:
        def fmt(title, items):
            if not items:
                return ""
            more = f" … and {len(items) - 12} more" if len(items) > 12 else ""
            return f"\n  {title} ({len(items)}): " + ", ".join(items[:12]) + more
        raise CheckpointMismatch(
            f"{source} does not match the requested model {cfg.version} L{cfg.n_layer} D{cfg.n_embd} "
            f"V{cfg.vocab_size} head_size {cfg.head_size}:" + fmt("missing", missing)
            + fmt("unexpected", unexpected) + fmt("mis-shaped", misshaped)
            + "\n" + hint)


def from_pth(path, config: RWKVConfig | None = None, dtype=None, grad_cp: bool = False):
    """Build a model from an official .pth. Sizes come from the file; `config`, when given, must agree."""
    sd = load_state_dict(path)
    try:
        cfg = config or infer_config(sd)
    except (ValueError, KeyError) as e:  # name the file (docs/design.md §5.10)
        raise ValueError(f"{path}: {e}") from e
    check_state_dict(sd, cfg, source=str(path))
    model = build_model(cfg, grad_cp=grad_cp)
    if dtype is not None:
        model = model.to(DTYPES.get(dtype, dtype))
    model.load_state_dict({k: v for k, v in sd.items()}, strict=True)
    return model


def official_order(sd: dict, cfg: RWKVConfig | None = None, source: str = "state dict",
                   hint: str = LOAD_HINT) -> dict:
    """The same tensors, keyed and ordered as the official file (docs/model-spec.md §1.2 / §4.1)."""
    sd = strip_prefixes(sd)
    cfg = cfg or infer_config(sd)
    check_state_dict(sd, cfg, source=source, hint=hint)
    return {k: sd[k] for k in expected_shapes(cfg)}


def atomic_torch_save(obj, path) -> None:
    """torch.save through rwkv.atomic: never a torn output file."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def save_pth(model_or_sd, path, dtype="bf16", cfg: RWKVConfig | None = None) -> dict:
    """Save a flat tensor dict in official key order and the given dtype, atomically. Returns it."""
    sd = model_or_sd.state_dict() if hasattr(model_or_sd, "state_dict") else model_or_sd
    cfg = cfg or getattr(model_or_sd, "cfg", None)
    dt = DTYPES[dtype] if isinstance(dtype, str) else dtype
    out = {k: v.detach().to("cpu", dt).contiguous() for k, v in official_order(sd, cfg).items()}
    atomic_torch_save(out, path)
    return out
