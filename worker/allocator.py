"""glibc's allocator set to keep the memory a training step frees for the next one.

torch's CPU tensors come from malloc. The fused recurrent kernels allocate and free tens of
MB a step (gates, workspace, gradients); glibc serves blocks above its mmap threshold (at
most 32 MiB when left to adapt) by mmap and unmaps them on free, and gives the top of the
heap back to the kernel once more than the trim threshold is free. The next step then
faults the same pages in again: LSTM 2 x 128, T = 100, batch 64 took 15,000 minor faults a
step and spent a quarter of its wall time in the kernel (bench/step_overhead.py --malloc).

A worker process trains one run after another: it keeps freed memory while it trains and
hands it back to the kernel when a run ends. No-ops where the C library is not glibc."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import lru_cache

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Blocks below the mmap threshold come from the heap and are reused. glibc's manual caps it
# at 32 MiB (HEAP_MAX_SIZE / 2); the glibc here (Debian 2.36) takes 256 MiB, which a step of
# long sequences needs; where it is refused the cap is used instead.
MMAP_THRESHOLDS = (256 * 2**20, 32 * 2**20)
TRIM_THRESHOLD = 1024 * 2**20  # free memory the heap keeps before giving it back


@lru_cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None  # glibc's own symbol


@lru_cache
def keep_freed_memory() -> bool:
    """From now on in this process: blocks under the mmap threshold from the heap, and up to
    TRIM_THRESHOLD of freed memory kept in it. True when glibc took both (once a process)."""
    libc = _glibc()
    if libc is None:
        return False
    # The trim threshold only once a threshold took: setting either ends glibc's adapting of
    # the mmap threshold, which alone would leave every large block mmapped.
    took = any(libc.mallopt(M_MMAP_THRESHOLD, size) == 1 for size in MMAP_THRESHOLDS)
    if not (took and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1):
        log.warning("glibc refused the allocator settings; training runs with its defaults")
        return False
    return True


def hand_back_freed_memory() -> None:
    """Return the free memory the heap kept to the kernel (when a run ends)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
