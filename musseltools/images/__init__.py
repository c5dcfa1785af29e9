"""Image collections (scanning folders and lists, hashing images) and decoding (EXIF orientation, decompression
bombs, FIFOs, object stores)."""

from __future__ import annotations

from typing import Any

from .suffixes import IMAGE_SUFFIXES

__all__ = ["Collection", "scan", "IMAGE_SUFFIXES"]


def __getattr__(name: str) -> Any:
    """``Collection`` and ``scan`` on first use (PEP 562): the suffixes alone are light to import."""
    if name in ("Collection", "scan"):
        from . import collection

        return getattr(collection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
