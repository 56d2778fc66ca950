"""Export of a PEFT run (export_checkpoint.py CKPT out.pth [--adapter DIR] [--state FILE]).

The checkpoint holds only the trainable tensors (rwkv.peft.training); the model is rebuilt from the
recorded base .pth (its SHA-256 is checked), the run's PEFT set-up is re-applied and the trained tensors
loaded. Then: the adapters in peft's format (before merging), the learned states as a flat state file,
and the merged model in official format (adapters folded in by peft, states dropped: with state tuning
alone it equals the base).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..errors import ConfigError
from . import PeftSpec, apply_peft, file_sha256, merge_peft, save_adapter, time_states


def peft_info(ckpt) -> dict | None:
    """The PEFT record of a loaded Lightning checkpoint dict, or None for a full fine-tune."""
    if not isinstance(ckpt, dict):
        return None
    return (ckpt.get("rwkv") or {}).get("peft")


def load_lightning_checkpoint(path) -> dict | None:
    """A Lightning checkpoint as a dict ({"rwkv": …, "state_dict": …}): a .ckpt file, or a DeepSpeed
    directory of a model.peft run (its client state holds the PEFT record; the tensors are consolidated
    by DeepSpeed's zero_to_fp32, all of them, frozen ones included). None for anything else."""
    path = Path(path)

    def load(p):  # unreadable (truncated, torn): None, and the ordinary export path says so clearly
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - any read failure is reported by rwkv.checkpoint.training_checkpoint
            return None

    if path.is_file() and path.suffix == ".ckpt":
        return load(path)
    if path.is_dir() and (path / "latest").is_file():
        states = sorted((path / (path / "latest").read_text().strip()).glob("*model_states.pt"))
        if not states:
            return None
        client = load(states[0])
        if peft_info(client) is None:
            return None
        from ..checkpoint.official_pth import strip_prefixes
        from ..checkpoint.training_checkpoint import deepspeed_state_dict

        return {"rwkv": client["rwkv"], "state_dict": strip_prefixes(deepspeed_state_dict(path))}
    return None


def rebuild(ckpt: dict, base: str | None = None):
    """The trained PEFT model (fp32, adapters still separate) from a checkpoint dict."""
    from ..model import from_pth

    info = peft_info(ckpt)
    base = Path(base or info["base"])
    if not base.exists():
        raise ConfigError(f"the run's base model {base} is missing; pass --base PATH to the same file")
    if file_sha256(base) != info["base_sha256"]:
        raise ConfigError(f"--base: {base} is not the base this checkpoint was trained on "
                          f"(sha256 {info['base_sha256'][:12]}…)")
    model = from_pth(base).float()
    fields = {f.name for f in dataclasses.fields(PeftSpec)}
    spec = PeftSpec(**{k: v for k, v in info["spec"].items() if k in fields})
    if info.get("lora_config") is not None:  # the adapter dir of model.peft.adapter may be gone: rebuild
        spec = dataclasses.replace(spec, lora=info["lora_config"], adapter=None)
    apply_peft(model, spec)
    sd = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    want = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(want - set(sd))
    if missing:
        raise ConfigError(f"the checkpoint lacks trained tensor {missing[0]} (is it from this PEFT run?)")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in want:
            params[n].copy_(sd[n].to(params[n].dtype))
    return model


def save_state_file(states: dict, path) -> None:
    """{blocks.{i}.att.time_state: [H,N,N] fp32}: a torch file (.pth) or safetensors by suffix, atomic."""
    from ..checkpoint.official_pth import atomic_torch_save

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        from ..atomic import atomic_file

        with atomic_file(path) as tmp:
            save_file(states, tmp)
    else:
        atomic_torch_save(states, path)


def export_peft(ckpt: dict, adapter: Path | None = None, state: Path | None = None, base: str | None = None):
    """Write the adapter dir / state file when asked; return the merged official state dict (fp32)."""
    model = rebuild(ckpt, base)
    info = peft_info(ckpt)
    if adapter is not None:
        save_adapter(model, adapter, base={"base": info["base"], "base_sha256": info["base_sha256"]})
    if state is not None:
        states = time_states(model)
        if not states:
            raise ConfigError("--state: this run has no learned states (model.peft.state_tuning was not set)")
        save_state_file(states, state)
    merge_peft(model)
    return {k: v.detach() for k, v in model.state_dict().items()}


def add_arguments(parser) -> None:
    """export_checkpoint.py's PEFT options (one argument group)."""
    g = parser.add_argument_group("PEFT runs (model.peft): OUT is always the merged full model")
    g.add_argument("--adapter", type=Path, default=None,
                   help="also write the LoRA adapters to this directory in peft's format (adapter_config.json + "
                   "adapter_model.safetensors)")
    g.add_argument("--state", type=Path, default=None,
                   help="also write the learned states, {blocks.{i}.att.time_state: [H,N,N]} (.pth, or "
                   ".safetensors by suffix), the state file pip and RWKV Runner load")
    g.add_argument("--base", default=None, help="the run's base .pth when it moved (its SHA-256 is checked)")


class merged_source:
    """Context manager: the export source for CKPT. A PEFT checkpoint becomes a temporary merged fp32 .pth
    next to OUT (after writing --adapter/--state); anything else is passed through unchanged."""

    def __init__(self, args):
        self.args, self.tmp = args, None

    def __enter__(self):
        import tempfile

        a = self.args
        ckpt = load_lightning_checkpoint(a.ckpt)
        if peft_info(ckpt) is None:
            if a.adapter or a.state or a.base:
                raise ConfigError(f"{a.ckpt}: --adapter, --state and --base need the checkpoint of a model.peft "
                                  "run (a Lightning .ckpt or DeepSpeed directory)")
            return a.ckpt
        merged = export_peft(ckpt, a.adapter, a.state, a.base)
        out_dir = Path(a.out).resolve().parent
        out_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = tempfile.TemporaryDirectory(prefix=".peft-merge.", dir=out_dir)
        src = Path(self.tmp.name) / "merged.pth"
        torch.save(merged, src)
        return src

    def __exit__(self, *exc):
        if self.tmp is not None:
            self.tmp.cleanup()
        return False
