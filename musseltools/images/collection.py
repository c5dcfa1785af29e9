"""Collections: named sets of survey images, identified by the SHA-256 of their bytes.

A collection is a folder (scanned recursively, re-scanned on every call so new images are picked
up) or an explicit list of paths. Each image is identified by ``image_id``, the SHA-256 of its
bytes: two files with the same content are one image, and an image changed in place is a new image.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import pandas as pd

from ..errors import CollectionError
from ..store.backends import is_url
from .suffixes import IMAGE_SUFFIXES

__all__ = ["Collection", "scan", "IMAGE_SUFFIXES", "sha256_file", "display_path"]

log = logging.getLogger(__name__)

#: File suffixes taken as images when a folder is scanned (compared in lower case).

ImagesLike = Union[str, os.PathLike, Iterable[str | os.PathLike], "Collection"]

_COLUMNS = ["image_id", "path", "size", "mtime_ns", "ctime_ns", "width", "height", "error", "fspath"]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def display_path(path: str) -> str:
    """A path as valid UTF-8 text for tables and JSON (undecodable bytes shown as ``\\xNN``)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _path_id(path: str) -> str:
    """Stand-in id for a file that cannot be read (no content to hash): derived from its path."""
    return "unreadable-" + hashlib.sha256(os.fsencode(path)).hexdigest()[:48]


