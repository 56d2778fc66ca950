"""Data: tokenizers, formats and masks, packing, the preload pipeline, binidx, samplers, DataModule.

Import-light on purpose: `datasets`, `pyarrow`, `torch` and `lightning` are imported by the modules
that need them (`lightning` only by `rwkv.data.datamodule`). See docs/data.md.
"""

from ..errors import DataError

__all__ = ["DataError"]
