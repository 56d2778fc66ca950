"""Training checkpoints -> official .pth files (DESIGN.md §3 "Checkpoints")."""

from .export import ExportError, export_checkpoint, read_training_checkpoint

__all__ = ["export_checkpoint", "read_training_checkpoint", "ExportError"]
