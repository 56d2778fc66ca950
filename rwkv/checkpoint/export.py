"""Export a Lightning checkpoint file, a DeepSpeed checkpoint directory (ZeRO 1/2/3, any world size), an
official .pth / .safetensors or a Hugging Face (fla) RWKV-7 directory as
- `pth`: an official RWKV .pth: flat tensor dict, wrapper prefixes stripped, official key order, chosen
  dtype, written atomically (docs/model-spec.md §4.1);
- `safetensors`: the same tensors and names in a safetensors file (docs/model-spec.md §4.3);
- `hf`: a directory that fla's RWKV7ForCausalLM loads (docs/model-spec.md §4.4, rwkv.checkpoint.hf)."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch

from . import hf
from .official_pth import DTYPES, CheckpointMismatch, official_order, save_pth, strip_prefixes
from .safetensors_io import is_safetensors, load_safetensors, save_safetensors

FORMATS = ("pth", "hf", "safetensors")
# bf16 is the official .pth dtype (docs/model-spec.md §1.2); safetensors runtimes on WebGPU (web-rwkv,
# Runner's converter) use fp16 (docs/model-spec.md §4.3)
DEFAULT_DTYPE = {"pth": "bf16", "hf": "bf16", "safetensors": "fp16"}


class ExportError(ValueError):
    """A checkpoint that cannot be exported; the message names the path and what to do."""


def _deepspeed_state_dict(path: Path) -> dict:
    latest = path / "latest"
    if not latest.is_file():
        raise ExportError(f"{path}: DeepSpeed checkpoint directory without a `latest` file — the write was "
                          "interrupted or this is not a DeepSpeed checkpoint. Use an older checkpoint.")
    tag_dir = path / latest.read_text().strip()
    if not tag_dir.is_dir() or not any(tag_dir.glob("*model_states.pt")):
        raise ExportError(f"{path}: `latest` names {tag_dir.name!r} but {tag_dir} holds no model states "
                          "(partial checkpoint). Use an older checkpoint.")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    quiet = io.StringIO()  # zero_to_fp32 prints per-parameter progress, and tqdm bars on stderr
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
            sd = get_fp32_state_dict_from_zero_checkpoint(str(path))
    except Exception as e:  # noqa: BLE001 - torn shards raise EOFError, UnpicklingError, …: name the dir
        raise ExportError(f"{path}: incomplete or unreadable DeepSpeed checkpoint ({type(e).__name__}: {e}). "
                          "Are all ranks' shard files present?") from e
    return dict(sd)


def read_training_checkpoint(path) -> dict:
    """Full-precision tensors of a training checkpoint, keyed by official names (prefixes stripped)."""
    path = Path(path)
    if not path.exists():
        cached = hf.hub_cache_dir(str(path))
        if cached is None:
            raise ExportError(f"{path}: no such checkpoint (expected a .ckpt file, a DeepSpeed checkpoint dir, "
                              "an official .pth/.safetensors, a Hugging Face RWKV-7 dir or a cached hub id)")
        path = cached
    if hf.is_hf_dir(path):
        try:
            return hf.load_hf(path)
        except (hf.HFFormatError, CheckpointMismatch, ValueError) as e:
            raise ExportError(str(e)) from e
    if path.is_dir():
        sd = _deepspeed_state_dict(path)
    elif is_safetensors(path):
        try:
            sd = load_safetensors(path)
        except ValueError as e:
            raise ExportError(str(e)) from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any read failure: say which file and why
            raise ExportError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e}); is it "
                              "truncated?") from e
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            sd = obj["state_dict"]
        elif isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
            sd = obj  # already a flat tensor dict (e.g. an official .pth)
        else:
            raise ExportError(f"{path}: not a Lightning checkpoint (no `state_dict`) nor a tensor dict")
    return strip_prefixes({k: v for k, v in sd.items() if torch.is_tensor(v)})


def run_data_settings(ckpt) -> tuple[dict, Path] | None:
    """`data.tokenizer` / `data.eod_token_id` of the run that wrote `ckpt`, and the file they come from:
    Lightning saves the resolved config as <root>/logs/version_*/config.yaml beside <root>/checkpoints/
    (the newest is taken). None when `ckpt` does not sit in such a run directory."""
    path = Path(ckpt)
    if path.parent.name != "checkpoints":
        return None
    configs = sorted(path.parent.parent.glob("logs/version_*/config.yaml"), key=lambda p: p.stat().st_mtime)
    if not configs:
        return None
    import yaml

    try:
        data = (yaml.safe_load(configs[-1].read_text()) or {}).get("data") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    found = {k: data[k] for k in ("tokenizer", "eod_token_id") if k in data}
    return (found, configs[-1]) if found else None


def export_checkpoint(ckpt, out, dtype: str | None = None, fmt: str = "pth", tokenizer: str | None = None,
                      eos_token_id: int = 0) -> dict:
    """Write `out` in format `fmt` (pth, hf or safetensors) from `ckpt`; returns the tensors written (fla
    names for hf). `tokenizer` (hf only): a data tokenizer name whose Hugging Face files go along;
    `eos_token_id`: the end-of-document id the model was trained with (data.eod_token_id)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    dtype = dtype or DEFAULT_DTYPE[fmt]
    sd = read_training_checkpoint(ckpt)
    try:
        ordered = official_order(sd, source=str(ckpt), hint="The checkpoint is incomplete or was not written "
                                 "by this trainer; export an older or complete checkpoint.")
    except (CheckpointMismatch, ValueError, KeyError) as e:
        raise ExportError(f"{ckpt}: does not hold an RWKV model ({e})") from e
    if fmt == "pth":
        return save_pth(ordered, out, dtype=dtype)
    dt = DTYPES[dtype]
    if fmt == "safetensors":
        tensors = {k: v.detach().to("cpu", dt) for k, v in ordered.items()}
        save_safetensors(tensors, out)
        return tensors
    try:
        return hf.save_hf(ordered, out, dtype=dt, tokenizer=tokenizer, eos_token_id=eos_token_id, source=str(ckpt))
    except hf.HFFormatError as e:
        raise ExportError(str(e)) from e
