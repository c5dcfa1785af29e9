"""What this machine offers a run: the cores this process may use, and whether it may have a CUDA GPU."""

from __future__ import annotations

import contextlib
import glob
import os
import sys

__all__ = ["cpu_cores", "cuda_possible", "keep_freed_memory_for_reuse"]


def cpu_cores() -> int:
    """Cores this process may use (its CPU affinity where the platform tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cuda_possible() -> bool:
    """Whether torch could find a CUDA (or ROCm) GPU here, answered without importing torch where it can be.

    False on Linux when no GPU device node exists (``/dev/nvidia*``, WSL's ``/dev/dxg``, ROCm's ``/dev/kfd``)
    and on macOS: ``torch.cuda.is_available()`` is then False too, and a process that only hands images to
    worker processes need not import torch (1-2 s at start and again at exit). True elsewhere, or when torch
    is already imported (ask it then)."""
    if "torch" in sys.modules:
        return True
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        return bool(glob.glob("/dev/nvidia*") or os.path.exists("/dev/dxg") or os.path.exists("/dev/kfd"))
    return True


#: glibc's mallopt parameters, and the values of its dynamic mmap threshold at its ceiling (64-bit)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 64 << 20
_MALLOC_TUNED: list[bool] = []


def keep_freed_memory_for_reuse() -> None:
    """Undo, once per process, a ``MALLOC_TRIM_THRESHOLD_`` in its environment: Dask's nanny gives its workers
    65536 (``distributed.nanny.pre-spawn-environ``), and starting a ``LocalCluster`` puts it in the client
    process's environment too, so worker processes started after it inherit it. With it glibc maps every
    buffer over 128 KiB afresh and gives it back when freed, so each tensor of every forward pass pays for new
    zeroed pages: 25-30% fewer images/s with the demo model on CPU. The thresholds are set where glibc's own
    dynamic ones end (32 MiB mmap, 64 MiB trim): freed tensors are reused, and memory past that is still
    returned."""
    if _MALLOC_TUNED or not os.environ.get("MALLOC_TRIM_THRESHOLD_") or not sys.platform.startswith("linux"):
        return
    _MALLOC_TUNED.append(True)
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
