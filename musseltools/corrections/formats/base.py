"""What every annotation format reads into and writes from: :class:`Annotations`, one
:class:`AnnotatedImage` per image (its objects as a :class:`~musseltools.core.detections.Detections`),
and the geometry of the three shapes the formats know: boxes, rotated boxes and polygons.

A shape is told by its outline (``Detections.polygons``): the four corners of its own bounding box is a
box, four corners of a rectangle at an angle is a rotated box, anything else a polygon. Angles are in
degrees, clockwise on the image (y points down), as CVAT and Label Studio give them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...core.detections import Detections
from ...errors import MusselToolsError

__all__ = ["FormatError", "AnnotatedImage", "Annotations", "ImageBuilder", "shape_of", "rotated_box",
           "rotated_corners", "box_corners", "image_key", "read_json"]

#: How far (pixels) an object may reach past the image's edge before it is "outside the image".
EDGE_TOLERANCE = 1.0


class FormatError(MusselToolsError, ValueError):
    """An annotation file (CVAT, Label Studio, COCO, YOLO) cannot be read: the message names the file and
    the element."""


@dataclass
class AnnotatedImage:
    """One image of an annotation file and its objects.

    ``name`` is the image as the file names it (a relative path, a URL's path); ``elements`` names each
    object as the file does (for messages, e.g. ``<image name="a.jpg"> <box> 2``); ``attributes`` holds
    each object's other attributes (CVAT's ``occluded``, ...)."""

    name: str
    width: int | None
    height: int | None
    detections: Detections
    elements: list[str] = field(default_factory=list)
    attributes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Annotations:
    """The images of an annotation file (or of a run's predictions, to be written as one).

    ``labels`` are the label names in id order (``detections.class_id`` indexes them); ``scores``: whether
    the confidences are worth writing (predictions) or not (truth, a dataset)."""

    source: str
    format: str
    labels: list[str]
    images: list[AnnotatedImage]
    scores: bool = True

    def __len__(self) -> int:
        return sum(len(im.detections) for im in self.images)


def read_json(path: Path, fmt: str, expected: str) -> Any:
    """The parsed JSON of an annotation file of format ``fmt`` ("COCO", "Label Studio"); a missing, unreadable,
    XML (a CVAT file given as this format) or malformed file is a :class:`FormatError` naming it and saying
    what was ``expected``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(f"{fmt} file {str(path)!r} does not exist — check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"cannot read {fmt} file {str(path)!r}: {exc}") from exc
    if text.lstrip().startswith("<"):
        raise FormatError(f"{str(path)!r} is XML, not {fmt} JSON — for a CVAT export pass --format cvat")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{str(path)!r} is not valid JSON ({exc}) — expected {expected}") from None


def image_key(name: str) -> str:
    """A name's match key: ``/``-separated, without suffix (``sub\\a.jpg`` -> ``sub/a``)."""
    text = str(name).replace("\\", "/")
    stem, dot, suffix = text.rpartition(".")
    return stem if dot and "/" not in suffix else text


def box_corners(x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float64)


def shape_of(polygon: np.ndarray) -> str:
    """``"box"``, ``"rotated"`` or ``"polygon"``: what an outline is (see the module's docstring)."""
    p = np.asarray(polygon, np.float64).reshape(-1, 2)
    if len(p) != 4:
        return "polygon"
    lo, hi = p.min(0), p.max(0)
    scale = max(1.0, float(np.abs(p).max()))
    if np.allclose(p, box_corners(lo[0], lo[1], hi[0], hi[1]), atol=1e-4 * scale):
        return "box"
    a, b, c, d = p
    sides = [b - a, c - b, d - c, a - d]
    lengths = [float(np.hypot(*s)) for s in sides]
    if min(lengths) <= 0:
        return "polygon"
    right = all(abs(float(np.dot(sides[i], sides[(i + 1) % 4]))) <= 1e-3 * lengths[i] * lengths[(i + 1) % 4]
                for i in range(4))
    return "rotated" if right else "polygon"


def rotated_box(polygon: np.ndarray) -> tuple[float, float, float, float, float]:
    """``(cx, cy, w, h, angle)`` of a rotated box's four corners: ``w`` along the first side, ``angle`` in
    degrees clockwise in [0, 360)."""
    p = np.asarray(polygon, np.float64).reshape(4, 2)
    a, b, _, d = p
    w, h = float(np.hypot(*(b - a))), float(np.hypot(*(d - a)))
    angle = math.degrees(math.atan2(b[1] - a[1], b[0] - a[0])) % 360.0
    cx, cy = p.mean(0)
    return float(cx), float(cy), w, h, angle


def rotated_corners(cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    """The four corners of a box of size ``w`` x ``h`` centred on ``(cx, cy)`` and turned ``angle``
    degrees clockwise: top-left, top-right, bottom-right, bottom-left before the turn."""
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    local = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    return np.stack([cx + local[:, 0] * c - local[:, 1] * s, cy + local[:, 0] * s + local[:, 1] * c], 1)


class ImageBuilder:
    """Collects one image's objects as a loader reads them, checking each; ``build`` gives the image.

    Each ``add`` raises :class:`FormatError` naming the file and the element for a polygon of fewer than
    three points, coordinates that are not numbers, or an object outside the image."""

    def __init__(self, source: str, name: str, width: Any, height: Any, labels: list[str]) -> None:
        self.source, self.name, self.labels = source, name, labels
        self.width = _size(width, source, name, "width")
        self.height = _size(height, source, name, "height")
        self.polygons: list[np.ndarray] = []
        self.class_ids: list[int] = []
        self.scores: list[float] = []
        self.elements: list[str] = []
        self.attributes: list[dict[str, Any]] = []

    def fail(self, element: str, what: str) -> FormatError:
        return FormatError(f"{self.source}: {element}: {what}")

    def add(self, label: str, polygon: Sequence[Sequence[float]] | np.ndarray, element: str, *,
            score: float | None = None, attributes: Mapping[str, Any] | None = None,
            rotated_center_inside: bool = False) -> None:
        try:
            p = np.asarray(polygon, np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            raise self.fail(element, f"points {polygon!r} are not numbers — expected x, y pairs in pixels") from None
        if len(p) < 3:
            raise self.fail(element, f"a polygon of {len(p)} points — expected at least 3 — remove it or draw "
                            "it again")
        if not np.all(np.isfinite(p)):
            raise self.fail(element, "coordinates are not finite numbers — fix the file")
        lo, hi = p.min(0), p.max(0)
        if hi[0] - lo[0] <= 0 or hi[1] - lo[1] <= 0:
            raise self.fail(element, f"the shape has no area (box {lo.tolist() + hi.tolist()}) — remove it")
        self._check_inside(p, element, rotated_center_inside)
        if label not in self.labels:
            self.labels.append(label)
        if score is not None and not 0 <= float(score) <= 1:
            raise self.fail(element, f"score {score!r} is not a confidence — expected a number in [0, 1]")
        self.polygons.append(p)
        self.class_ids.append(self.labels.index(label))
        self.scores.append(1.0 if score is None else float(score))
        self.elements.append(element)
        self.attributes.append(dict(attributes or {}))

    def _check_inside(self, p: np.ndarray, element: str, center_only: bool) -> None:
        if self.width is None or self.height is None:
            return
        pts = p.mean(0, keepdims=True) if center_only else p
        t = EDGE_TOLERANCE
        if (pts < -t).any() or (pts[:, 0] > self.width + t).any() or (pts[:, 1] > self.height + t).any():
            lo, hi = p.min(0), p.max(0)
            raise self.fail(element, f"the shape (box {[round(float(v), 1) for v in (*lo, *hi)]}) lies outside "
                            f"the image ({self.width} x {self.height} pixels) — fix or remove it")

    def build(self) -> AnnotatedImage:
        n = len(self.polygons)
        names = dict(enumerate(self.labels))
        if n:
            xyxy = np.array([[*p.min(0), *p.max(0)] for p in self.polygons])
            dets = Detections(xyxy, self.scores, self.class_ids, self.polygons, names, _pair(self.width, self.height))
        else:
            dets = Detections.empty(names, _pair(self.width, self.height))
        return AnnotatedImage(self.name, self.width, self.height, dets, self.elements, self.attributes)


def _pair(w: int | None, h: int | None) -> tuple[int, int] | None:
    return (w, h) if w is not None and h is not None else None


def _size(value: Any, source: str, name: str, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        size = float(value)
    except (TypeError, ValueError):
        raise FormatError(f"{source}: image {name!r}: {what} {value!r} is not a number of pixels — fix the "
                          "file") from None
    if not math.isfinite(size) or size <= 0:
        raise FormatError(f"{source}: image {name!r}: {what} {value!r} is not a size — expected a positive "
                          "number of pixels")
    return int(round(size))


def with_labels(image: AnnotatedImage, labels: list[str]) -> AnnotatedImage:
    """The image with its detections' names set to the file's final list of labels (a loader learns labels
    as it reads)."""
    d = image.detections
    names = dict(enumerate(labels))
    dets = Detections(d.xyxy, d.confidence, d.class_id, list(d.polygons), names, d.image_size)
    return AnnotatedImage(image.name, image.width, image.height, dets, image.elements, image.attributes)
