"""Ultralytics (YOLO) label folders: :func:`save_yolo` and :func:`load_yolo`.

Written: ``OUT/data.yaml`` (``names`` by id), ``OUT/labels/<image name>.txt`` with one line per
object, normalized to the image: ``class cx cy w h`` (a box), ``class x1 y1 x2 y2 x3 y3 x4 y4`` (a
rotated box, Ultralytics' OBB labels) or ``class x1 y1 ... xn yn`` (a polygon, its segment labels), and
``OUT/images.meta`` (``name height width`` per image, so readers need not open the images). The format
has no place for a confidence: with scores, ``OUT/confidence.csv`` gives each line's
(``label_file, line, class, confidence``). :func:`musseltools.evaluation.load_truth` reads such a
folder as truth.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...store.store import atomic_write_bytes
from .base import Annotations, FormatError, ImageBuilder, box_corners, image_key, shape_of, with_labels

__all__ = ["save_yolo", "load_yolo"]


def _line(cls: int, poly: np.ndarray, xyxy: np.ndarray, w: float, h: float) -> str:
    if shape_of(poly) == "box":
        x1, y1, x2, y2 = (float(v) for v in xyxy)
        vals = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
    else:
        vals = (np.asarray(poly, np.float64) / [w, h]).reshape(-1).tolist()
    return f"{cls} " + " ".join(f"{v:.6f}" for v in vals) + "\n"


def save_yolo(ann: Annotations, out: str | os.PathLike) -> Path:
    """Write ``ann`` as an Ultralytics label folder (see the module's docstring); returns ``OUT/data.yaml``."""
    import yaml

    root = Path(out)
    rows, meta = [], []
    for im in ann.images:
        d = im.detections
        if not im.width or not im.height:
            raise FormatError(f"image {im.name!r} has no size — YOLO labels are fractions of it")
        lines = [_line(int(d.class_id[i]), d.polygons[i], d.xyxy[i], im.width, im.height) for i in range(len(d))]
        rel = image_key(im.name).lstrip("/")
        atomic_write_bytes(root / "labels" / f"{rel}.txt", "".join(lines).encode())
        meta.append(f"{rel} {im.height} {im.width}\n")
        rows += [(f"labels/{rel}.txt", i + 1, d.names[int(d.class_id[i])], f"{float(d.confidence[i]):.4f}")
                 for i in range(len(d))]
    doc = {"path": str(root.resolve()), "train": "images", "val": "images", "names": dict(enumerate(ann.labels))}
    atomic_write_bytes(root / "data.yaml", yaml.safe_dump(doc, sort_keys=False).encode())
    atomic_write_bytes(root / "images.meta", "".join(meta).encode())
    if ann.scores:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["label_file", "line", "class", "confidence"])
        writer.writerows(rows)
        atomic_write_bytes(root / "confidence.csv", buf.getvalue().encode())
    return root / "data.yaml"


def load_yolo(folder: str | os.PathLike, sizes: Mapping[str, tuple[int, int]]) -> Annotations:
    """Read a label folder written by :func:`save_yolo` (or any Ultralytics labels with a ``data.yaml``),
    in pixels of ``sizes`` (image key, as :func:`~musseltools.corrections.formats.base.image_key` gives,
    -> ``(width, height)``)."""
    import yaml

    root = Path(folder)
    try:
        names = yaml.safe_load((root / "data.yaml").read_text())["names"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise FormatError(f"{str(root)!r} has no readable data.yaml with names ({exc}) — expected a YOLO folder") from None
    names = names if isinstance(names, dict) else dict(enumerate(names))
    labels = [str(names[k]) for k in sorted(names, key=int)]
    images = []
    for f in sorted((root / "labels").rglob("*.txt")):
        key = f.relative_to(root / "labels").with_suffix("").as_posix()
        w, h = sizes.get(key, (None, None))
        b = ImageBuilder(str(f), key, w, h, labels)
        for n, line in enumerate(f.read_text().splitlines(), 1):
            vals = [float(v) for v in line.split()]
            if not vals:
                continue
            if w is None or h is None:
                raise FormatError(f"{f}: image {key!r} has no known size — give its size")
            c = vals[1:]
            if len(c) == 4:
                poly = box_corners((c[0] - c[2] / 2) * w, (c[1] - c[3] / 2) * h, (c[0] + c[2] / 2) * w,
                                   (c[1] + c[3] / 2) * h)
            else:
                poly = np.asarray(c, np.float64).reshape(-1, 2) * [w, h]
            b.add(labels[int(vals[0])], poly, f"line {n}")
        images.append(b.build())
    return Annotations(str(root), "yolo", labels, [with_labels(im, labels) for im in images], scores=False)
