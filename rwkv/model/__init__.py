"""RWKV models as plain PyTorch modules (docs/design.md §3.2): config, build, init, state, .pth io."""

from .config import RWKVConfig
from .io import (
                 CheckpointMismatch,
                 check_state_dict,
                 from_pth,
                 infer_config,
                 load_state_dict,
                 official_order,
                 save_pth,
)
from .registry import build_model, init_weights, model_class
from .state import detach_state, from_pip_state, to_pip_state, zero_state

__all__ = ["RWKVConfig", "build_model", "init_weights", "model_class", "from_pth", "save_pth",
           "load_state_dict", "infer_config", "check_state_dict", "official_order", "CheckpointMismatch",
           "zero_state", "detach_state", "to_pip_state", "from_pip_state"]
