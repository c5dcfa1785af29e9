"""Label Studio JSON: :func:`load_labelstudio` (a project's "JSON" export) and :func:`save_labelstudio`
(tasks with predictions, to import as pre-annotations).

A task is ``{"data": {"image": URL}, "annotations": [{"result": [...]}], "predictions": [...]}``. Each
result has ``original_width``, ``original_height`` and a ``value`` in percent of the image:
``rectanglelabels`` (``x, y, width, height`` and ``rotation``, degrees clockwise about the top-left
corner) or ``polygonlabels`` (``points``). Read: a task's last annotation that was not cancelled, else
its last prediction. Written: one prediction per task whose results each carry their ``score`` (Label
Studio sorts and filters tasks by it), and beside the file the labelling config it needs
(``<file>.config.xml``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse
from xml.sax.saxutils import quoteattr

import numpy as np

from ...store.store import atomic_write_bytes
from .base import (
    AnnotatedImage,
    Annotations,
    FormatError,
    ImageBuilder,
    read_json,
    rotated_box,
    shape_of,
    with_labels,
)

__all__ = ["load_labelstudio", "save_labelstudio", "labelstudio_config"]

_KINDS = ("rectanglelabels", "polygonlabels", "labels")


def image_name(url: str) -> str:
    """The image a task's URL names: ``/data/local-files/?d=sub/a.jpg`` -> ``sub/a.jpg``; an upload's
    ``/data/upload/3/5f2e-a.jpg`` -> ``a.jpg``; a URL -> its path."""
    parsed = urlparse(url)
    if "d" in parse_qs(parsed.query):
        return unquote(parse_qs(parsed.query)["d"][0])
    path = unquote(parsed.path) if parsed.scheme or parsed.path.startswith("/data/") else url
    if path.startswith("/data/upload/"):
        name = path.rsplit("/", 1)[-1]
        return name.split("-", 1)[1] if "-" in name else name
    return path


def _tasks(path: Path) -> list[dict[str, Any]]:
    doc = read_json(path, "Label Studio", "a Label Studio JSON export (a list of tasks)")
    if isinstance(doc, dict) and "images" in doc and "annotations" in doc:
        raise FormatError(f"{str(path)!r} is a COCO file, not a Label Studio export — pass --format coco")
    tasks = [doc] if isinstance(doc, dict) and "data" in doc else doc
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks):
        raise FormatError(f"{str(path)!r} is not a Label Studio export — expected a JSON list of tasks, each with "
                          "'data' (the image) and 'annotations' or 'predictions' (Export > JSON in Label Studio)")
    return tasks


def _results(task: dict[str, Any]) -> list[dict[str, Any]]:
    done = [a for a in task.get("annotations") or [] if not (a.get("was_cancelled") or a.get("skipped"))]
    chosen = done or task.get("predictions") or []
    last = chosen[-1] if chosen else {}
    return list(last.get("result") or []) if isinstance(last, dict) else []


def _add(b: ImageBuilder, r: dict[str, Any], element: str) -> None:
    value = r.get("value") or {}
    kind = next((k for k in _KINDS if value.get(k)), None)
    if kind is None:
        return  # a choice, a text area, a keypoint: not an object
    label = str(value[kind][0])
    w, h = b.width, b.height
    if w is None or h is None:
        raise b.fail(element, "has no original_width and original_height — expected the image's size in pixels")
    try:
        if kind == "polygonlabels":
            pts = np.asarray(value.get("points") or [], np.float64).reshape(-1, 2)
            poly = pts * [w / 100.0, h / 100.0]
            center = False
        else:
            x, y = float(value["x"]) * w / 100, float(value["y"]) * h / 100
            bw, bh = float(value["width"]) * w / 100, float(value["height"]) * h / 100
            t = math.radians(float(value.get("rotation") or 0))
            ux, uy = np.array([math.cos(t), math.sin(t)]), np.array([-math.sin(t), math.cos(t)])
            corner = np.array([x, y])
            poly = np.stack([corner, corner + bw * ux, corner + bw * ux + bh * uy, corner + bh * uy])
            center = bool(float(value.get("rotation") or 0) % 360)
    except (KeyError, TypeError, ValueError):
        raise b.fail(element, f"value {json.dumps(value)[:80]} is not a {kind} — expected x, y, width, height "
                     "(percent) or points") from None
    score = r.get("score")
    b.add(label, poly, element, score=None if score is None else float(score), rotated_center_inside=center,
          attributes={"id": r.get("id")})


def load_labelstudio(path: str | os.PathLike) -> Annotations:
    """Read a Label Studio JSON export (see the module's docstring).

    Raises
    ------
    FormatError
        Not JSON, not a list of tasks, or a result that is wrong (a polygon of fewer than 3 points, a box
        outside its image); the message names the file, the task and the result.
    """
    p = Path(path).expanduser()
    source = str(p)
    labels: list[str] = []
    images = []
    for k, task in enumerate(_tasks(p)):
        data = task["data"]
        url = data.get("image") or next((v for v in data.values() if isinstance(v, str)), None)
        where = f"task {task.get('id', k + 1)}"
        if not url:
            raise FormatError(f"{source}: {where} has no image in 'data' — expected data.image")
        results = _results(task)
        size = next(((r.get("original_width"), r.get("original_height")) for r in results
                     if r.get("original_width")), (None, None))
        b = ImageBuilder(source, image_name(str(url)), size[0], size[1], labels)
        for i, r in enumerate(results):
            _add(b, r, f"{where} ({b.name!r}) result {r.get('id') or i + 1}")
        images.append(b.build())
    return Annotations(source, "labelstudio", labels, [with_labels(im, labels) for im in images])


def labelstudio_config(labels: list[str]) -> str:
    """The labelling config for these labels: rectangles (rotatable) and polygons on an image."""
    choices = "".join(f"\n    <Label value={quoteattr(v)}/>" for v in labels)
    return (f'<View>\n  <Image name="image" value="$image"/>\n  <RectangleLabels name="label" toName="image">{choices}'
            f'\n  </RectangleLabels>\n  <PolygonLabels name="polygon" toName="image">{choices}'
            "\n  </PolygonLabels>\n</View>\n")


def _result(im: AnnotatedImage, i: int, scores: bool) -> dict[str, Any]:
    d = im.detections
    w, h = float(im.width or 1), float(im.height or 1)
    poly = d.polygons[i]
    label = d.names[int(d.class_id[i])]
    kind = shape_of(poly)
    out: dict[str, Any] = {"id": f"r{i + 1}", "from_name": "label", "to_name": "image", "original_width": im.width,
                           "original_height": im.height, "image_rotation": 0}
    if kind == "polygon":
        pts = [[float(x) / w * 100, float(y) / h * 100] for x, y in poly]
        out.update(from_name="polygon", type="polygonlabels", value={"points": pts, "polygonlabels": [label]})
    else:
        if kind == "box":
            x1, y1, x2, y2 = (float(v) for v in d.xyxy[i])
            x, y, bw, bh, turn = x1, y1, x2 - x1, y2 - y1, 0.0
        else:
            _, _, bw, bh, turn = rotated_box(poly)
            x, y = (float(v) for v in poly[0])
        out.update(type="rectanglelabels", value={"x": x / w * 100, "y": y / h * 100, "width": bw / w * 100,
                                                  "height": bh / h * 100, "rotation": turn,
                                                  "rectanglelabels": [label]})
    if scores:
        out["score"] = float(d.confidence[i])
    return out


def save_labelstudio(ann: Annotations, path: str | os.PathLike, *, url_prefix: str | None = None,
                     model_version: str = "musseltools") -> Path:
    """Write ``ann`` as Label Studio tasks with one prediction each (atomically), and the labelling config
    beside it (``<path>.config.xml``); returns the path.

    Image URLs are ``url_prefix`` + the image's name (quoted), e.g.
    ``--url-prefix "/data/local-files/?d=survey/"`` for local storage or an ``s3://bucket/`` prefix for
    cloud storage; without it, the relative name."""
    tasks = []
    for im in ann.images:
        url = f"{url_prefix}{quote(im.name)}" if url_prefix else im.name
        result = [_result(im, i, ann.scores) for i in range(len(im.detections))]
        pred: dict[str, Any] = {"model_version": model_version, "result": result}
        if ann.scores and len(im.detections):
            pred["score"] = float(np.mean(im.detections.confidence))
        tasks.append({"data": {"image": url}, "predictions": [pred]})
    out = Path(path)
    atomic_write_bytes(out, json.dumps(tasks, indent=1).encode())
    atomic_write_bytes(out.with_name(out.name + ".config.xml"), labelstudio_config(ann.labels).encode())
    return out
