"""Training checkpoints as Lightning and DeepSpeed write them, read back as official-name tensors: a Lightning
`.ckpt` file (its `state_dict`), a DeepSpeed checkpoint directory (ZeRO 1/2/3, any world size, consolidated
by DeepSpeed's zero_to_fp32), and for convenience an official .pth / .safetensors or a Hugging Face (fla)
RWKV-7 directory. This module imports neither Lightning nor DeepSpeed itself (DeepSpeed only when a
DeepSpeed directory is read): `import rwkv.checkpoint`, and so `rwkv.model.from_pth`, stay free of them
(docs/design.md §2)."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch

from . import hf
from .official_pth import CheckpointMismatch, strip_prefixes
from .safetensors_io import is_safetensors, load_safetensors


class ExportError(ValueError):
    """A checkpoint that cannot be read or exported; the message names the path and what to do."""


def deepspeed_state_dict(path: Path) -> dict:
    """fp32 tensors of a DeepSpeed checkpoint directory (any ZeRO stage and world size), consolidated by
    DeepSpeed's zero_to_fp32, names as saved (wrapper prefixes included)."""
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
        sd = deepspeed_state_dict(path)
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
