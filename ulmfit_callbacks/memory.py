"""Keep resident memory flat over long runs: hand freed heap pages back to the OS.

On Linux/glibc, a training loop whose tensor sizes change from batch to batch (variable
BPTT, BPT3C chunks, sorted classification batches) leaves freed memory fragmented inside
malloc's heap, and glibc's dynamic mmap threshold moves large buffers from ``mmap`` into that
heap after the first frees. Resident memory then grows batch after batch although nothing is
alive (measured in ``benchmarks/memory_over_epoch.py``). :func:`release_memory` calls
``malloc_trim(0)``, which returns the free pages; elsewhere it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

from fastai.callback.core import Callback

__all__ = ["release_memory", "ReleaseMemory", "rss_mib"]

_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _libc.malloc_trim  # glibc only (musl has no malloc_trim)
    except (OSError, AttributeError):
        _libc = None


def release_memory() -> bool:
    """Return freed heap memory to the OS (glibc ``malloc_trim(0)``); ``False`` where unavailable."""
    if _libc is None:
        return False
    _libc.malloc_trim(0)
    return True


def rss_mib() -> float:
    """Resident memory of this process in MiB (Linux ``/proc/self/statm``; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            import os
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import psutil
        return psutil.Process().memory_info().rss / 2**20


class ReleaseMemory(Callback):
    """Call :func:`release_memory` every ``every`` training batches and after each validation.

    On by default in :func:`~ulmfit_callbacks.ulmfit_lm_learner` and
    :func:`~ulmfit_callbacks.ulmfit_classifier_learner`; works on any fastai learner.
    """
    order = 95

    def __init__(self, every: int = 1):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every

    def after_batch(self):
        if self.training and self.learn.iter % self.every == 0:
            release_memory()

    def after_validate(self):
        release_memory()
