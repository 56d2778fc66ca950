"""Model configuration shared by all RWKV versions (docs/design.md §3.2).

Sizes follow the official trainer: head size N = 64 by default, H = C/N, and for x070 the LoRA ranks of
docs/model-spec.md §1.1 (current train_temp formulas). Loaders never assume a formula:
`rwkv.checkpoint.official_pth` reads the ranks from tensor shapes and fills them in here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

VERSIONS = ("x070", "x060", "x052")


def _lora_rank(x: float) -> int:
    """R(x) = max(32, round(x/32)·32) with Python's round (half to even), docs/model-spec.md §1.1."""
    return max(32, int(round(x / 32) * 32))


def x070_lora_ranks(n_embd: int) -> dict:
    """Current train_temp LoRA ranks (since 2025-07-08), docs/model-spec.md §1.1."""
    s = math.sqrt(n_embd)
    return dict(d_decay_lora=_lora_rank(2.5 * s), d_aaa_lora=_lora_rank(2.5 * s),
                d_mv_lora=_lora_rank(1.7 * s), d_gate_lora=_lora_rank(5 * s))


@dataclass(frozen=True)
class RWKVConfig:
    """Everything needed to build a model. Unset (None) sizes take the version's official default."""

    version: str = "x070"
    n_layer: int = 12
    n_embd: int = 768
    vocab_size: int = 65536
    head_size: int = 64
    # x070: 4C (docs/model-spec.md §1.1); x060/x052: int(3.5C // 32 · 32) (docs/model-spec.md §2)
    dim_ffn: int | None = None
    # x070 LoRA ranks (docs/model-spec.md §1.1) / x060 decay LoRA rank (docs/model-spec.md §2.1, trainer default 64)
    d_decay_lora: int | None = None
    d_aaa_lora: int | None = None
    d_mv_lora: int | None = None
    d_gate_lora: int | None = None
    d_mix_lora: int | None = None  # x060 time_maa LoRA rank (docs/model-spec.md §2.1, trainer default 32)

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise ValueError(f"model.version must be one of {VERSIONS}, got {self.version!r}")
        if self.n_layer < 1 or self.n_embd < 1 or self.vocab_size < 1:
            raise ValueError(f"n_layer, n_embd and vocab_size must be positive: {self}")
        if self.n_embd % self.head_size:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of head_size ({self.head_size})")
        filled = {}
        if self.dim_ffn is None:
            filled["dim_ffn"] = 4 * self.n_embd if self.version == "x070" else int(3.5 * self.n_embd // 32 * 32)
        if self.version == "x070":
            for key, val in x070_lora_ranks(self.n_embd).items():
                if getattr(self, key) is None:
                    filled[key] = val
        elif self.version == "x060":
            if self.d_decay_lora is None:
                filled["d_decay_lora"] = 64
            if self.d_mix_lora is None:
                filled["d_mix_lora"] = 32
        for key, val in filled.items():
            object.__setattr__(self, key, val)

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **kw) -> RWKVConfig:
        return replace(self, **kw)
