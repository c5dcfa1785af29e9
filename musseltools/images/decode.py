"""Reading and decoding images: regular files only, decompression bombs refused, EXIF rotation applied.

Used by the engine (what the model sees) and by plots and widgets (what the researcher sees), so both
see the same pixels.
"""

from __future__ import annotations

import io
import os
import re
import stat

import numpy as np

from ..store.backends import is_url

__all__ = ["MAX_PIXELS", "decode_image", "max_pixels", "read_regular_file"]

#: Images above this many pixels are refused (decompression-bomb guard); env MUSSELTOOLS_MAX_PIXELS.
MAX_PIXELS = 250_000_000


def max_pixels() -> int:
    """The decompression-bomb limit in pixels: ``$MUSSELTOOLS_MAX_PIXELS``, else :data:`MAX_PIXELS`."""
    return int(os.environ.get("MUSSELTOOLS_MAX_PIXELS", MAX_PIXELS))


def _too_large(pixels: int, limit: int, size: str = "") -> ValueError:
    return ValueError(
        f"image too large: {size}{pixels / 1e6:.0f} megapixels, above the {limit / 1e6:.0f} megapixel limit "
        "(decompression-bomb guard) — set MUSSELTOOLS_MAX_PIXELS higher if the image is genuine"
    )


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes to a BGR uint8 array as the user sees it (EXIF rotation applied).

    Decodes as Ultralytics does (OpenCV, colour, 8 bit), falling back to Pillow for what OpenCV cannot
    read. Raises ``ValueError`` with the reason when the bytes are not a usable image.

    Examples
    --------
    >>> import cv2
    >>> ok, png = cv2.imencode(".png", np.zeros((4, 6, 3), np.uint8))
    >>> decode_image(png.tobytes()).shape
    (4, 6, 3)
    """
    import cv2
    from PIL import Image

    if not data:
        raise ValueError("empty file (0 bytes)")
    limit = max_pixels()
    header_ok = False
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            header_ok = True
    except Image.DecompressionBombError as exc:  # Pillow's own guard, from the header alone
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else limit + 1
        if pixels > limit:
            raise _too_large(pixels, limit) from None
        w = h = 0  # allowed by our limit: OpenCV decodes it
    except Exception:  # noqa: BLE001 - not a Pillow format; OpenCV may still read it
        w = h = 0
    if header_ok and w * h > limit:
        raise _too_large(w * h, limit, f"{w}x{h} = ")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if arr is not None and arr.size:
        return arr
    try:
        from PIL import ImageOps

        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im)
            rgb = np.asarray(im.convert("RGB"))
        return np.ascontiguousarray(rgb[:, :, ::-1])
    except Exception as exc:  # noqa: BLE001
        kind = "truncated or corrupt image" if header_ok else "not a readable image"
        raise ValueError(f"{kind} ({type(exc).__name__}: {exc})") from None


def read_regular_file(fspath: str | bytes | os.PathLike, shown: str) -> bytes:
    """The bytes of a regular file; a FIFO, socket or device (which could block for ever) is refused.

    ``shown`` is the name used in the error message. An fsspec URL (``s3://bucket/key.jpg``) is read
    through fsspec.
    """
    if isinstance(fspath, str) and is_url(fspath):
        import fsspec

        with fsspec.open(fspath, "rb") as f:
            return f.read()
    fd = os.open(fspath, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(fspath)
        if not stat.S_ISREG(mode):
            raise OSError(f"{shown} is not a regular file (a FIFO, socket or device) — expected an image file")
        return f.read()
