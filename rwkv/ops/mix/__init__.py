"""Token-shift mixes (docs/model-spec.md §1.3): the formula (reference.py) and the C kernel (cpu.py); the
`backend=` choice is rwkv/ops/dispatch.py's."""

from ..dispatch import token_shift_mix
from .reference import shifted, token_shift_mix_reference

__all__ = ["token_shift_mix", "token_shift_mix_reference", "shifted"]
