"""Annotation-tool formats: one module per format, each a pair of load/save functions over
:class:`~musseltools.corrections.formats.base.Annotations` (one
:class:`~musseltools.core.detections.Detections` per image): :mod:`.cvat` (CVAT for images 1.1 XML),
:mod:`.labelstudio` (Label Studio JSON), :mod:`.coco` (COCO JSON, datasets and results lists) and
:mod:`.yolo` (Ultralytics label folders). :func:`load_annotations` reads any of the first three and
tells which it is; :func:`save_annotations` writes any of them."""

from __future__ import annotations

import os
from pathlib import Path

from .base import AnnotatedImage, Annotations, FormatError
from .coco import load_coco, save_coco, save_coco_results
from .cvat import load_cvat, save_cvat
from .labelstudio import load_labelstudio, save_labelstudio
from .yolo import load_yolo, save_yolo

__all__ = ["Annotations", "AnnotatedImage", "FormatError", "load_annotations", "save_annotations", "detect_format",
           "LOADERS", "EXPORT_FORMATS", "load_cvat", "save_cvat", "load_labelstudio", "save_labelstudio",
           "load_coco", "save_coco", "save_coco_results", "load_yolo", "save_yolo"]

#: The formats an annotated file is read from, by name.
LOADERS = {"cvat": load_cvat, "labelstudio": load_labelstudio, "coco": load_coco}
#: The formats predictions are written in.
EXPORT_FORMATS = ("coco", "coco-results", "cvat", "labelstudio", "yolo")


def detect_format(path: str | os.PathLike) -> str | None:
    """``"cvat"``, ``"labelstudio"`` or ``"coco"`` from a file's first bytes; None when it is none of them."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(4096).lstrip()
    except OSError:
        return None
    if head.startswith(b"<"):
        return "cvat"
    if head.startswith(b"["):
        return "labelstudio"
    if head.startswith(b"{"):
        return "labelstudio" if b'"data"' in head and b'"images"' not in head else "coco"
    return None


def load_annotations(path: str | os.PathLike, format: str = "auto") -> Annotations:
    """Read an annotated file: ``format`` ``"cvat"``, ``"labelstudio"``, ``"coco"`` or ``"auto"`` (told
    from the file's content).

    Raises
    ------
    FormatError
        An unknown format, a file of another format than ``format``, or bad content (the file and the
        element named).
    """
    if format == "auto":
        found = detect_format(path)
        if found is None:
            raise FormatError(f"cannot tell the format of {str(path)!r} — expected CVAT XML, Label Studio JSON or "
                              "COCO JSON — pass the format (cvat, labelstudio, coco)")
        format = found
    if format not in LOADERS:
        raise FormatError(f"annotation format {format!r} is not one of {', '.join(LOADERS)}")
    return LOADERS[format](path)


def save_annotations(ann: Annotations, out: str | os.PathLike, format: str, *,
                     url_prefix: str | None = None) -> Path:
    """Write ``ann`` in a format of :data:`EXPORT_FORMATS`; returns the file (the ``data.yaml`` of yolo)."""
    if format == "coco":
        return save_coco(ann, out)
    if format == "coco-results":
        return save_coco_results(ann, out)
    if format == "cvat":
        return save_cvat(ann, out)
    if format == "labelstudio":
        return save_labelstudio(ann, out, url_prefix=url_prefix)
    if format == "yolo":
        return save_yolo(ann, out)
    raise FormatError(f"export format {format!r} is not one of {', '.join(EXPORT_FORMATS)}")
