"""Version -> model class and official init."""

from __future__ import annotations

from .config import RWKVConfig
from .init import init_x070
from .init_v6 import init_x052, init_x060
from .v5 import RWKV5
from .v6 import RWKV6
from .v7 import RWKV7

# version -> (model class, official init)
_VERSIONS = {
    "x070": (RWKV7, init_x070),
    "x060": (RWKV6, init_x060),
    "x052": (RWKV5, init_x052),
}


def model_class(version: str):
    if version not in _VERSIONS:
        raise ValueError(f"unknown model version {version!r}; supported: {sorted(_VERSIONS)}")
    return _VERSIONS[version][0]


def build_model(cfg: RWKVConfig, grad_cp: bool = False, init: bool = False):
    """Build the plain nn.Module for cfg; with init=True apply the official init (docs/model-spec.md §1.4 / §2)."""
    model = model_class(cfg.version)(cfg, grad_cp=grad_cp)
    if init:
        init_weights(model)
    return model


def init_weights(model) -> None:
    _VERSIONS[model.cfg.version][1](model)
