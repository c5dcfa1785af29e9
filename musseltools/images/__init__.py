"""Image collections (scanning folders and lists, hashing images) and decoding (EXIF orientation, decompression
bombs, FIFOs, object stores)."""

from __future__ import annotations

from .collection import IMAGE_SUFFIXES, Collection, scan

__all__ = ["Collection", "scan", "IMAGE_SUFFIXES"]
