"""glibc malloc settings for training on CPU (called by the entry points, never at import).

Why: by default glibc serves every allocation above a dynamic threshold (128 KiB, growing to at most
32 MiB) with a fresh mmap and returns it on free, so a step's [B, T, C]-sized activations and gradients
are page-faulted in anew. On our 2-core VMs a ReLU² forward+backward on a 16 MB tensor took 24 ms with
the defaults and 6 ms with these settings; a whole L6-D512 training step (vocab 65536, after the other
optimisations) gains 5-8% in median step time and nothing at vocab 1024 (docs/benchmarks.md "Training
step"). Pinning the mmap threshold at its maximum and keeping freed memory in the heap lets the allocator
reuse the same pages step after step; peak memory is unchanged (the same tensors are alive at the peak),
only memory that would have been returned between steps stays mapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("rwkv.training")

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc (4·1024·1024·sizeof(long)); larger values are refused
MMAP_THRESHOLD_MAX = 32 << 20
# Free memory at the top of the heap kept instead of trimmed: a few steps' worth of activations
TRIM_THRESHOLD = 1 << 30

_done = False


def tune_cpu_allocator() -> bool:
    """Apply the settings once per process; False (and nothing changed) where libc is not glibc."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: keep the platform's allocator as it is
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.info("mallopt refused the CPU allocator settings; keeping the defaults")
    _done = ok
    return ok


# Memory-lean setting (rwkv/peft): every allocation from 1 MiB up (a [T, C] activation at T·C ≥ 256 Ki) is
# its own mmap, returned to the OS on free.
LEAN_MMAP_THRESHOLD = 1 << 20


def prefer_low_memory() -> bool:
    """For runs whose point is a small footprint (PEFT). With the heap settings above, a training step's
    activations and gradients come from the heap in an interleaved alloc/free order, and the freed holes
    between tensors that are still alive are mostly not reusable: at the 0.1B World shape (ctx 512, a LoRA
    step) the heap held 0.5 GiB free but unusable at the end of the first forward and 1.0 GiB at the
    second, on top of 1.5 GiB alive (mallinfo2). Serving them by mmap leaves RSS ≈ the memory alive, at the
    cost of page faults on every step (docs/benchmarks.md "PEFT"). False where libc is not glibc."""
    global _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, LEAN_MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, LEAN_MMAP_THRESHOLD) == 1
    _done = _done or ok  # a later tune_cpu_allocator() must not undo it
    return ok
