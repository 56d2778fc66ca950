"""x070 key preparation (docs/model-spec.md §1.3): the formula (reference.py) and the C kernel (cpu.py); the
`backend=` choice is rwkv/ops/dispatch.py's."""

from ..dispatch import wkv7_keys
from .reference import NORM_EPS, wkv7_keys_reference

__all__ = ["wkv7_keys", "wkv7_keys_reference", "NORM_EPS"]
