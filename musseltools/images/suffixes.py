"""Which files are images: by suffix (light to import, for counting a folder's images before a run starts)."""

from __future__ import annotations

__all__ = ["IMAGE_SUFFIXES"]

#: File suffixes (lower case) a collection takes as images.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
