"""Version -> model class and official init (lazy imports so each version lives in its own module)."""

from __future__ import annotations

import importlib

from .config import RWKVConfig

# version -> ("module:Class", "module:init_function"), relative to rwkv.model
_VERSIONS = {
    "x070": ("v7:RWKV7", "init:init_x070"),
    "x060": ("v6:RWKV6", "init_v6:init_x060"),
    "x052": ("v5:RWKV5", "init_v6:init_x052"),
}


def _resolve(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def model_class(version: str):
    if version not in _VERSIONS:
        raise ValueError(f"unknown model version {version!r}; supported: {sorted(_VERSIONS)}")
    return _resolve(_VERSIONS[version][0])


def build_model(cfg: RWKVConfig, grad_cp: bool = False, init: bool = False):
    """Build the plain nn.Module for cfg; with init=True apply the official init (docs/model-spec.md §1.4 / §2)."""
    model = model_class(cfg.version)(cfg, grad_cp=grad_cp)
    if init:
        init_weights(model)
    return model


def init_weights(model) -> None:
    _resolve(_VERSIONS[model.cfg.version][1])(model)
