"""A run's predictions out to annotation tools, and what people annotated there back in as corrections.

:func:`export_predictions` writes the detections that count at the thresholds in use, corrections
applied, each with its confidence, in a format of :mod:`musseltools.corrections.formats` (``run.export``,
``musseltools export RUN OUT --format ...``). :func:`import_annotations` reads an annotated file (CVAT,
Label Studio, COCO) and turns it into corrections of the run (``run.import_annotations``,
``musseltools corrections import RUN FILE --format ...``): each annotated object is matched to the run's
detection of the same image that overlaps it most (IoU at least ``iou``, one to one, best pairs first);
a matched pair of another class is a ``reclassify``, an object left over an ``add``, a counted detection
left over a ``delete``. Every decision is a row of the returned report; the corrections are checked and
saved together, or none of them.

Examples
--------
>>> run.export("predictions.xml", format="cvat")                                   # doctest: +SKIP
>>> report = run.import_annotations("annotated.xml", format="cvat")                # doctest: +SKIP
>>> report["action"].value_counts()                                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..core.detections import Detections
from ..errors import CorrectionError
from ..results.corrected import resolve_class
from ..results.views import above_threshold
from . import api
from .formats import (
    EXPORT_FORMATS,
    AnnotatedImage,
    Annotations,
    FormatError,
    load_annotations,
    save_annotations,
)
from .formats.base import image_key

if TYPE_CHECKING:  # pragma: no cover
    from .api import CorrectableRun

__all__ = ["export_predictions", "import_annotations", "run_annotations", "annotations_of", "REPORT_COLUMNS"]

#: Columns of the report :func:`import_annotations` returns.
REPORT_COLUMNS = ["image", "element", "action", "detection_id", "class", "to_class", "iou"]


def _polygon(row: Any) -> np.ndarray:
    poly = row.polygon
    if poly is not None and len(poly) >= 3:
        return np.asarray([list(p) for p in poly], np.float64)
    return np.array([[row.x1, row.y1], [row.x2, row.y1], [row.x2, row.y2], [row.x1, row.y2]], np.float64)


def annotations_of(images: pd.DataFrame, boxes: pd.DataFrame, labels: list[str], names: Mapping[str, str], *,
                   source: str, scores: bool) -> Annotations:
    """Annotations from a table of images (``image_id, width, height``) and one of their boxes
    (``image_id, class_name, confidence, x1..y2, polygon``); ``names``: image id -> the name to write."""
    by_image = dict(tuple(boxes.groupby("image_id"))) if len(boxes) else {}
    label_ids = {name: i for i, name in enumerate(labels)}
    out = []
    for row in images.itertuples(index=False):
        mine = by_image.get(row.image_id, boxes.iloc[:0])
        size = (int(row.width), int(row.height))
        conf = mine["confidence"].to_numpy() if "confidence" in mine else np.ones(len(mine))
        dets = Detections(mine[["x1", "y1", "x2", "y2"]].to_numpy(np.float64), np.clip(conf, 0, 1),
                          [label_ids[c] for c in mine["class_name"]], [_polygon(r) for r in mine.itertuples()],
                          dict(enumerate(labels)), size)
        out.append(AnnotatedImage(names[row.image_id], size[0], size[1], dets))
    return Annotations(source, "run", list(labels), out, scores=scores)


def _names(run: CorrectableRun, images: pd.DataFrame) -> dict[str, str]:
    """Image id -> its path relative to the collection folder (``/``-separated), else its path."""
    root = run.meta["collection"]["source"].get("root")
    out = {}
    for iid, path in zip(images["image_id"], images["path"]):
        rel = None
        if root:
            with contextlib.suppress(ValueError):
                rel = Path(str(path)).relative_to(root).as_posix()
        out[iid] = rel or str(path)
    return out


def run_annotations(run: CorrectableRun, threshold: Any | None = None, *, corrected: bool = True) -> Annotations:
    """The run's processed images and the detections that count at ``threshold`` (default: the thresholds
    in use), corrections applied, as :class:`~musseltools.corrections.formats.Annotations`."""
    res = run.results(corrected=corrected)
    images = res.images[res.images["processed_at"].notna() & res.images["error"].isna()]
    dets = above_threshold(res.detections, run.rule(threshold))
    return annotations_of(images, dets, list(run.class_names), _names(run, images), source=f"run {run.run_id}",
                          scores=True)


def export_predictions(run: CorrectableRun, out: str | os.PathLike, *, format: str = "coco",
                       threshold: Any | None = None, url_prefix: str | None = None, corrected: bool = True) -> Path:
    """Write the run's detections at the thresholds in use (corrections applied), each with its confidence,
    as pre-annotations for an annotation tool; returns the file written (``data.yaml`` for yolo).

    Parameters
    ----------
    format : {"coco", "coco-results", "cvat", "labelstudio", "yolo"}
        A COCO dataset JSON, a COCO results list (ids of the COCO dataset of the same run), CVAT for images
        1.1 XML, Label Studio tasks with predictions (and ``OUT.config.xml``), or a YOLO label folder.
    threshold : optional
        Other thresholds than those in use.
    url_prefix : str, optional
        Label Studio: put before each image's relative path (``/data/local-files/?d=survey/``, ``s3://bucket/``).
    corrected : bool
        False: the model's detections alone.
    """
    if format not in EXPORT_FORMATS:
        raise FormatError(f"export format {format!r} is not one of {', '.join(EXPORT_FORMATS)} — choose one")
    if url_prefix is not None and format != "labelstudio":
        raise FormatError(f"url_prefix is for Label Studio's image URLs, not for {format!r} — leave it out")
    return save_annotations(run_annotations(run, threshold, corrected=corrected), out, format, url_prefix=url_prefix)


# ------------------------------------------------------------------------------------------------ import
def _image_index(names: Mapping[str, str], paths: Mapping[str, str]) -> dict[str, str | None]:
    """Every unambiguous way a file may name a run image (path, relative path, their keys and shorter tails,
    file name) -> image id; a name two images share maps to None."""
    index: dict[str, str | None] = {}
    for iid, rel in names.items():
        forms = {rel, paths[iid], image_key(rel), image_key(paths[iid])}
        parts = PurePosixPath(image_key(rel)).parts
        forms |= {"/".join(parts[k:]) for k in range(len(parts))}
        forms.add(PurePosixPath(rel).name)
        for f in forms:
            index[f] = iid if index.get(f, iid) == iid else None
    return index


def _find(index: dict[str, str | None], name: str) -> str | None:
    text = name.replace("\\", "/")
    for cand in (text, image_key(text)):
        parts = PurePosixPath(cand).parts
        for k in range(len(parts)):
            hit = index.get("/".join(parts[k:]))
            if hit:
                return hit
    return None


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _pairs(iou: np.ndarray, floor: float) -> list[tuple[int, int]]:
    """One-to-one pairs (object, detection), the best IoU first, each at least ``floor``."""
    order = np.dstack(np.unravel_index(np.argsort(-iou, axis=None, kind="stable"), iou.shape))[0]
    used_a, used_b, out = set(), set(), []
    for i, j in order:
        if iou[i, j] < floor:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            out.append((int(i), int(j)))
    return out


def _same(name: str, det_class: str, classes: Any) -> bool:
    """Whether a detection of ``det_class`` already is ``name`` (a class, or a category of its class)."""
    return det_class == name if name in classes.names else classes.category(det_class) == name


def _match_image(im: AnnotatedImage, iid: str, dets: pd.DataFrame, classes: Any, label_map: Mapping[str, str],
                 iou: float, source: str) -> tuple[list[dict[str, Any]], list[list[Any]], list[str]]:
    """Corrections, report rows and errors of one annotated image against its counted detections."""
    specs, rows, errors = [], [], []
    d = im.detections
    wanted = []
    for i, label in enumerate(d.class_names):
        name = label_map.get(label, label)
        if resolve_class(name, classes) is None:
            errors.append(f"{source}: {im.elements[i]}: unknown label {label!r} — expected a class of the model "
                          f"{list(classes.names)} or a category {classes.categories}; map it with "
                          f"label_map={{{label!r}: ...}} (--label-map {label}=CLASS)")
        wanted.append(name)
    if errors:
        return specs, rows, errors
    boxes = dets[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
    overlap = _iou(d.xyxy.astype(np.float64), boxes) if len(d) and len(boxes) else np.zeros((len(d), len(boxes)))
    pairs = _pairs(overlap, iou)
    matched_obj = {i for i, _ in pairs}
    matched_det = {j for _, j in pairs}
    for i, j in pairs:
        det = dets.iloc[j]
        same = _same(wanted[i], det["class_name"], classes)
        action = "keep" if same else "reclassify"
        if not same:
            specs.append({"kind": "reclassify", "detection_id": det["detection_id"], "class_name": wanted[i],
                          "note": f"from {Path(source).name}"})
        rows.append([im.name, im.elements[i], action, det["detection_id"], det["class_name"], wanted[i],
                     round(float(overlap[i, j]), 4)])
    for i in sorted(set(range(len(d))) - matched_obj):
        x1, y1, x2, y2 = (float(v) for v in d.xyxy[i])
        if im.width and im.height:
            x1, x2 = max(x1, 0.0), min(x2, float(im.width))
            y1, y2 = max(y1, 0.0), min(y2, float(im.height))
        poly = [[float(x), float(y)] for x, y in d.polygons[i]]
        specs.append({"kind": "add", "image": iid, "box": [x1, y1, x2, y2], "class_name": wanted[i], "polygon": poly,
                      "note": f"from {Path(source).name}"})
        rows.append([im.name, im.elements[i], "add", None, None, wanted[i], None])
    for j in sorted(set(range(len(dets))) - matched_det):
        det = dets.iloc[j]
        specs.append({"kind": "delete", "detection_id": det["detection_id"], "note": f"not in {Path(source).name}"})
        rows.append([im.name, None, "delete", det["detection_id"], det["class_name"], None, None])
    return specs, rows, errors


def import_annotations(run: CorrectableRun, path: str | os.PathLike, *, format: str = "auto", iou: float = 0.5,
                       strict: bool = False, label_map: Mapping[str, str] | None = None,
                       threshold: Any | None = None) -> pd.DataFrame:
    """Turn an annotated file (CVAT, Label Studio or COCO) into corrections of the run, all or none.

    The detections an image's objects are matched with are those that count at ``threshold`` (default:
    the thresholds in use), corrections applied: so a file exported with :func:`export_predictions` and
    imported unchanged changes nothing. Images of the file that are not in the run are listed in the
    report (``action`` ``not in run``), or, with ``strict``, an error.

    Parameters
    ----------
    format : {"auto", "cvat", "labelstudio", "coco"}
    iou : float
        The least IoU of an object and a detection to be the same mussel (0.5).
    strict : bool
        An image of the file that is not in the run is an error.
    label_map : mapping, optional
        The file's label -> a class or category of the run, for labels the run does not know.

    Returns
    -------
    pandas.DataFrame
        One row per decision: ``image, element, action`` (``keep``, ``reclassify``, ``add``, ``delete``,
        ``not in run``), ``detection_id``, ``class`` (the detection's), ``to_class`` (the file's), ``iou``.

    Raises
    ------
    FormatError
        The file cannot be read as the format (file and element named); nothing was saved.
    CorrectionError
        Unknown labels, images not in the run with ``strict``, or corrections the run refuses (each named);
        nothing was saved.
    """
    if not 0 < iou <= 1:
        raise CorrectionError(f"iou {iou!r} is not an overlap — expected a number in (0, 1], e.g. 0.5")
    ann = load_annotations(path, format)
    res = run.results()
    images = res.images[res.images["processed_at"].notna()]
    names = _names(run, images)
    index = _image_index(names, dict(zip(images["image_id"], images["path"].astype(str))))
    counted = above_threshold(res.detections, run.rule(threshold))
    by_image = dict(tuple(counted.groupby("image_id"))) if len(counted) else {}
    specs, rows, errors, labels = [], [], [], []
    for im in ann.images:
        iid = _find(index, im.name)
        if iid is None:
            rows.append([im.name, None, "not in run", None, None, None, None])
            if strict:
                errors.append(f"{ann.source}: image {im.name!r} is not an image of run {run.run_id} — remove it "
                              "from the file, or import without strict to list it and go on")
            continue
        s, r, e = _match_image(im, iid, by_image.get(iid, counted.iloc[:0]), res.classes, label_map or {}, iou,
                               ann.source)
        specs += s
        rows += r
        errors += e
        labels += [f"{ann.source}: image {im.name!r} {spec['kind']} {k + 1}" for k, spec in enumerate(s)]
    if errors:
        raise CorrectionError(f"{len(errors)} problems in {ann.source} — nothing of the file was saved — fix them "
                              "and import again:\n  " + "\n  ".join(errors[:20]))
    if specs:
        api.correct(run, specs, labels=labels)
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)