def _oriented_size(path: str) -> tuple[int | None, int | None]:
    """Width and height as the user sees the image (EXIF rotation applied), read from the header."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:  # noqa: BLE001 - a broken EXIF block is not our problem here
                orientation = 1
        return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    except Exception:  # noqa: BLE001 - undecodable images get their error when they are decoded
        return None, None


@dataclass
class Collection:
    """A named set of images.

    Attributes
    ----------
    name : str
        Human name (the folder's name by default).
    source : dict
        What the collection is: ``{"kind": "folder", "root": ...}`` or ``{"kind": "list", "digest": ...}``.
    table : pandas.DataFrame
        One row per file: ``image_id, path, size, mtime_ns, width, height, error, fspath`` (``error``
        set for files that could not be read at all; ``path`` is printable text, ``fspath`` the name
        to open as bytes, which differ only for names that are not valid UTF-8), sorted by path.
    """

    name: str
    source: dict[str, Any]
    table: pd.DataFrame = field(repr=False)

    @property
    def images(self) -> pd.DataFrame:
        """One row per distinct image (files with identical bytes are one image; first path kept)."""
        return self.table.drop_duplicates("image_id", keep="first").reset_index(drop=True)

    def __len__(self) -> int:
        return int(self.table["image_id"].nunique())

    @property
    def identity(self) -> str:
        """Stable text naming what this collection is (used in run ids)."""
        if self.source["kind"] == "folder":
            return "folder:" + self.source["root"]
        return "list:" + self.source["digest"]


def _list_folder(root: Path) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fn in filenames:
            if os.path.splitext(fn)[1].lower() in IMAGE_SUFFIXES:
                found.append(os.path.join(dirpath, fn))
    return sorted(found)


def scan(
    images: ImagesLike,
    *,
    name: str | None = None,
    cache: Mapping[tuple[str, int, int], tuple[str, int | None, int | None]] | None = None,
) -> Collection:
    """Scan a folder (recursively) or a list of image paths into a :class:`Collection`.

    Parameters
    ----------
    images : folder, list of paths, or Collection
        A folder is searched for ``.jpg .jpeg .png .tif .tiff .bmp .webp`` files (any case).
    name : str, optional
        Name of the collection; defaults to the folder's name.
    cache : mapping, optional
        ``(path, size, mtime_ns, ctime_ns) -> (image_id, width, height)`` from an earlier scan, so unchanged
        files are not hashed again.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.jpg").write_bytes(b"not really a jpeg")
    >>> c = scan(d)
    >>> len(c), c.table.loc[0, "image_id"][:8]
    (1, '21ac2586')
    """
    if isinstance(images, Collection):
        return images
    cache = cache or {}
    if is_url(images):
        return _scan_url(str(images), name, cache)
    if isinstance(images, (str, os.PathLike)):
        root = Path(images).expanduser()
        if root.is_dir():
            root = root.resolve()
            paths = _list_folder(root)
            source = {"kind": "folder", "root": display_path(str(root))}
            name = name or root.name
        elif root.exists() or root.is_symlink():
            paths = [str(root.absolute())]
            source = None
        else:
            raise CollectionError(
                f"image folder {display_path(str(images))!r} does not exist — expected a folder of images or a "
                "list of image paths — check the path"
            )
    else:
        try:
            paths = [str(Path(p).expanduser().absolute()) for p in images]
        except TypeError as exc:
            raise CollectionError(
                f"cannot read a collection from {type(images).__name__} — expected a folder path or a list of "
                "image paths"
            ) from exc
        source = None
    if source is None:
        digest = hashlib.sha256("\n".join(sorted(os.fsencode(p).hex() for p in paths)).encode()).hexdigest()[:16]
        source = {"kind": "list", "digest": digest}
        name = name or f"list-{digest[:8]}"

    rows = []
    for p in paths:
        rows.append(_scan_one(p, cache))
    table = pd.DataFrame(rows, columns=_COLUMNS)
    table = table.astype({"size": "Int64", "mtime_ns": "Int64", "ctime_ns": "Int64", "width": "Int64",
                          "height": "Int64"})
    log.debug("scanned %d files in %s", len(table), name)
    return Collection(name=str(name), source=source, table=table)


def _scan_one(path: str, cache: Mapping) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path": display_path(path), "fspath": os.fsencode(path), "size": None, "mtime_ns": None, "ctime_ns": None,
        "width": None, "height": None,
        "error": None,
    }
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{display_path(path)} is a directory, not an image file")
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the scan for ever; devices are no images
            row["image_id"] = _path_id(path)
            row["error"] = f"{display_path(path)} is not a regular file (a FIFO, socket or device) — expected an image file"
            return row
        row["size"], row["mtime_ns"], row["ctime_ns"] = st.st_size, st.st_mtime_ns, st.st_ctime_ns
        hit = cache.get((display_path(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        if hit is not None:
            row["image_id"], row["width"], row["height"] = hit
        else:
            row["image_id"] = sha256_file(path)
            row["width"], row["height"] = _oriented_size(path)
    except FileNotFoundError:
        kind = "broken symlink" if os.path.islink(path) else "file not found"
        row["image_id"], row["error"] = _path_id(path), f"{kind}: {display_path(path)}"
    except OSError as exc:
        row["image_id"], row["error"] = _path_id(path), f"cannot read {display_path(path)}: {exc.strerror or exc}"
    return row


def _scan_url(url: str, name: str | None, cache: Mapping) -> Collection:
    """A folder URL (``s3://bucket/prefix/``) listed and read through fsspec; ids are the SHA-256 of the bytes.

    The object's size and last-modified time stand in for a file's size, mtime and ctime in the scan cache.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    protocol = url.split("://", 1)[0]
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise CollectionError(f"image folder {url!r} does not exist or is empty — expected a folder URL of images")
    infos = fs.find(root, detail=True)
    rows = []
    for key in sorted(infos):
        if os.path.splitext(key)[1].lower() not in IMAGE_SUFFIXES:
            continue
        info, path = infos[key], f"{protocol}://{key}"
        stamp = info.get("LastModified") or info.get("mtime") or 0
        ns = int(pd.Timestamp(stamp).value) if not isinstance(stamp, (int, float)) else int(stamp * 1e9)
        row = {"path": path, "fspath": path, "size": int(info.get("size") or 0), "mtime_ns": ns, "ctime_ns": ns,
               "width": None, "height": None, "error": None}
        hit = cache.get((path, row["size"], ns, ns))
        if hit is not None:
            row["image_id"], row["width"], row["height"] = hit
        else:
            try:
                data = fs.cat_file(key)
                row["image_id"] = hashlib.sha256(data).hexdigest()
                row["width"], row["height"] = _oriented_size(io.BytesIO(data))
            except OSError as exc:
                row["image_id"], row["error"] = _path_id(path), f"cannot read {path}: {exc}"
        rows.append(row)
    table = pd.DataFrame(rows, columns=_COLUMNS).astype(
        {"size": "Int64", "mtime_ns": "Int64", "ctime_ns": "Int64", "width": "Int64", "height": "Int64"})
    source = {"kind": "folder", "root": f"{protocol}://{root}"}
    return Collection(name=str(name or root.rsplit("/", 1)[-1]), source=source, table=table)
