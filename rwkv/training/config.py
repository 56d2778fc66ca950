"""Typed groups of the `model:` section (docs/design.md §4): `model.segments` and `model.optimizer`.

`RWKVLitModule.__init__` takes the model's shape and source as plain keys (`model.n_layer`,
`model.load_model`, …) and these two dataclasses as groups, which LightningCLI turns into nested keys
(`model.optimizer.lr_init`, `--model.segments.bptt 2`). The keys that used to sit directly under `model:`
are still accepted, with one warning naming the new place (`MOVED`, rwkv/moved_keys.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..moved_keys import regroup


@dataclass(frozen=True)
class SegmentConfig:
    """How a sample is cut into segments and how the gradient crosses them (docs/design.md §3.4).

    Args:
        ctx_len: Segment length: samples are cut into ctx_len segments with the state carried.
        bptt: Gradient across segment boundaries: truncated, full (exact), or K = the last K boundaries.
        grad_cp: Recompute each block in backward (less activation memory).
    """

    ctx_len: int = 4096
    bptt: Literal["truncated", "full"] | int = "full"
    grad_cp: bool = False


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW, its parameter groups and the learning-rate schedule (docs/model-spec.md §1.6).

    Args:
        lr_init: Peak learning rate (after warm-up).
        lr_final: Final learning rate at the end of the schedule.
        lr_schedule: Decay shape from lr_init to lr_final: cosine, linear or constant.
        warmup_steps: Optimizer steps of warm-up (lr × (0.01 + 0.99·step/warmup_steps)).
        token_budget: If set, the schedule runs over this many tokens and training stops there.
        schedule_by_time: Also end the schedule at trainer.max_time: progress is the larger of the step (or
            token) progress and elapsed/max_time, so a time-boxed run on a slower machine still anneals to
            lr_final by the time it stops (the quickstart uses this).
        beta1: Adam beta1.
        beta2: Adam beta2.
        adam_eps: Adam epsilon (official trainer: 1e-18).
        weight_decay: Decoupled weight decay, applied to the large matrices only.
        layerwise_lr: The RWKV-v5 folder's layer-wise lr groups (time_decay 2×, time_first 3×, the rest 1×;
            docs/model-spec.md §1.6). Default (null): the official default of the model's version — on for
            x060/x052; x070's recipe has no such switch (att.w0 is 2× either way).
    """

    lr_init: float = 6e-4
    lr_final: float = 6e-5
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 10
    token_budget: int | None = None
    schedule_by_time: bool = False
    beta1: float = 0.9
    beta2: float = 0.99
    adam_eps: float = 1e-18
    weight_decay: float = 0.0
    layerwise_lr: bool | None = None


GROUPS = {"segments": SegmentConfig, "optimizer": OptimizerConfig}
#: old flat `model.KEY` → the group it lives in now
MOVED = {key: group for group, cls in GROUPS.items() for key in cls.__dataclass_fields__}


def group_values(flat: dict[str, Any], segments, optimizer) -> tuple[SegmentConfig, OptimizerConfig]:
    """The two groups from what `RWKVLitModule.__init__` received: each group as a dataclass or a dict (a
    checkpoint's hparams), plus old flat keys in `flat` (warned about once, and taking precedence)."""
    unknown = sorted(set(flat) - set(MOVED))
    if unknown:
        raise TypeError(f"RWKVLitModule got unexpected keyword arguments {unknown}")
    values = regroup("model", {"segments": segments, "optimizer": optimizer, **flat}, MOVED)
    return tuple(_as(cls, values[name]) for name, cls in GROUPS.items())


def _as(cls, value):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):  # another object with the same fields (e.g. a jsonargparse Namespace)
        value = {f: getattr(value, f) for f in cls.__dataclass_fields__ if hasattr(value, f)}
    return cls(**value)


def as_dict(group) -> dict[str, Any]:
    """Plain values for hparams: checkpoints then load with torch.load(weights_only=True)."""
    return asdict(group)
