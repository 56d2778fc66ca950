"""RWKV infctx trainer: models, WKV kernels, data pipeline and Lightning training for RWKV-7/6/5.

This package is used from the repository root and is never pip-installed under the name `rwkv`
(PyPI's `rwkv` is the inference engine; our tests load it only in a subprocess). Importing it has no
side effects: no kernel builds, no environment changes, no global torch settings.
"""

__version__ = "0.1.0"
