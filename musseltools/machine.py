"""What this machine offers a run: the cores this process may use, and whether it may have a CUDA GPU."""

from __future__ import annotations

import glob
import os
import sys

__all__ = ["cpu_cores", "cuda_possible"]


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
