"""RWKV models as plain PyTorch modules (docs/design.md §3.2): config, build, init, state.

The official `.pth` loaders (`from_pth`, `save_pth`, …) live in `rwkv.checkpoint.official_pth` with the
other file formats; they stay reachable here, the public entry point, but are imported on first use: the
model layer imports nothing above it at import time (docs/design.md §2), and `official_pth` itself builds
models through this package.
"""

import importlib

from .config import RWKVConfig
from .registry import build_model, init_weights, model_class
from .state import detach_state, from_pip_state, to_pip_state, zero_state

__all__ = ["RWKVConfig", "build_model", "init_weights", "model_class", "from_pth", "save_pth",
           "load_state_dict", "infer_config", "check_state_dict", "official_order", "CheckpointMismatch",
           "zero_state", "detach_state", "to_pip_state", "from_pip_state"]

_FROM_OFFICIAL_PTH = ("from_pth", "save_pth", "load_state_dict", "infer_config", "check_state_dict",
                      "official_order", "CheckpointMismatch")


def __getattr__(name):
    if name in _FROM_OFFICIAL_PTH:
        return getattr(importlib.import_module("rwkv.checkpoint.official_pth"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
