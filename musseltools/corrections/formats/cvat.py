"""CVAT for images 1.1 XML: :func:`load_cvat` and :func:`save_cvat`.

Read: every ``<image>`` (``name``, ``width``, ``height``) and its ``<box>`` (``xtl, ytl, xbr, ybr`` and
an optional ``rotation``, degrees clockwise about the box's centre) and ``<polygon>`` (``points``
``x,y;x,y;...``) in pixels; ``occluded`` and each ``<attribute>`` are kept as the object's attributes,
and an attribute ``score`` as its confidence. Points, polylines, masks and tags are not objects here
(they are counted in a log line).

Written: the same structure, with the labels (and a ``score`` attribute) declared in ``<meta>``, so
that CVAT (Upload annotations, format "CVAT 1.1") and datumaro's CVAT importer take it.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from ...store.store import atomic_write_bytes
from .base import (
    AnnotatedImage,
    Annotations,
    FormatError,
    ImageBuilder,
    box_corners,
    rotated_box,
    rotated_corners,
    shape_of,
    with_labels,
)

__all__ = ["load_cvat", "save_cvat"]

log = logging.getLogger(__name__)


def _parse(path: Path) -> ET.Element:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"CVAT file {str(path)!r} does not exist — check the path") from None
    except OSError as exc:
        raise FormatError(f"cannot read CVAT file {str(path)!r}: {exc}") from exc
    if data.lstrip()[:1] in (b"{", b"["):
        raise FormatError(f"{str(path)!r} is JSON, not CVAT XML — expected CVAT for images 1.1 XML; for a COCO or "
                          "Label Studio export pass --format coco or --format labelstudio")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise FormatError(f"{str(path)!r} is not well-formed XML ({exc}) — expected CVAT for images 1.1 XML "
                          "(export the task as 'CVAT for images 1.1')") from None
    if root.tag != "annotations":
        raise FormatError(f"{str(path)!r}: the root element is <{root.tag}>, not <annotations> — expected CVAT for "
                          "images 1.1 XML (a video's 'CVAT for video' export has tracks, not images)")
    return root


def _num(builder: ImageBuilder, el: ET.Element, element: str, key: str) -> float:
    value = el.get(key)
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise builder.fail(element, f"attribute {key}={value!r} is not a number — expected pixels") from None


def load_cvat(path: str | os.PathLike) -> Annotations:
    """Read a CVAT for images 1.1 XML file (see the module's docstring).

    Raises
    ------
    FormatError
        The file is not XML, not CVAT's, or an element is wrong (a polygon of fewer than 3 points, a box
        outside its image, a number that is not one); the message names the file and the element.
    """
    p = Path(path).expanduser()
    root = _parse(p)
    source = str(p)
    labels = [str(n.text) for n in root.iterfind("meta/*/labels/label/name") if n.text]
    images, skipped = [], 0
    for i, im in enumerate(root.iter("image")):
        name = im.get("name")
        where = f"<image name={name!r}>" if name else f"<image> {i + 1}"
        if not name:
            raise FormatError(f"{source}: {where} has no name — expected the image's file name")
        b = ImageBuilder(source, name, im.get("width"), im.get("height"), labels)
        for k, el in enumerate(im):
            element = f"{where} <{el.tag}> {k + 1}"
            if el.tag not in ("box", "polygon"):
                skipped += 1
                continue
            label = el.get("label")
            if not label:
                raise b.fail(element, "has no label — expected label=\"...\"")
            attrs: dict[str, object] = {"occluded": el.get("occluded") == "1"}
            attrs.update({a.get("name") or "": a.text or "" for a in el.iterfind("attribute")})
            score = attrs.pop("score", None)
            try:
                score = None if score in (None, "") else float(score)  # type: ignore[arg-type]
            except ValueError:
                raise b.fail(element, f"score {score!r} is not a number") from None
            if el.tag == "box":
                x1, y1, x2, y2 = (_num(b, el, element, k) for k in ("xtl", "ytl", "xbr", "ybr"))
                turn = float(el.get("rotation") or 0) % 360
                if turn:
                    poly = rotated_corners((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, turn)
                else:
                    poly = box_corners(x1, y1, x2, y2)
                b.add(label, poly, element, score=score, attributes=attrs, rotated_center_inside=bool(turn))
            else:
                try:
                    poly = [[float(v) for v in pair.split(",")] for pair in (el.get("points") or "").split(";")
                            if pair.strip()]
                    if any(len(xy) != 2 for xy in poly):
                        raise ValueError
                except ValueError:
                    raise b.fail(element, f"points {el.get('points', '')[:60]!r} are not 'x,y;x,y;...' "
                                 "pixels") from None
                b.add(label, poly, element, score=score, attributes=attrs)
        images.append(b.build())
    if skipped:
        log.info("%s: %d points, polylines, masks or tags left out (only boxes and polygons are objects)", source,
                 skipped)
    return Annotations(source, "cvat", labels, [with_labels(im, labels) for im in images])


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    el = ET.SubElement(parent, tag)
    el.text = text
    return el


def _meta(root: ET.Element, ann: Annotations, name: str) -> None:
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    _text(task, "name", name)
    _text(task, "size", str(len(ann.images)))
    _text(task, "mode", "annotation")
    labels = ET.SubElement(task, "labels")
    for label in ann.labels:
        el = ET.SubElement(labels, "label")
        _text(el, "name", label)
        _text(el, "type", "any")
        attrs = ET.SubElement(el, "attributes")
        if ann.scores:
            a = ET.SubElement(attrs, "attribute")
            for tag, text in (("name", "score"), ("mutable", "False"), ("input_type", "number"),
                              ("default_value", "1"), ("values", "0\n1\n0.0001")):
                _text(a, tag, text)


def _shape(image: ET.Element, im: AnnotatedImage, i: int, scores: bool) -> None:
    d = im.detections
    poly = d.polygons[i]
    kind = shape_of(poly)
    common = {"label": d.names[int(d.class_id[i])], "source": "auto" if scores else "manual",
              "occluded": "1" if im.attributes and im.attributes[i].get("occluded") else "0", "z_order": "0"}
    if kind == "polygon":
        el = ET.SubElement(image, "polygon", {**common, "points": ";".join(f"{x:.2f},{y:.2f}" for x, y in poly)})
    else:
        if kind == "box":
            x1, y1, x2, y2 = (float(v) for v in d.xyxy[i])
            extra = {}
        else:
            cx, cy, w, h, turn = rotated_box(poly)
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            extra = {"rotation": f"{turn:.2f}"}
        el = ET.SubElement(image, "box", {**common, "xtl": f"{x1:.2f}", "ytl": f"{y1:.2f}", "xbr": f"{x2:.2f}",
                                          "ybr": f"{y2:.2f}", **extra})
    if scores:
        _text(el, "attribute", f"{float(d.confidence[i]):.4f}").set("name", "score")


def save_cvat(ann: Annotations, path: str | os.PathLike, *, name: str = "musseltools") -> Path:
    """Write ``ann`` as CVAT for images 1.1 XML (atomically); returns the path.

    Boxes are ``<box>``, rotated boxes ``<box rotation=...>``, polygons ``<polygon>``; with
    ``ann.scores`` each carries its confidence as the attribute ``score``."""
    root = ET.Element("annotations")
    _text(root, "version", "1.1")
    _meta(root, ann, name)
    for k, im in enumerate(ann.images):
        image = ET.SubElement(root, "image", {"id": str(k), "name": im.name, "width": str(im.width or 0),
                                              "height": str(im.height or 0)})
        for i in range(len(im.detections)):
            _shape(image, im, i, ann.scores)
    ET.indent(root)
    out = Path(path)
    atomic_write_bytes(out, b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8"))
    return out
