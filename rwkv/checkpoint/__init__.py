"""Checkpoint formats and I/O, one module per concept (docs/design.md §3.7 and §8; formats in
docs/model-spec.md §4):

- `official_pth`: official .pth files: load, infer the config, check, save in official key order
  (`rwkv.model.from_pth` and friends are these);
- `training_checkpoint`: Lightning .ckpt files and DeepSpeed directories read back as official tensors;
- `resume`: training checkpoints written whole (Lightning plugin, DeepSpeed directory swap) and the one to
  resume from (the only module here that imports Lightning);
- `export`: any of those -> official .pth, safetensors or a Hugging Face (fla) RWKV-7 directory;
- `safetensors_io`, `hf`: the safetensors and Hugging Face (fla) formats.

Atomic writes for every output are `rwkv/atomic.py` (used below this layer too: ops, data).
"""

from .export import export_checkpoint
from .training_checkpoint import ExportError, read_training_checkpoint

__all__ = ["export_checkpoint", "read_training_checkpoint", "ExportError"]
