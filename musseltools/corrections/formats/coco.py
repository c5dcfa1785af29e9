"""COCO JSON: :func:`load_coco`, :func:`save_coco` (a dataset: images, annotations, categories) and
:func:`save_coco_results` (a detection results list, ``loadRes``'s input).

Boxes are ``bbox = [x, y, w, h]`` in pixels with an empty ``segmentation``; polygons and rotated boxes
(COCO has no rotated box) are a ``segmentation`` polygon with its enclosing ``bbox``, a rotated box's
angle kept in ``attributes.rotation``. Predictions carry their ``score``. Categories are numbered from 1
in the labels' order; images from 1 in the file's order (the results list uses the same ids).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...store.store import atomic_write_bytes
from .base import (
    AnnotatedImage,
    Annotations,
    FormatError,
    ImageBuilder,
    box_corners,
    read_json,
    rotated_box,
    shape_of,
    with_labels,
)

__all__ = ["load_coco", "save_coco", "save_coco_results", "coco_document"]


def _document(path: Path) -> dict[str, Any]:
    doc = read_json(path, "COCO", "a COCO detection JSON")
    if isinstance(doc, list) and doc and isinstance(doc[0], dict) and "data" in doc[0]:
        raise FormatError(f"{str(path)!r} is a Label Studio export, not COCO — pass --format labelstudio")
    if isinstance(doc, list):
        raise FormatError(f"{str(path)!r} is a list (COCO results name no image files) — expected a COCO dataset "
                          "JSON with 'images', 'annotations' and 'categories'")
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(
            doc.get("annotations"), list):
        raise FormatError(f"{str(path)!r} has no 'images' and 'annotations' lists — expected a COCO detection JSON")
    return doc


def _outline(b: ImageBuilder, a: dict[str, Any], element: str) -> tuple[np.ndarray, bool]:
    seg = a.get("segmentation")
    try:
        if isinstance(seg, list) and seg:
            flat = seg[0] if isinstance(seg[0], list) else seg
            pts = np.asarray(flat, np.float64).reshape(-1, 2)
            return pts, bool((a.get("attributes") or {}).get("rotation"))
        x, y, w, h = (float(v) for v in a["bbox"])
    except (KeyError, TypeError, ValueError):
        raise b.fail(element, f"bbox {a.get('bbox')!r} / segmentation are not numbers — expected bbox [x, y, w, h] "
                     "in pixels") from None
    return box_corners(x, y, x + w, y + h), False


def load_coco(path: str | os.PathLike) -> Annotations:
    """Read a COCO detection JSON (see the module's docstring); crowd annotations are left out.

    Raises
    ------
    FormatError
        Not JSON, not COCO, an annotation of an image or category the file does not list, a polygon of
        fewer than 3 points or a box outside its image; the message names the file and the annotation.
    """
    p = Path(path).expanduser()
    source = str(p)
    doc = _document(p)
    try:
        cats = {int(c["id"]): str(c["name"]) for c in doc.get("categories") or []}
        labels = list(dict.fromkeys(cats.values()))
        builders: dict[int, ImageBuilder] = {}
        for im in doc["images"]:
            builders[int(im["id"])] = ImageBuilder(source, str(im["file_name"]), im.get("width"), im.get("height"),
                                                   labels)
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{source}: images or categories are malformed ({type(exc).__name__}: {exc}) — expected "
                          "images[{id, file_name, width, height}] and categories[{id, name}]") from None
    for k, a in enumerate(doc["annotations"]):
        element = f"annotation {a.get('id', k + 1) if isinstance(a, dict) else k + 1}"
        if not isinstance(a, dict) or a.get("iscrowd"):
            continue
        b = builders.get(a.get("image_id"))  # type: ignore[arg-type]
        if b is None:
            raise FormatError(f"{source}: {element} refers to image id {a.get('image_id')!r}, which 'images' does "
                              "not list — fix the file")
        if a.get("category_id") not in cats:
            raise FormatError(f"{source}: {element} has category_id {a.get('category_id')!r}, which 'categories' "
                              "does not list — fix the file")
        poly, rotated = _outline(b, a, f"{element} (image {b.name!r})")
        b.add(cats[a["category_id"]], poly, f"{element} (image {b.name!r})", score=a.get("score"),
              rotated_center_inside=rotated)
    return Annotations(source, "coco", labels, [with_labels(b.build(), labels) for b in builders.values()])


def _annotation(im: AnnotatedImage, i: int, scores: bool) -> dict[str, Any]:
    d = im.detections
    x1, y1, x2, y2 = (float(v) for v in d.xyxy[i])
    poly = d.polygons[i]
    kind = shape_of(poly)
    out: dict[str, Any] = {"category_id": int(d.class_id[i]) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                           "area": (x2 - x1) * (y2 - y1), "iscrowd": 0, "segmentation": []}
    if kind != "box":
        out["segmentation"] = [[round(float(v), 2) for v in np.asarray(poly).reshape(-1)]]
        xs, ys = poly[:, 0].astype(np.float64), poly[:, 1].astype(np.float64)
        out["area"] = float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)
    if kind == "rotated":
        out["attributes"] = {"rotation": round(rotated_box(poly)[4], 2)}
    if scores:
        out["score"] = float(d.confidence[i])
    return out


def coco_document(ann: Annotations) -> dict[str, Any]:
    """The COCO dataset of ``ann`` as a dict (see the module's docstring)."""
    images, annotations = [], []
    for k, im in enumerate(ann.images, 1):
        images.append({"id": k, "file_name": im.name, "width": im.width, "height": im.height})
        for i in range(len(im.detections)):
            annotations.append({"id": len(annotations) + 1, "image_id": k, **_annotation(im, i, ann.scores)})
    cats = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(ann.labels)]
    return {"info": {"description": f"written by musseltools from {ann.source}"}, "licenses": [], "images": images,
            "annotations": annotations, "categories": cats}


def save_coco(ann: Annotations, path: str | os.PathLike) -> Path:
    """Write ``ann`` as a COCO dataset JSON (atomically); returns the path."""
    out = Path(path)
    atomic_write_bytes(out, json.dumps(coco_document(ann)).encode())
    return out


def save_coco_results(ann: Annotations, path: str | os.PathLike) -> Path:
    """Write ``ann``'s detections as a COCO results list (``image_id, category_id, bbox, score``), the
    image and category ids those of :func:`save_coco` of the same ``ann``; returns the path."""
    rows = []
    for k, im in enumerate(ann.images, 1):
        d = im.detections
        for i in range(len(d)):
            x1, y1, x2, y2 = (float(v) for v in d.xyxy[i])
            rows.append({"image_id": k, "category_id": int(d.class_id[i]) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": float(d.confidence[i])})
    out = Path(path)
    atomic_write_bytes(out, json.dumps(rows).encode())
    return out
