"""Export a Lightning checkpoint file, a DeepSpeed checkpoint directory (ZeRO 1/2/3, any world size), an
official .pth / .safetensors or a Hugging Face (fla) RWKV-7 directory as
- `pth`: an official RWKV .pth: flat tensor dict, wrapper prefixes stripped, official key order, chosen
  dtype, written atomically (docs/model-spec.md §4.1);
- `safetensors`: the same tensors and names in a safetensors file (docs/model-spec.md §4.3);
- `hf`: a directory that fla's RWKV7ForCausalLM loads (docs/model-spec.md §4.4, rwkv.checkpoint.hf)."""

from __future__ import annotations

from pathlib import Path

from . import hf
from .official_pth import DTYPES, CheckpointMismatch, official_order, save_pth
from .safetensors_io import save_safetensors
from .training_checkpoint import ExportError, read_training_checkpoint

FORMATS = ("pth", "hf", "safetensors")
# bf16 is the official .pth dtype (docs/model-spec.md §1.2); safetensors runtimes on WebGPU (web-rwkv,
# Runner's converter) use fp16 (docs/model-spec.md §4.3)
DEFAULT_DTYPE = {"pth": "bf16", "hf": "bf16", "safetensors": "fp16"}


def run_data_settings(ckpt) -> tuple[dict, Path] | None:
    """`data.format.tokenizer` / `data.format.eod_token_id` of the run that wrote `ckpt`, and the file they come from:
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
    if isinstance(data.get("format"), dict):  # data.format.KEY since the data groups; older runs: data.KEY
        data = data["format"]
    found = {k: data[k] for k in ("tokenizer", "eod_token_id") if k in data}
    return (found, configs[-1]) if found else None


def export_checkpoint(ckpt, out, dtype: str | None = None, fmt: str = "pth", tokenizer: str | None = None,
                      eos_token_id: int = 0) -> dict:
    """Write `out` in format `fmt` (pth, hf or safetensors) from `ckpt`; returns the tensors written (fla
    names for hf). `tokenizer` (hf only): a data tokenizer name whose Hugging Face files go along;
    `eos_token_id`: the end-of-document id the model was trained with (data.format.eod_token_id)."""
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
