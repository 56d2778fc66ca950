"""Training checkpoints -> official .pth, safetensors or Hugging Face (fla) RWKV-7 directories, and those
back (docs/design.md §3.7; formats in docs/model-spec.md §4)."""

from .export import ExportError, export_checkpoint, read_training_checkpoint

__all__ = ["export_checkpoint", "read_training_checkpoint", "ExportError"]
