"""Export a Lightning checkpoint file or a DeepSpeed checkpoint directory (ZeRO 1/2/3, any world size)
as an official RWKV .pth: flat tensor dict, wrapper prefixes stripped, official key order, chosen dtype,
written atomically (model-spec §4.1)."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch

from ..model.io import CheckpointMismatch, official_order, save_pth, strip_prefixes


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
        raise ExportError(f"{path}: no such checkpoint (expected a .ckpt file or a DeepSpeed checkpoint dir)")
    if path.is_dir():
        sd = _deepspeed_state_dict(path)
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


def export_checkpoint(ckpt, out, dtype: str = "bf16") -> dict:
    """Write `out` (.pth) from `ckpt`; returns the exported tensors."""
    sd = read_training_checkpoint(ckpt)
    try:
        ordered = official_order(sd, source=str(ckpt), hint="The checkpoint is incomplete or was not written "
                                 "by this trainer; export an older or complete checkpoint.")
    except (CheckpointMismatch, ValueError, KeyError) as e:
        raise ExportError(f"{ckpt}: does not hold an RWKV model ({e})") from e
    return save_pth(ordered, out, dtype=dtype)
