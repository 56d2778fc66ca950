"""WKV-7 (docs/model-spec.md §1.3): the per-token reference, the chunked form, the C recurrence (cpu) and the
CUDA kernel; call it through `rwkv.ops.wkv7`, which chooses among them (rwkv/ops/dispatch.py).

The folder is `v7`, not `wkv7`: a subpackage `rwkv.ops.wkv7` would replace the function `rwkv.ops.wkv7` as an
attribute of `rwkv.ops` the moment it is imported."""
