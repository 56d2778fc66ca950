"""WKV-6 and WKV-5 (docs/model-spec.md §2.1, §2.2): the per-token reference, the chunked form and the CUDA
kernel; call them through `rwkv.ops.wkv6/wkv5`, which choose among them (rwkv/ops/dispatch.py). WKV-5 is
WKV-6 with a time-invariant decay, so it shares every implementation here (no folder of its own). The
folder is `v6`, not `wkv6`, for the reason given in rwkv/ops/v7/__init__.py."""
