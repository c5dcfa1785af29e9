"""Evaluation against hand counts and annotations, and threshold calibration.

Researchers annotate or hand-count a subset of a survey and want to know how wrong the detector is
and which confidence threshold makes the totals right. :func:`evaluate` links a :class:`Truth`
(Ultralytics label folders, COCO JSON, or a CSV of counts) to a run's images and computes, per class:

- detection metrics (boxes only): TP/FP/FN by greedy IoU matching, precision, recall, F1, AP50 and
  AP50-95, computed the way Ultralytics' ``val()`` computes them (rotated-box IoU for OBB models);
- count metrics: per-image MAE, RMSE and bias, and the relative error of the total;
- calibration: the threshold that minimises count error, next to the F1-optimal one;
- survey totals with bootstrap confidence intervals, and ratio-corrected totals.

Every metric is a step function of the threshold that changes only at detection confidences. The
detections of each class are sorted by confidence once and every metric is accumulated along that
order, so the value at any threshold (and the exact optimum over all thresholds) is a binary search,
never a re-filtering of the detections.

This module is callable: ``mt.evaluate(run, truth)`` is :func:`evaluate` (the package attribute
``musseltools.evaluate`` is this module, so ``mt.evaluate.plot_pr`` works as well).

Examples
--------
>>> import musseltools as mt                                                  # doctest: +SKIP
>>> run = mt.run("data/demo/images", model="data/models/mussel-demo.pt")      # doctest: +SKIP
>>> ev = mt.evaluate(run, "data/demo/labels")                                 # doctest: +SKIP
>>> ev.metrics                                                                # doctest: +SKIP
>>> ev.calibration                                                            # doctest: +SKIP
>>> run.save_thresholds(ev.best_thresholds(per="model"))                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .errors import MusselToolsError, ThresholdError

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from matplotlib.figure import Figure

    from .runs import Run

__all__ = [
    "TruthError",
    "Truth",
    "load_truth",
    "Evaluation",
    "evaluate",
    "evaluate_detections",
    "box_iou",
    "polygon_iou",
    "match_detections",
    "average_precision",
    "plot_pr",
    "plot_count_error",
    "plot_pred_vs_true",
    "register_cli",
]

log = logging.getLogger(__name__)

#: IoU thresholds of AP50-95 (0.50, 0.55, ..., 0.95), as in COCO and Ultralytics.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
#: Recall points of the 101-point interpolated AP (COCO).
_AP_RECALL = np.linspace(0.0, 1.0, 101)
_EPS = 1e-9  # same tolerance as musseltools.views: confidence >= threshold - _EPS counts
_IMAGE_COLUMNS = ("image", "path", "file", "filename", "file_name")
Objective = Literal["mae", "total_bias"]
OBJECTIVES = ("mae", "total_bias")


class TruthError(MusselToolsError, ValueError):
    """Ground truth (labels, COCO JSON or a counts CSV) could not be read or does not fit the run."""


# =============================================================================================== truth
@dataclass
class Truth:
    """Ground truth for some images: boxes (from labels or COCO) or counts only (from a CSV).

    Build one with :func:`load_truth` (or :meth:`from_yolo`, :meth:`from_coco`, :meth:`from_counts`).

    Attributes
    ----------
    source : str
        Where it was read from.
    format : str
        ``"yolo"``, ``"coco"`` or ``"counts"``.
    images : pandas.DataFrame
        One row per annotated image: ``key`` (relative path without suffix, ``/``-separated), ``file``
        (the label file or the name given in the source), ``width``, ``height`` (pixels, when the
        source gives them).
    objects : pandas.DataFrame or None
        Boxes (``None`` for count-only truth): ``key, class_id, class_name, x1, y1, x2, y2,
        normalized, corners`` (normalized coordinates are fractions of the image size, converted to
        pixels with the run's image sizes). Segment polygons are kept as their enclosing boxes, as
        Ultralytics does for its box metrics; OBB labels also keep their four ``corners`` (4 x 2), used
        for rotated-box IoU when the run's model is an OBB model.
    counts : pandas.DataFrame or None
        Count-only truth: ``key`` and one integer column per class.

    Examples
    --------
    >>> t = Truth.from_records({"a.jpg": {"live": 3, "dead": 1}})
    >>> t.format, t.has_boxes, t.count_table().loc["a", "live"]
    ('counts', False, np.int64(3))
    """

    source: str
    format: str
    images: pd.DataFrame
    objects: pd.DataFrame | None = None
    counts: pd.DataFrame | None = None
    names: dict[int, str] | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        what = f"{len(self.objects)} objects" if self.objects is not None else "counts only"
        return f"<Truth {self.format} from {self.source!r}: {len(self.images)} images, {what}>"

    @property
    def has_boxes(self) -> bool:
        """Whether the truth has boxes (detection metrics possible) or only counts."""
        return self.objects is not None

    @property
    def classes(self) -> list[str]:
        """Class names present in the truth, in class-id order (labels without names: ``"0"``, ``"1"``...)."""
        if self.counts is not None:
            return [c for c in self.counts.columns if c != "key"]
        obj = self.objects.dropna(subset=["class_name"]).sort_values(["class_id", "class_name"], kind="stable")
        return list(dict.fromkeys(obj["class_name"].astype(str)))

    def with_names(self, names: Mapping[int, str] | Sequence[str]) -> Truth:
        """The same truth with class ids named (for label folders without a ``data.yaml``)."""
        if self.objects is None:
            return self
        names = _names_dict(names)
        obj = self.objects.copy()
        obj["class_name"] = obj["class_id"].map(lambda i: names.get(int(i), str(int(i))) if pd.notna(i) else None)
        return Truth(self.source, self.format, self.images, obj, None, names)

    def count_table(self) -> pd.DataFrame:
        """True counts: one row per image (indexed by ``key``), one integer column per class."""
        if self.counts is not None:
            return self.counts.set_index("key").astype("int64")
        obj = self.objects
        table = pd.crosstab(obj["key"], obj["class_name"].astype(str)) if len(obj) else pd.DataFrame()
        table = table.reindex(index=self.images["key"], columns=self.classes, fill_value=0)
        table.index.name = "key"
        table.columns.name = None
        return table.fillna(0).astype("int64")

    # ------------------------------------------------------------------ readers
    @classmethod
    def from_yolo(cls, folder: str | os.PathLike, names: Mapping[int, str] | Sequence[str] | None = None) -> Truth:
        """Read an Ultralytics label folder (``*.txt``, searched recursively).

        Each line is ``cls cx cy w h`` (detect), ``cls x1 y1 ... x4 y4`` (OBB) or ``cls x1 y1 ... xn yn``
        (segment), normalized to [0, 1]. An empty file is an image with no objects. Class names come from
        ``names``, else from a ``data.yaml`` next to the folder, else the run's model names are used.
        """
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise TruthError(f"label folder {str(folder)!r} does not exist — expected a folder of Ultralytics "
                             ".txt labels — check the path")
        if (root / "labels").is_dir():  # a dataset root: images/ and labels/
            root = root / "labels"
        files = sorted(p for p in root.rglob("*.txt") if p.name not in ("classes.txt",))
        if not files:
            raise TruthError(f"label folder {str(root)!r} has no .txt label files — expected Ultralytics labels "
                             "(one 'class cx cy w h' line per object) — check the folder")
        if names is None:
            names = _yaml_names(root)
        rows: list[tuple] = []
        images = []
        for f in files:
            key = PurePosixPath(*f.relative_to(root).with_suffix("").parts).as_posix()
            images.append((key, str(f)))
            try:
                text = f.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise TruthError(f"cannot read label file {str(f)!r}: {exc} — expected a text file of "
                                 "Ultralytics labels") from exc
            for ln, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    vals = [float(v) for v in line.split()]
                except ValueError:
                    raise TruthError(f"label file {str(f)!r} line {ln}: {line.strip()[:60]!r} is not numbers — "
                                     "expected 'class cx cy w h' or 'class x1 y1 x2 y2 ...' (normalized)") from None
                k = len(vals) - 1
                if k < 4 or k % 2 or vals[0] != int(vals[0]) or vals[0] < 0:
                    raise TruthError(
                        f"label file {str(f)!r} line {ln} has a class and {k} coordinates — expected an integer "
                        "class and 4 (cx cy w h), 8 (OBB corners) or an even number >= 6 (a segment polygon)"
                    )
                c = vals[1:]
                if k == 4:
                    cx, cy, w, h = c
                    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                else:
                    xs, ys = c[0::2], c[1::2]
                    box = (min(xs), min(ys), max(xs), max(ys))
                if not all(math.isfinite(v) for v in box) or box[2] < box[0] or box[3] < box[1]:
                    raise TruthError(f"label file {str(f)!r} line {ln} has an invalid box {box} — expected "
                                     "finite normalized coordinates with positive width and height")
                corners = np.asarray(c, np.float64).reshape(4, 2) if k == 8 else None
                rows.append((key, int(vals[0]), *box, corners))
        obj = pd.DataFrame(rows, columns=["key", "class_id", "x1", "y1", "x2", "y2", "corners"])
        obj["class_name"] = None
        obj["normalized"] = True
        img = pd.DataFrame(images, columns=["key", "file"])
        img["width"] = np.nan
        img["height"] = np.nan
        _check_unique(img, str(root))
        t = cls(str(folder), "yolo", img,
                obj[["key", "class_id", "class_name", "x1", "y1", "x2", "y2", "normalized", "corners"]])
        return t.with_names(names) if names is not None else t

    @classmethod
    def from_coco(cls, path: str | os.PathLike) -> Truth:
        """Read a COCO detection JSON (``images``, ``annotations`` with ``bbox = [x, y, w, h]`` in pixels,
        ``categories``). Crowd annotations (``iscrowd: 1``) are ignored, as COCO evaluation ignores them."""
        p = Path(path).expanduser()
        try:
            doc = json.loads(p.read_text())
        except FileNotFoundError:
            raise TruthError(f"COCO file {str(path)!r} does not exist — check the path") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TruthError(f"cannot read COCO file {str(path)!r}: {exc} — expected a COCO detection JSON") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(
                doc.get("annotations"), list):
            raise TruthError(f"COCO file {str(path)!r} has no 'images' and 'annotations' lists — expected a COCO "
                             "detection JSON")
        try:
            cats = {int(c["id"]): str(c["name"]) for c in doc.get("categories", [])}
            by_id: dict[int, str] = {}
            images = []
            for im in doc["images"]:
                name = str(im["file_name"])
                key = PurePosixPath(name.replace("\\", "/")).with_suffix("").as_posix()
                by_id[int(im["id"])] = key
                images.append((key, name, im.get("width", np.nan), im.get("height", np.nan)))
            rows = []
            crowd = 0
            for a in doc["annotations"]:
                if a.get("iscrowd", 0):
                    crowd += 1
                    continue
                iid = int(a["image_id"])
                if iid not in by_id:
                    raise TruthError(f"COCO file {str(path)!r}: annotation {a.get('id')} refers to image id {iid}, "
                                     "which is not in 'images' — fix the file")
                x, y, w, h = (float(v) for v in a["bbox"])
                cid = int(a["category_id"])
                rows.append((by_id[iid], cid, cats.get(cid, str(cid)), x, y, x + w, y + h))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, TruthError):
                raise
            raise TruthError(f"COCO file {str(path)!r} is malformed ({type(exc).__name__}: {exc}) — expected "
                             "images[{id, file_name}], annotations[{image_id, category_id, bbox}], "
                             "categories[{id, name}]") from exc
        if crowd:
            log.info("COCO truth %s: %d crowd annotations ignored", path, crowd)
        img = pd.DataFrame(images, columns=["key", "file", "width", "height"])
        _check_unique(img, str(path))
        obj = pd.DataFrame(rows, columns=["key", "class_id", "class_name", "x1", "y1", "x2", "y2"])
        obj["normalized"] = False
        return cls(str(path), "coco", img, obj, None, cats or None)

    @classmethod
    def from_counts(cls, path: str | os.PathLike) -> Truth:
        """Read a CSV of manual counts: a column ``image`` (a file name or relative path) and one
        non-negative integer column per class, e.g. ``image,live,dead``."""
        p = Path(path).expanduser()
        try:
            df = pd.read_csv(p, dtype={c: str for c in _IMAGE_COLUMNS})
        except FileNotFoundError:
            raise TruthError(f"counts file {str(path)!r} does not exist — check the path") from None
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise TruthError(f"cannot read counts file {str(path)!r}: {exc} — expected a CSV with a column "
                             "'image' and one count column per class") from exc
        return cls._from_count_frame(df, str(path))

    @classmethod
    def from_records(cls, counts: Mapping[str, Mapping[str, int]], source: str = "<records>") -> Truth:
        """Count-only truth from ``{image name or relative path: {class: count}}``."""
        df = pd.DataFrame([{"image": k, **v} for k, v in counts.items()])
        return cls._from_count_frame(df, source)

    @classmethod
    def _from_count_frame(cls, df: pd.DataFrame, source: str) -> Truth:
        col = next((c for c in df.columns if str(c).strip().lower() in _IMAGE_COLUMNS), None)
        if col is None:
            raise TruthError(f"counts {source!r} has no image column (columns: {list(df.columns)}) — expected a "
                             "column named 'image' with file names, and one count column per class")
        classes = [c for c in df.columns if c != col]
        if not classes:
            raise TruthError(f"counts {source!r} has no class columns — expected e.g. 'image,live,dead'")
        out = pd.DataFrame({"key": [_key(str(v)) for v in df[col]]})
        for c in classes:
            vals = pd.to_numeric(df[c], errors="coerce")
            bad = vals.isna() | (vals < 0) | (vals % 1 != 0)
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise TruthError(f"counts {source!r} row {i + 2}, column {c!r}: {df[c].iloc[i]!r} is not a count — "
                                 "expected a non-negative integer in every cell")
            out[str(c)] = vals.astype("int64").to_numpy()
        img = pd.DataFrame({"key": out["key"], "file": df[col].astype(str).to_numpy(), "width": np.nan,
                            "height": np.nan})
        _check_unique(img, source)
        return cls(source, "counts", img, None, out)


def _key(name: str) -> str:
    """Match key of an image or label name: relative path, ``/``-separated, without suffix."""
    p = PurePosixPath(name.replace("\\", "/"))
    return p.with_suffix("").as_posix() if p.suffix else p.as_posix()


def _check_unique(img: pd.DataFrame, source: str) -> None:
    dup = img["key"][img["key"].duplicated()]
    if len(dup):
        raise TruthError(f"truth {source!r} lists image {dup.iloc[0]!r} more than once — expected one entry per "
                         "image — merge the duplicates")


def _names_dict(names: Mapping[int, str] | Sequence[str]) -> dict[int, str]:
    if isinstance(names, Mapping):
        return {int(k): str(v) for k, v in names.items()}
    return {i: str(v) for i, v in enumerate(names)}


def _yaml_names(label_root: Path) -> dict[int, str] | None:
    """Class names from a ``data.yaml`` in or above a label folder (two levels)."""
    import yaml

    for d in (label_root, label_root.parent, label_root.parent.parent):
        for y in sorted(d.glob("*.yaml")):
            try:
                doc = yaml.safe_load(y.read_text())
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(doc, dict) and doc.get("names"):
                log.debug("class names of %s from %s", label_root, y)
                return _names_dict(doc["names"])
    return None


def load_truth(
    path: str | os.PathLike | Truth,
    *,
    format: Literal["auto", "yolo", "coco", "counts"] = "auto",
    names: Mapping[int, str] | Sequence[str] | None = None,
) -> Truth:
    """Load ground truth: an Ultralytics label folder, a COCO JSON file, or a CSV of counts.

    Parameters
    ----------
    path : path or Truth
        A folder (Ultralytics labels, or a dataset root with ``labels/``), a ``.json`` (COCO) or a
        ``.csv`` (counts per image and class). A :class:`Truth` is returned as it is.
    format : {"auto", "yolo", "coco", "counts"}
        Chosen from the path when ``"auto"``.
    names : mapping or list, optional
        Class names of label ids (Ultralytics labels only).

    Raises
    ------
    TruthError
        The path does not exist or cannot be read as the format; the message names the file.

    Examples
    --------
    >>> import musseltools.evaluate as E                                         # doctest: +SKIP
    >>> E.load_truth("data/demo/labels"), E.load_truth("data/demo/counts.csv")   # doctest: +SKIP
    """
    if isinstance(path, Truth):
        return path.with_names(names) if names is not None else path
    p = Path(path).expanduser()
    if format == "auto":
        if p.is_dir():
            format = "yolo"
        elif p.suffix.lower() == ".json":
            format = "coco"
        elif p.suffix.lower() in (".csv", ".tsv", ".txt"):
            format = "counts"
        elif not p.exists():
            raise TruthError(f"truth {str(path)!r} does not exist — expected a label folder, a COCO .json or a "
                             "counts .csv — check the path")
        else:
            raise TruthError(f"cannot tell the format of truth {str(path)!r} — expected a label folder, a COCO "
                             ".json or a counts .csv; pass format='yolo'|'coco'|'counts'")
    if format == "yolo":
        return Truth.from_yolo(p, names)
    if format == "coco":
        return Truth.from_coco(p)
    if format == "counts":
        return Truth.from_counts(p)
    raise TruthError(f"unknown truth format {format!r} — expected one of 'auto', 'yolo', 'coco', 'counts'")


# ============================================================================================ matching
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (M, 4) with every box in ``b`` (N, 4), xyxy; shape (M, N).

    Examples
    --------
    >>> box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 5], [20, 20, 30, 30]])).round(3).tolist()
    [[0.5, 0.0]]
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-7)


def polygon_iou(a: Sequence[np.ndarray], b: Sequence[np.ndarray], *, min_iou: float = 0.0) -> np.ndarray:
    """IoU of convex polygons (e.g. rotated boxes as 4 corners): every one of ``a`` with every one of
    ``b``, shape (len(a), len(b)). Only pairs whose enclosing boxes overlap are intersected, and with
    ``min_iou``, only pairs that could reach it (the others are left 0).

    The intersection is clipped polygon by polygon (Sutherland-Hodgman), which stays exact for nearly
    identical polygons, where OpenCV's ``intersectConvexConvex`` can return 0.

    Examples
    --------
    >>> sq = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    >>> diamond = np.array([[5, -5], [15, 5], [5, 15], [-5, 5]], float)   # the square turned 45 degrees
    >>> polygon_iou([sq], [sq + [5, 0], diamond]).round(4).tolist()
    [[0.3333, 0.5]]
    """
    pa = [_ccw(np.asarray(p, np.float64).reshape(-1, 2)) for p in a]
    pb = [_ccw(np.asarray(p, np.float64).reshape(-1, 2)) for p in b]
    out = np.zeros((len(pa), len(pb)))
    if not pa or not pb:
        return out
    box = lambda ps: np.array([[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()] for p in ps])  # noqa: E731
    ba, bb = box(pa), box(pb)
    area_a = np.array([_area(p) for p in pa])
    area_b = np.array([_area(p) for p in pb])
    iw = np.minimum(ba[:, None, 2], bb[None, :, 2]) - np.maximum(ba[:, None, 0], bb[None, :, 0])
    ih = np.minimum(ba[:, None, 3], bb[None, :, 3]) - np.maximum(ba[:, None, 1], bb[None, :, 1])
    overlap = (iw > 0) & (ih > 0)
    if min_iou > 0:  # the polygons' intersection is at most their enclosing boxes' intersection
        bound = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        bound = np.minimum(bound, np.minimum(area_a[:, None], area_b[None, :]))
        overlap &= bound / (area_a[:, None] + area_b[None, :] - bound + 1e-7) >= min_iou - 1e-9
    la, lb = [p.tolist() for p in pa], [p.tolist() for p in pb]
    for i, j in zip(*np.nonzero(overlap)):
        inter = _area(np.array(_clip(la[i], lb[j]))) if len(la[i]) > 2 and len(lb[j]) > 2 else 0.0
        out[i, j] = inter / (area_a[i] + area_b[j] - inter + 1e-7)
    return out


def _area(p: np.ndarray) -> float:
    """Area of a simple polygon (shoelace)."""
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def _ccw(p: np.ndarray) -> np.ndarray:
    """The polygon with its corners in counter-clockwise order (y up)."""
    if len(p) < 3:
        return p
    x, y = p[:, 0], p[:, 1]
    return p if np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)) >= 0 else p[::-1]


def _clip(subject: list, clip: list) -> list:
    """Sutherland-Hodgman: the part of convex polygon ``subject`` inside convex CCW polygon ``clip``."""
    out = subject
    n = len(clip)
    for k in range(n):
        if not out:
            break
        (cx1, cy1), (cx2, cy2) = clip[k], clip[(k + 1) % n]
        ex, ey = cx2 - cx1, cy2 - cy1
        side = [ex * (py - cy1) - ey * (px - cx1) for px, py in out]  # >= 0: inside (left of the edge)
        nxt = []
        for m in range(len(out)):
            p, q = out[m], out[(m + 1) % len(out)]
            sp, sq = side[m], side[(m + 1) % len(out)]
            if sp >= 0:
                nxt.append(p)
            if (sp >= 0) != (sq >= 0):
                f = sp / (sp - sq)
                nxt.append([p[0] + f * (q[0] - p[0]), p[1] + f * (q[1] - p[1])])
        out = nxt
    return out


def match_detections(
    pred_xyxy: np.ndarray,
    confidence: np.ndarray,
    true_xyxy: np.ndarray,
    iou_thresholds: Sequence[float] = (0.5,),
    *,
    iou: np.ndarray | None = None,
) -> np.ndarray:
    """Which predictions of one class in one image are true positives, at each IoU threshold.

    Greedy by confidence (COCO, Ultralytics): predictions are taken from the most to the least
    confident; each takes the unclaimed truth box it overlaps most, and is a true positive when that
    IoU reaches the threshold. A truth box is claimed once. ``iou`` (truth x predictions, in the
    order given) replaces the axis-aligned box IoU, e.g. with :func:`polygon_iou` of rotated boxes.

    Returns
    -------
    numpy.ndarray of bool, shape (N, T)
        In the order of the predictions given.

    Examples
    --------
    >>> truth = np.array([[0, 0, 10, 10]])
    >>> pred = np.array([[0, 0, 10, 10], [0, 0, 10, 9]])
    >>> match_detections(pred, np.array([0.6, 0.9]), truth)[:, 0].tolist()   # the 0.9 one claims it
    [False, True]
    """
    thr = np.asarray(iou_thresholds, np.float64)
    n = len(confidence)
    correct = np.zeros((n, len(thr)), bool)
    if n == 0 or len(true_xyxy) == 0:
        return correct
    order = np.argsort(-np.asarray(confidence, np.float64), kind="stable")
    if iou is None:
        iou = box_iou(true_xyxy, np.asarray(pred_xyxy))
    iou = np.asarray(iou)[:, order]  # (M truth, N predictions by confidence)
    claimed = np.zeros((iou.shape[0], len(thr)), bool)
    cols = np.arange(len(thr))
    hits = np.zeros((n, len(thr)), bool)
    for j in np.flatnonzero((iou >= thr.min()).any(0)):
        free = np.where(claimed, -1.0, iou[:, j, None])  # (M, T): IoU with each unclaimed truth box
        best = free.argmax(0)
        ok = free[best, cols] >= thr
        hits[j] = ok
        claimed[best[ok], cols[ok]] = True
    correct[order] = hits
    return correct


def average_precision(tp: np.ndarray, confidence: np.ndarray, n_true: int) -> np.ndarray:
    """Average precision per IoU column of ``tp`` (N, T), 101-point interpolated, as Ultralytics computes it.

    The precision envelope (running maximum from high recall down) is sampled at 101 recall points
    0, 0.01, ..., 1 and integrated with the trapezoidal rule, with sentinels (recall 0, precision 1)
    at the start and precision 0 after the last recall, as in ``ultralytics.utils.metrics.compute_ap``.
    NaN when there is no truth; 0 when there are no predictions. (A perfect detector scores 0.995,
    not 1: the trapezoid between recall 1.0 and the precision-0 sentinel, as in Ultralytics.)

    Examples
    --------
    >>> float(average_precision(np.array([[True], [True]]), np.array([0.9, 0.8]), 2)[0])   # perfect
    0.995
    >>> round(float(average_precision(np.array([[True], [False]]), np.array([0.9, 0.8]), 2)[0]), 4)
    0.495
    """
    tp = np.asarray(tp, bool)
    tp = tp[:, None] if tp.ndim == 1 else tp
    if n_true == 0:
        return np.full(tp.shape[1], np.nan)
    if len(confidence) == 0:
        return np.zeros(tp.shape[1])
    order = np.argsort(-np.asarray(confidence, np.float64), kind="stable")
    tpc = np.cumsum(tp[order], 0)
    fpc = np.cumsum(~tp[order], 0)
    recall = tpc / (n_true + 1e-16)
    precision = tpc / (tpc + fpc)
    return np.array([_ap(recall[:, j], precision[:, j]) for j in range(tp.shape[1])])


def _ap(recall: np.ndarray, precision: np.ndarray) -> float:
    r = np.concatenate(([0.0], recall, [recall[-1]], [1.0]))
    p = np.concatenate(([1.0], precision, [0.0], [0.0]))
    envelope = np.maximum.accumulate(p[::-1])[::-1]
    return float(np.trapezoid(np.interp(_AP_RECALL, r, envelope), _AP_RECALL))


# ======================================================================================= class curves
@dataclass
class _ClassCurve:
    """One class's metrics accumulated along its detections sorted by decreasing confidence.

    Index ``m`` (0..K) means "the ``m`` most confident detections are kept"; every array has K + 1
    entries, entry 0 being "nothing kept".
    """

    name: str
    conf: np.ndarray  # (K,) decreasing
    n_true: int  # truth objects (or summed true counts) on validated images
    n_images: int
    tp: np.ndarray | None  # (K+1,) cumulative true positives at the evaluation IoU (None: counts only)
    abs_err: np.ndarray  # (K+1,) sum over images of |predicted - true|
    sq_err: np.ndarray  # (K+1,) sum of squares
    err: np.ndarray  # (K+1,) sum of (predicted - true)
    ap: np.ndarray  # (10,) AP at IoU 0.5..0.95 (NaN when counts only or no truth)

    def index(self, threshold: float | np.ndarray) -> np.ndarray:
        """Number of detections kept at a threshold (confidence >= threshold)."""
        return np.searchsorted(-self.conf, -np.asarray(threshold, np.float64) + _EPS, side="right")

    def stats(self, m: np.ndarray | int) -> dict[str, np.ndarray]:
        m = np.asarray(m)
        n = max(self.n_images, 1)
        pred_total = m.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {
                "count_mae": self.abs_err[m] / n if self.n_images else np.full(m.shape, np.nan),
                "count_rmse": np.sqrt(self.sq_err[m] / n) if self.n_images else np.full(m.shape, np.nan),
                "count_bias": self.err[m] / n if self.n_images else np.full(m.shape, np.nan),
                "total_rel_error": (pred_total - self.n_true) / self.n_true if self.n_true else
                np.full(m.shape, np.nan),
                "predicted_total": pred_total,
                "true_total": np.full(m.shape, float(self.n_true)),
            }
            if self.tp is not None:
                tp = self.tp[m].astype(np.float64)
                fp = pred_total - tp
                fn = self.n_true - tp
                out.update(
                    tp=tp, fp=fp, fn=fn,
                    precision=np.where(pred_total > 0, tp / np.maximum(pred_total, 1), np.nan),
                    recall=np.where(self.n_true > 0, tp / max(self.n_true, 1), np.nan),
                    f1=np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan),
                )
            else:
                nan = np.full(m.shape, np.nan)
                out.update(tp=nan, fp=nan, fn=nan, precision=nan, recall=nan, f1=nan)
        return out

    def candidates(self, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """Every distinct outcome as (detections kept ``m``, a threshold that keeps exactly them).

        Thresholds lie midway between neighbouring distinct confidences, so that rounding of stored
        confidences cannot flip a detection across them; "keep all" is the floor. ``m`` is recomputed
        from the threshold, so a reported optimum is exactly what applying its threshold gives.
        """
        c = self.conf
        if len(c) == 0:
            return np.array([0]), np.array([floor])
        last = np.flatnonzero(np.r_[c[1:] != c[:-1], True])  # last index of each run of equal confidences
        kept = c[last]  # confidence of the last detection kept, per candidate m = last + 1
        dropped = np.r_[c[last[:-1] + 1], np.nan]  # confidence of the first detection dropped
        t = np.r_[(1.0 + c[0]) / 2, (kept + dropped) / 2]
        t[-1] = floor
        if c[0] >= 1.0:  # nothing can drop a detection of confidence 1
            t = t[1:]
        return self.index(t), t


def _accumulate_counts(image_index: np.ndarray, true_counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sums over images of |e|, e**2 and e, e = predicted - true, after keeping each next detection.

    ``image_index`` gives the image of each detection, in decreasing confidence. Keeping one more
    detection in image i raises e_i by one: |e_i| grows by one when e_i >= 0 before (else shrinks), and
    e_i**2 grows by 2 e_i + 1; e_i before is (detections of i already kept) - true_i.
    """
    k = len(image_index)
    e0 = -true_counts.astype(np.float64)
    if k == 0:
        z = np.zeros(1)
        return z + np.abs(e0).sum(), z + (e0**2).sum(), z + e0.sum()
    order = np.argsort(image_index, kind="stable")
    rank = np.empty(k, np.int64)
    sorted_img = image_index[order]
    starts = np.r_[0, np.flatnonzero(sorted_img[1:] != sorted_img[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, k]))
    rank[order] = np.arange(k) - run_start  # detections of the same image kept before this one
    e_before = rank + e0[image_index]
    d_abs = np.where(e_before >= 0, 1.0, -1.0)
    d_sq = 2 * e_before + 1
    cum = lambda d, start: np.r_[start, start + np.cumsum(d)]  # noqa: E731
    return cum(d_abs, np.abs(e0).sum()), cum(d_sq, (e0**2).sum()), cum(np.ones(k), e0.sum())


# ========================================================================================= evaluation
class Evaluation:
    """A run's detections against ground truth. Build with :func:`evaluate`.

    Attributes
    ----------
    metrics : pandas.DataFrame
        One row per class at the threshold: ``class, threshold, tp, fp, fn, precision, recall, f1,
        ap50, ap50_95, count_mae, count_rmse, count_bias, total_rel_error, predicted_total,
        true_total, images``.
    curves : pandas.DataFrame
        The same metrics for every class and every threshold of a grid (floor, 0.01 ... 0.99).
    per_image : pandas.DataFrame
        ``image_id, path, key, class, true, predicted`` at the threshold, validated images only.
    calibration : pandas.DataFrame
        ``class, best_threshold_count, best_threshold_f1, objective`` and the metrics at each.
    unmatched_images : list of str
        Paths of run images without truth (or that failed), not evaluated.
    unmatched_labels : list of str
        Truth entries (files or names) that match no image of the run.
    """

    def __init__(
        self,
        *,
        run_id: str,
        classes: list[str],
        curves: dict[str, _ClassCurve],
        threshold: float | dict[str, float],
        iou: float,
        conf_floor: float,
        objective: str,
        iou_type: str = "box",
        truth: Truth,
        validated: pd.DataFrame,
        true_counts: pd.DataFrame,
        detections: pd.DataFrame,
        survey: pd.DataFrame,
        unmatched_images: list[str],
        unmatched_labels: list[str],
        failed_images: list[str],
        class_of_name: dict[str, str],
    ) -> None:
        self.run_id = run_id
        self.classes = classes
        self._curves = curves
        self.threshold = threshold
        self.iou = iou
        self.iou_type = iou_type
        self.conf_floor = conf_floor
        self.objective = objective
        self.truth = truth
        self._validated = validated  # image_id, path, key (validated images, in order)
        self._true_counts = true_counts  # index image_id, one column per class (validated, evaluated classes)
        self._detections = detections  # image_id, class (category), confidence: every stored detection
        self._survey = survey  # image_id, path: every image of the run with a result
        self.unmatched_images = unmatched_images
        self.unmatched_labels = unmatched_labels
        self.failed_images = failed_images
        self._class_of_name = class_of_name
        self._cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (f"<Evaluation of run {self.run_id} against {self.truth.format} truth: {len(self._validated)} images, "
                f"classes {self.classes}, threshold {self.threshold}, iou {self.iou}>")

    @property
    def has_boxes(self) -> bool:
        """Whether detection metrics (P, R, F1, AP) are available (truth with boxes)."""
        return self.truth.has_boxes

    # ------------------------------------------------------------------ thresholds
    def class_thresholds(self, threshold: float | Mapping[str, float] | None = None) -> dict[str, float]:
        """One threshold per evaluated class from a number, or a mapping by class or model class name
        (a class left out of a mapping keeps every stored detection, as in the run's counts)."""
        threshold = self.threshold if threshold is None else threshold
        if isinstance(threshold, Mapping):
            out = {}
            for c in self.classes:
                if c in threshold:
                    out[c] = float(threshold[c])
                    continue
                members = {float(v) for k, v in threshold.items() if self._class_of_name.get(k) == c}
                if len(members) > 1:
                    raise ThresholdError(f"model classes of {c!r} have different thresholds {sorted(members)} — "
                                         "evaluation needs one threshold per category — give the category's "
                                         "threshold by its name")
                # a class left out keeps every stored detection, as in the run's own counts (musseltools.views)
                out[c] = members.pop() if members else self.conf_floor
            unknown = sorted(set(threshold) - set(self.classes) - set(self._class_of_name))
            if unknown:
                raise ThresholdError(f"thresholds given for unknown classes {unknown} — the classes are {self.classes}")
        else:
            out = dict.fromkeys(self.classes, float(threshold))
        for c, t in out.items():
            if math.isnan(t) or t > 1 or t < self.conf_floor - _EPS:
                raise ThresholdError(f"threshold {t} for {c!r} is outside [{self.conf_floor}, 1] — the run stored "
                                     f"detections down to {self.conf_floor} — use a threshold in that range")
        return out

    def run_thresholds(self, thresholds: Mapping[str, float]) -> dict[str, float]:
        """Per-category thresholds as the per-model-class mapping ``Run.save_thresholds`` takes."""
        return {name: float(thresholds[cat]) for name, cat in self._class_of_name.items() if cat in thresholds}

    # ------------------------------------------------------------------ fast queries
    def at(self, thresholds: float | Mapping[str, float] | None = None) -> dict[str, dict[str, float]]:
        """Metrics per class at thresholds, instantly (a binary search per class).

        Returns ``{class: {"precision", "recall", "f1", "count_mae", "count_rmse", "count_bias",
        "total_rel_error", "tp", "fp", "fn", "predicted_total", "true_total"}}`` (NaN where undefined:
        detection metrics without boxes). Fast enough for a slider.

        Examples
        --------
        >>> ev.at({"live": 0.4, "dead": 0.6})["live"]["f1"]                        # doctest: +SKIP
        """
        th = self.class_thresholds(thresholds)
        out = {}
        for c in self.classes:
            cur = self._curves[c]
            s = cur.stats(cur.index(th[c]))
            out[c] = {k: float(v) for k, v in s.items()}
        return out

    # ------------------------------------------------------------------ tables
    @property
    def metrics(self) -> pd.DataFrame:
        """One row per class at the evaluation's threshold."""
        if "metrics" not in self._cache:
            th = self.class_thresholds()
            rows = []
            for c in self.classes:
                cur = self._curves[c]
                s = {k: float(v) for k, v in cur.stats(cur.index(th[c])).items()}
                rows.append({
                    "class": c, "threshold": th[c], "tp": s["tp"], "fp": s["fp"], "fn": s["fn"],
                    "precision": s["precision"], "recall": s["recall"], "f1": s["f1"],
                    "ap50": float(cur.ap[0]), "ap50_95": float(np.mean(cur.ap)),
                    "count_mae": s["count_mae"], "count_rmse": s["count_rmse"], "count_bias": s["count_bias"],
                    "total_rel_error": s["total_rel_error"], "predicted_total": s["predicted_total"],
                    "true_total": s["true_total"], "images": cur.n_images,
                })
            df = pd.DataFrame(rows)
            for col in ("tp", "fp", "fn"):
                df[col] = df[col].astype("Int64") if self.has_boxes else df[col]
            self._cache["metrics"] = df
        return self._cache["metrics"].copy()

    def thresholds_grid(self) -> np.ndarray:
        """Thresholds of :attr:`curves`: the floor, every 0.01 up to 0.99, and the evaluated ones."""
        from .views import threshold_grid

        extra = list(self.class_thresholds().values())
        return threshold_grid(self.conf_floor, extra)

    @property
    def curves(self) -> pd.DataFrame:
        """Metrics of every class at every threshold of :meth:`thresholds_grid` (tidy, long format)."""
        if "curves" not in self._cache:
            grid = self.thresholds_grid()
            frames = []
            for c in self.classes:
                cur = self._curves[c]
                s = cur.stats(cur.index(grid))
                frames.append(pd.DataFrame({"class": c, "threshold": grid, **s}))
            cols = ["class", "threshold", "tp", "fp", "fn", "precision", "recall", "f1", "count_mae", "count_rmse",
                    "count_bias", "total_rel_error", "predicted_total", "true_total"]
            self._cache["curves"] = pd.concat(frames, ignore_index=True)[cols]
        return self._cache["curves"].copy()

    def predicted_counts(self, threshold: float | Mapping[str, float] | None = None, *,
                         images: str = "validated") -> pd.DataFrame:
        """Predicted counts per image (rows: ``image_id``) and class at a threshold.

        ``images="validated"`` (images with truth) or ``"survey"`` (every image of the run with a result).
        """
        th = self.class_thresholds(threshold)
        ids = (self._validated if images == "validated" else self._survey)["image_id"]
        d = self._detections
        keep = d["confidence"].to_numpy(np.float64) >= d["class"].map(th).to_numpy(np.float64) - _EPS
        kept = d[keep]
        table = pd.crosstab(kept["image_id"], kept["class"]) if len(kept) else pd.DataFrame()
        table = table.reindex(index=ids.to_numpy(), columns=self.classes, fill_value=0).fillna(0).astype("int64")
        table.index.name = "image_id"
        table.columns.name = None
        return table

    @property
    def per_image(self) -> pd.DataFrame:
        """True and predicted counts per validated image and class at the threshold (long format)."""
        if "per_image" not in self._cache:
            pred = self.predicted_counts()
            rows = []
            v = self._validated.set_index("image_id")
            for c in self.classes:
                rows.append(pd.DataFrame({
                    "image_id": pred.index, "path": v.loc[pred.index, "path"].to_numpy(),
                    "key": v.loc[pred.index, "key"].to_numpy(), "class": c,
                    "true": self._true_counts.loc[pred.index, c].to_numpy(), "predicted": pred[c].to_numpy(),
                }))
            df = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
                columns=["image_id", "path", "key", "class", "true", "predicted"])
            df["error"] = df["predicted"] - df["true"]
            self._cache["per_image"] = df
        return self._cache["per_image"].copy()

    # ------------------------------------------------------------------ calibration
    def calibrate(self, objective: Objective | None = None) -> pd.DataFrame:
        """Per-class thresholds minimising count error, next to the F1-optimal ones. Exact: every
        distinct outcome (each confidence at which a count changes) is tried.

        ``objective="mae"`` minimises the mean absolute per-image count error; ``"total_bias"`` the
        absolute error of the validated total. Ties go to the middle of the tied candidates.
        """
        objective = objective or self.objective
        if objective not in OBJECTIVES:
            raise ValueError(f"objective {objective!r} is not one of {OBJECTIVES}")
        rows = []
        for c in self.classes:
            cur = self._curves[c]
            m, t = cur.candidates(self.conf_floor)
            s = cur.stats(m)
            row: dict[str, Any] = {"class": c, "objective": objective}
            if cur.n_images == 0:
                row.update(best_threshold_count=np.nan, best_threshold_f1=np.nan)
                rows.append(row)
                continue
            score = s["count_mae"] if objective == "mae" else np.abs(s["predicted_total"] - s["true_total"])
            i = _middle_argmin(score)
            row.update(best_threshold_count=float(t[i]), count_mae_at_best=float(s["count_mae"][i]),
                       count_bias_at_best=float(s["count_bias"][i]),
                       total_rel_error_at_best=float(s["total_rel_error"][i]))
            if cur.tp is not None and cur.n_true > 0 and np.nanmax(s["f1"], initial=0) > 0:
                j = _middle_argmin(-np.nan_to_num(s["f1"], nan=-1.0))
                row.update(best_threshold_f1=float(t[j]), f1_at_best=float(s["f1"][j]),
                           count_mae_at_best_f1=float(s["count_mae"][j]))
            else:
                row.update(best_threshold_f1=np.nan)
            rows.append(row)
        cols = ["class", "best_threshold_count", "best_threshold_f1", "objective"]
        df = pd.DataFrame(rows)
        return df[cols + [c for c in df.columns if c not in cols]]

    @property
    def calibration(self) -> pd.DataFrame:
        """:meth:`calibrate` with the evaluation's objective."""
        if "calibration" not in self._cache:
            self._cache["calibration"] = self.calibrate()
        return self._cache["calibration"].copy()

    def best_thresholds(self, by: Literal["count", "f1"] = "count", *, per: Literal["class", "model"] = "class"
                        ) -> dict[str, float]:
        """Calibrated thresholds ``{class: threshold}`` (``per="model"``: keyed by model class name, for
        ``Run.save_thresholds``). Classes that cannot be calibrated are left out."""
        cal = self.calibration.set_index("class")[f"best_threshold_{by}"]
        best = {c: float(v) for c, v in cal.items() if pd.notna(v)}
        return self.run_thresholds(best) if per == "model" else best

    # ------------------------------------------------------------------ totals
    def survey_totals(
        self,
        threshold: float | Mapping[str, float] | None = None,
        *,
        n_boot: int = 2000,
        ci: float = 0.95,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Survey totals per class with bootstrap confidence intervals, and ratio-corrected totals.

        Totals are over every image of the run with a result. Their interval comes from resampling
        images with replacement (``n_boot`` times, ``seed``). When some images have truth, the
        ratio estimator ``sum(true) / sum(predicted)`` on those images times the survey's predicted
        total gives a corrected total, its interval from resampling the validated images. A row
        ``class="live_fraction"`` gives the fraction live/(live+dead) when both classes exist.

        Returns
        -------
        pandas.DataFrame
            ``class, predicted_total, ci_low, ci_high, validated_images, validated_true,
            validated_predicted, ratio, corrected_total, corrected_ci_low, corrected_ci_high``.

        Examples
        --------
        >>> ev.survey_totals(n_boot=1000, seed=1)                                   # doctest: +SKIP
        """
        if not 0 < ci < 1:
            raise ValueError(f"ci must lie in (0, 1), got {ci}")
        rng = np.random.default_rng(seed)
        q = ((1 - ci) / 2, 1 - (1 - ci) / 2)
        survey = self.predicted_counts(threshold, images="survey")
        pred_v = self.predicted_counts(threshold)
        true_v = self._true_counts.loc[pred_v.index, self.classes]
        S = survey.to_numpy(np.float64)  # (N, C)
        P, T = pred_v.to_numpy(np.float64), true_v.to_numpy(np.float64)
        boot_s = _bootstrap_sums(S, n_boot, rng)  # (B, C)
        boot_p, boot_t = (_bootstrap_sums(np.hstack([P, T]), n_boot, rng).reshape(n_boot, 2, -1).transpose(1, 0, 2)
                          if len(P) else (np.full((n_boot, len(self.classes)), np.nan),) * 2)
        total = S.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = T.sum(0) / P.sum(0) if len(P) else np.full(len(self.classes), np.nan)
            boot_ratio = boot_t / boot_p
            corrected = ratio * total
            boot_corr = boot_ratio * total
        rows = []
        for k, c in enumerate(self.classes):
            lo, hi = np.quantile(boot_s[:, k], q) if len(S) else (np.nan, np.nan)
            bc = boot_corr[:, k]
            bc = bc[np.isfinite(bc)]
            clo, chi = np.quantile(bc, q) if len(bc) and np.isfinite(corrected[k]) else (np.nan, np.nan)
            rows.append({"class": c, "predicted_total": float(total[k]), "ci_low": float(lo), "ci_high": float(hi),
                         "validated_images": len(P), "validated_true": float(T[:, k].sum()) if len(T) else np.nan,
                         "validated_predicted": float(P[:, k].sum()) if len(P) else np.nan, "ratio": float(ratio[k]),
                         "corrected_total": float(corrected[k]), "corrected_ci_low": float(clo),
                         "corrected_ci_high": float(chi)})
        if "live" in self.classes and "dead" in self.classes:
            li, di = self.classes.index("live"), self.classes.index("dead")
            with np.errstate(invalid="ignore", divide="ignore"):
                frac = total[li] / (total[li] + total[di])
                bf = boot_s[:, li] / (boot_s[:, li] + boot_s[:, di])
                cfrac = corrected[li] / (corrected[li] + corrected[di])
                bcf = boot_corr[:, li] / (boot_corr[:, li] + boot_corr[:, di])
            bf, bcf = bf[np.isfinite(bf)], bcf[np.isfinite(bcf)]
            lo, hi = np.quantile(bf, q) if len(bf) else (np.nan, np.nan)
            clo, chi = np.quantile(bcf, q) if len(bcf) and np.isfinite(cfrac) else (np.nan, np.nan)
            rows.append({"class": "live_fraction", "predicted_total": float(frac), "ci_low": float(lo),
                         "ci_high": float(hi), "validated_images": len(P), "validated_true": np.nan,
                         "validated_predicted": np.nan, "ratio": np.nan, "corrected_total": float(cfrac),
                         "corrected_ci_low": float(clo), "corrected_ci_high": float(chi)})
        return pd.DataFrame(rows)

    @property
    def totals(self) -> pd.DataFrame:
        """:meth:`survey_totals` at the evaluation's threshold (2000 resamples, seed 0)."""
        if "totals" not in self._cache:
            self._cache["totals"] = self.survey_totals()
        return self._cache["totals"].copy()

    # ------------------------------------------------------------------ exports
    def to_xarray(self):
        """Metrics over thresholds as an ``xarray.Dataset`` (dims ``class``, ``threshold``), with the
        predicted counts of validated images (``predicted[image, class, threshold]``) and true counts."""
        import xarray as xr

        grid = self.thresholds_grid()
        cur = self.curves
        data = {}
        for var in ("tp", "fp", "fn", "precision", "recall", "f1", "count_mae", "count_rmse", "count_bias",
                    "total_rel_error", "predicted_total", "true_total"):
            arr = cur.pivot(index="class", columns="threshold", values=var).reindex(index=self.classes, columns=grid)
            data[var] = (("class", "threshold"), arr.to_numpy(np.float64))
        ids = self._validated["image_id"].to_numpy()
        pred = np.zeros((len(ids), len(self.classes), len(grid)), np.int64)
        d = self._detections[self._detections["image_id"].isin(set(ids))]
        if len(d):
            ii = d["image_id"].map({v: i for i, v in enumerate(ids)}).to_numpy()
            cc = d["class"].map({c: i for i, c in enumerate(self.classes)}).to_numpy()
            b = np.searchsorted(grid - _EPS, d["confidence"].to_numpy(np.float64), side="right") - 1
            ok = b >= 0
            np.add.at(pred, (ii[ok], cc[ok].astype(int), b[ok]), 1)
            pred = np.flip(np.cumsum(np.flip(pred, 2), 2), 2)
        data["predicted"] = (("image", "class", "threshold"), pred)
        data["true"] = (("image", "class"), self._true_counts.loc[ids, self.classes].to_numpy(np.int64))
        m = self.metrics.set_index("class")
        data["ap50"] = (("class",), m.loc[self.classes, "ap50"].to_numpy(np.float64))
        data["ap50_95"] = (("class",), m.loc[self.classes, "ap50_95"].to_numpy(np.float64))
        return xr.Dataset(
            data,
            coords={"class": np.array(self.classes, object), "threshold": grid, "image": ids.astype(object),
                    "path": ("image", self._validated["path"].astype(str).to_numpy(object))},
            attrs={"run_id": self.run_id, "iou": self.iou, "iou_type": self.iou_type, "truth": self.truth.source,
                   "truth_format": self.truth.format, "threshold": json.dumps(self.threshold),
                   "conf_floor": self.conf_floor},
        )

    def summary(self) -> dict[str, Any]:
        """The JSON document of ``musseltools evaluate --json`` (NaN as ``None``).

        ``{"threshold", "classes": {class: {"precision", "recall", "f1", "ap50", "ap50_95", "count_mae",
        "count_bias", "best_threshold_count", "best_threshold_f1"}}}``, and beside them ``run_id, truth,
        truth_format, iou, objective, images_evaluated, unmatched_images, unmatched_labels, failed_images``
        and ``survey_totals`` (:attr:`totals` by class).
        """
        m = self.metrics.set_index("class")
        cal = self.calibration.set_index("class")
        classes = {}
        for c in self.classes:
            classes[c] = {
                "precision": m.at[c, "precision"], "recall": m.at[c, "recall"], "f1": m.at[c, "f1"],
                "ap50": m.at[c, "ap50"], "ap50_95": m.at[c, "ap50_95"], "count_mae": m.at[c, "count_mae"],
                "count_bias": m.at[c, "count_bias"], "best_threshold_count": cal.at[c, "best_threshold_count"],
                "best_threshold_f1": cal.at[c, "best_threshold_f1"],
            }
        doc = {
            "threshold": self.threshold,
            "classes": classes,
            "run_id": self.run_id,
            "truth": self.truth.source,
            "truth_format": self.truth.format,
            "iou": self.iou,
            "iou_type": self.iou_type,
            "objective": self.objective,
            "images_evaluated": len(self._validated),
            "unmatched_images": list(self.unmatched_images),
            "unmatched_labels": list(self.unmatched_labels),
            "failed_images": list(self.failed_images),
            "survey_totals": {row.pop("class"): row for row in self.totals.to_dict(orient="records")},
        }
        return _jsonable(doc)


def _middle_argmin(score: np.ndarray) -> int:
    best = np.nanmin(score)
    idx = np.flatnonzero(np.isclose(score, best, rtol=0, atol=1e-12))
    return int(idx[len(idx) // 2])


def _bootstrap_sums(x: np.ndarray, n_boot: int, rng: np.random.Generator, chunk: int = 256) -> np.ndarray:
    """Column sums of ``n_boot`` resamples (with replacement) of the rows of ``x``: (n_boot, columns)."""
    n = len(x)
    out = np.full((n_boot, x.shape[1]), np.nan)
    if n == 0:
        return out
    for s in range(0, n_boot, chunk):
        b = min(chunk, n_boot - s)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)  # times each row is drawn
        out[s:s + b] = w @ x
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if obj is pd.NA or obj is None:
        return None
    return obj


# ============================================================================================ evaluate
def evaluate(
    run: Run | Any,
    truth: str | os.PathLike | Truth,
    *,
    iou: float = 0.5,
    threshold: float | Mapping[str, float] | None = None,
    objective: Objective = "mae",
    names: Mapping[int, str] | Sequence[str] | None = None,
    unlabelled: Literal["skip", "empty"] = "skip",
    iou_type: Literal["auto", "box", "obb"] = "auto",
    store: Any = None,
) -> Evaluation:
    """Evaluate a run against ground truth.

    Parameters
    ----------
    run : Run, RunHandle or run id
        The run (a run id is opened in ``store``).
    truth : path or Truth
        An Ultralytics label folder, a COCO JSON, a counts CSV (see :func:`load_truth`), or a Truth.
    iou : float
        IoU at which a detection matches a truth box (TP/FP/FN, precision, recall, F1).
    threshold : float or mapping, optional
        Confidence threshold(s) of the metrics at a threshold; the run's thresholds by default.
    objective : {"mae", "total_bias"}
        What calibration minimises: the per-image count MAE, or the absolute error of the total.
    names : mapping or list, optional
        Class names of label ids; by default from a ``data.yaml`` by the labels, else the model's.
    unlabelled : {"skip", "empty"}
        Images of the run without truth: not evaluated (a validated subset; default), or taken as
        having no objects (Ultralytics' convention for missing label files).
    iou_type : {"auto", "box", "obb"}
        How boxes overlap: axis-aligned boxes, or rotated boxes (OBB label corners against an OBB
        model's corners, intersected exactly). ``"auto"``: rotated for an OBB model with OBB labels.
        (Ultralytics' OBB ``val()`` uses ProbIoU, a smooth stand-in for the rotated IoU.)
    store : optional
        The store of ``run`` when it is a run id.

    Returns
    -------
    Evaluation

    Raises
    ------
    TruthError
        The truth cannot be read, or shares no class or no image with the run.

    Examples
    --------
    >>> import musseltools as mt                                                     # doctest: +SKIP
    >>> ev = mt.evaluate(run, "data/demo/counts.csv")                                # doctest: +SKIP
    >>> ev.calibration                                                               # doctest: +SKIP
    """
    from .runs import Run

    if isinstance(run, str):
        run = Run(store, run)
    elif not isinstance(run, Run) and hasattr(run, "run"):  # RunHandle
        run = run.run
    if not 0 < iou <= 1:
        raise ValueError(f"iou must lie in (0, 1], got {iou!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {OBJECTIVES}")
    if unlabelled not in ("skip", "empty"):
        raise ValueError(f"unlabelled {unlabelled!r} is not one of ('skip', 'empty')")
    meta = run.meta
    table = run.per_image(run.conf_floor)
    threshold = run.thresholds if threshold is None else threshold
    return evaluate_detections(
        table, run.detections(run.conf_floor), truth, class_names=run.class_names, class_map=run.class_map,
        conf_floor=run.conf_floor, threshold=threshold, iou=iou, objective=objective, names=names,
        unlabelled=unlabelled, root=(meta.get("collection", {}).get("source") or {}).get("root"), run_id=run.run_id,
        task=meta["model"].get("task"), iou_type=iou_type,
    )


def evaluate_detections(
    images: pd.DataFrame,
    detections: pd.DataFrame,
    truth: str | os.PathLike | Truth,
    *,
    class_names: Sequence[str],
    class_map: Mapping[str, str] | None = None,
    conf_floor: float = 0.0,
    threshold: float | Mapping[str, float] = 0.5,
    iou: float = 0.5,
    objective: Objective = "mae",
    names: Mapping[int, str] | Sequence[str] | None = None,
    unlabelled: Literal["skip", "empty"] = "skip",
    root: str | None = None,
    run_id: str = "",
    task: str | None = None,
    iou_type: Literal["auto", "box", "obb"] = "auto",
) -> Evaluation:
    """Evaluate detections given as tables (what :func:`evaluate` does with a run's stored results).

    Parameters
    ----------
    images : pandas.DataFrame
        ``image_id, path, width, height`` and optionally ``error`` (images with an error are not
        evaluated) and ``processed_at`` (images without it have no result).
    detections : pandas.DataFrame
        ``image_id, class_name, confidence, x1, y1, x2, y2`` (pixels), every detection down to
        ``conf_floor``.
    truth : path or Truth
    class_names : list of str
        The model's class names, in id order (names label ids without a ``data.yaml``).
    class_map : mapping, optional
        Model class name -> category; metrics are per category.
    root : str, optional
        Folder the image paths are relative to, for linking truth by relative path.
    task : str, optional
        The model's task (``detect``, ``segment``, ``obb``); with ``iou_type="auto"``, OBB models with
        OBB labels are matched by rotated-box IoU (``detections`` then needs a ``polygon`` column).

    Other parameters are those of :func:`evaluate`.

    Examples
    --------
    >>> imgs = pd.DataFrame({"image_id": ["a"], "path": ["/x/a.jpg"], "width": [100], "height": [100]})
    >>> dets = pd.DataFrame({"image_id": ["a", "a"], "class_name": ["live", "live"], "confidence": [0.9, 0.3],
    ...                      "x1": [0, 50], "y1": [0, 50], "x2": [10, 60], "y2": [10, 60]})
    >>> ev = evaluate_detections(imgs, dets, Truth.from_records({"a.jpg": {"live": 1}}), class_names=["live"])
    >>> ev.at(0.5)["live"]["count_mae"], ev.at(0.2)["live"]["count_mae"]
    (0.0, 1.0)
    """
    if not 0 < iou <= 1:
        raise ValueError(f"iou must lie in (0, 1], got {iou!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {OBJECTIVES}")
    if unlabelled not in ("skip", "empty"):
        raise ValueError(f"unlabelled {unlabelled!r} is not one of ('skip', 'empty')")
    if iou_type not in ("auto", "box", "obb"):
        raise ValueError(f"iou_type {iou_type!r} is not one of ('auto', 'box', 'obb')")
    truth = load_truth(truth, names=names)
    class_names = [str(n) for n in class_names]
    if truth.has_boxes and truth.objects["class_name"].isna().any():
        log.info("truth %s has no class names; using the model's %s", truth.source, class_names)
        truth = truth.with_names(class_names)
    class_map = dict(class_map or {})
    class_of_name = {n: class_map.get(n, n) for n in class_names}
    classes = list(dict.fromkeys(class_of_name.values()))
    run_label = f"run {run_id}" if run_id else "the detections"

    # ---- images with a result, and their detections
    table = images.reset_index(drop=True)
    failed_mask = pd.Series(False, index=table.index)
    if "error" in table:
        failed_mask |= table["error"].notna()
    if "processed_at" in table:
        failed_mask |= table["processed_at"].isna()
    failed = table.loc[failed_mask, "path"].astype(str).tolist()
    ok = table.loc[~failed_mask, ["image_id", "path", "width", "height"]].reset_index(drop=True)
    dets = pd.DataFrame({
        "image_id": detections["image_id"].to_numpy(),
        "class": detections["class_name"].astype(str).map(class_of_name).to_numpy(),
        "confidence": detections["confidence"].to_numpy(np.float64),
        "x1": detections["x1"].to_numpy(np.float64), "y1": detections["y1"].to_numpy(np.float64),
        "x2": detections["x2"].to_numpy(np.float64), "y2": detections["y2"].to_numpy(np.float64),
    })
    if "polygon" in detections:
        dets["polygon"] = detections["polygon"].to_numpy()
    dets = dets[dets["image_id"].isin(set(ok["image_id"])) & dets["class"].notna()].reset_index(drop=True)

    # ---- link truth to images
    links, unmatched_images, unmatched_labels = _link(ok, root, truth, table.loc[failed_mask])
    if failed:
        log.warning("%d images of %s have no result (failed or not processed) and are not evaluated: %s",
                    len(failed), run_label, _preview(failed))
    validated = ok.merge(links, on="image_id", how="inner")
    if unlabelled == "empty" and unmatched_images:
        extra = ok[ok["path"].isin(set(unmatched_images))].assign(key=None)
        validated = pd.concat([validated, extra], ignore_index=True)
        unmatched_images = []
    if unmatched_labels:
        log.warning("%d truth entries of %s match no image of %s: %s", len(unmatched_labels), truth.source,
                    run_label, _preview(unmatched_labels))
    if unmatched_images:
        log.info("%d images of %s have no truth and are not evaluated: %s", len(unmatched_images), run_label,
                 _preview(unmatched_images))
    if validated.empty:
        raise TruthError(
            f"no image of {run_label} matches the truth {truth.source!r} ({len(truth.images)} entries, e.g. "
            f"{_preview(truth.images['key'].tolist())}) — expected label names like the image names (relative "
            f"path or file stem), e.g. {_preview(ok['path'].map(lambda p: Path(p).stem).tolist())}"
        )

    # ---- truth classes -> evaluated classes
    tclasses = truth.classes
    mapped = {t: class_of_name.get(t, t) for t in tclasses}
    unknown = sorted(t for t, c in mapped.items() if c not in classes)
    if unknown:
        log.warning("truth classes %s of %s are not classes of the run (%s); they are ignored", unknown,
                    truth.source, classes)
    if not any(c in classes for c in mapped.values()):
        raise TruthError(f"truth {truth.source!r} has classes {tclasses}, none of which is a class of "
                         f"{run_label} ({classes}) — name the truth classes like the model's (pass names=...)")
    # annotated boxes are exhaustive: a class no box has is a class with no object; count columns are not
    present = set(classes) if truth.has_boxes else set(mapped.values())
    missing = [c for c in classes if c not in present]
    if missing:
        log.warning("run classes %s have no truth in %s; their metrics are NaN", missing, truth.source)

    tc = truth.count_table()
    true_counts = pd.DataFrame(0, index=validated["image_id"].to_numpy(), columns=classes, dtype="int64")
    keys = validated["key"].to_numpy()
    has_key = pd.notna(keys)
    for t, c in mapped.items():
        if c in classes:
            vals = tc[t].reindex(keys[has_key]).fillna(0).to_numpy(np.int64)
            true_counts.loc[validated["image_id"].to_numpy()[has_key], c] += vals
    true_counts.index.name = "image_id"

    # ---- truth boxes in pixels
    boxes = None
    if truth.has_boxes:
        obj = truth.objects.copy()
        obj["class"] = obj["class_name"].astype(str).map(mapped)
        obj = obj[obj["class"].isin(classes)]
        obj = obj.merge(validated[["key", "image_id", "width", "height"]], on="key", how="inner")
        norm = obj["normalized"].to_numpy(bool)
        if norm.any():
            w = obj["width"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
            h = obj["height"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
            if np.isnan(w[norm]).any() or np.isnan(h[norm]).any():
                raise TruthError("normalized labels need the image size, which the run does not know for some "
                                 "images — re-run the collection scan so that widths and heights are recorded")
            for col, s in (("x1", w), ("x2", w), ("y1", h), ("y2", h)):
                v = obj[col].to_numpy(np.float64)
                obj[col] = np.where(norm, v * s, v)
            if "corners" in obj:
                obj["corners"] = [c * [wi, hi] if c is not None and n else c
                                  for c, n, wi, hi in zip(obj["corners"], norm, w, h)]
        if (~norm).any():  # pixel boxes (COCO) of images annotated at another size are scaled to the image
            sizes = truth.images.set_index("key")[["width", "height"]].astype("float64")
            tw = obj["key"].map(sizes["width"]).to_numpy(np.float64)
            th = obj["key"].map(sizes["height"]).to_numpy(np.float64)
            rw = obj["width"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
            rh = obj["height"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
            sx = np.where(~norm & (tw > 0) & (rw > 0), rw / tw, 1.0)
            sy = np.where(~norm & (th > 0) & (rh > 0), rh / th, 1.0)
            sx, sy = np.nan_to_num(sx, nan=1.0), np.nan_to_num(sy, nan=1.0)
            if np.any(np.abs(sx - 1) > 1e-9) or np.any(np.abs(sy - 1) > 1e-9):
                log.info("truth %s: boxes of %d images annotated at another size are scaled to the images' size",
                         truth.source, obj.loc[(sx != 1) | (sy != 1), "key"].nunique())
                for col, f in (("x1", sx), ("x2", sx), ("y1", sy), ("y2", sy)):
                    obj[col] = obj[col].to_numpy(np.float64) * f
        boxes = obj[["image_id", "class", "x1", "y1", "x2", "y2"] + (["corners"] if "corners" in obj else [])]
        has_corners = "corners" in boxes and len(boxes) > 0 and boxes["corners"].notna().all()
        if iou_type == "obb" and not (has_corners and "polygon" in dets):
            raise TruthError(f"iou_type='obb' needs OBB labels (4 corners per object) and detections with polygons — "
                             f"{truth.source!r} has {'them' if has_corners else 'none'}; use iou_type='box'")
        if iou_type == "auto":
            iou_type = "obb" if task == "obb" and has_corners and "polygon" in dets else "box"
    else:
        iou_type = "box"

    curves = _build_curves(classes, validated["image_id"].to_numpy(), true_counts, dets, boxes, iou,
                           present=present, rotated=iou_type == "obb")
    ev = Evaluation(
        run_id=run_id, classes=classes, curves=curves, threshold=_plain_threshold(threshold), iou=float(iou),
        iou_type=iou_type,
        conf_floor=conf_floor, objective=objective, truth=truth,
        validated=validated[["image_id", "path", "key"]].reset_index(drop=True), true_counts=true_counts,
        detections=dets[["image_id", "class", "confidence"]], survey=ok[["image_id", "path"]],
        unmatched_images=unmatched_images, unmatched_labels=unmatched_labels, failed_images=failed,
        class_of_name=class_of_name,
    )
    ev.class_thresholds()  # validate the threshold now, with a clear error
    return ev


def _plain_threshold(t: Any) -> float | dict[str, float]:
    if isinstance(t, Mapping):
        return {str(k): float(v) for k, v in t.items()}
    try:
        return float(t)
    except (TypeError, ValueError):
        raise ThresholdError(f"threshold {t!r} is not a number — expected a confidence in [0, 1]") from None


def _preview(items: Sequence[str], n: int = 3) -> str:
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(repr(str(i)) for i in items[:n]) + more


def _link(ok: pd.DataFrame, root: str | None, truth: Truth, failed: pd.DataFrame
          ) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Pair run images with truth entries: by relative path (without suffix), else by file stem.

    A stem shared by several images is resolved by the longest common trailing path; what stays
    ambiguous or unpaired is reported, never guessed.
    """
    def rel_key(p: str) -> str:
        pp = Path(p)
        if root:
            try:
                pp = pp.relative_to(root)
            except ValueError:
                pass
        return PurePosixPath(*pp.with_suffix("").parts).as_posix()

    img_keys = {iid: rel_key(p) for iid, p in zip(ok["image_id"], ok["path"])}
    full_keys = {iid: PurePosixPath(*Path(p).with_suffix("").parts).as_posix() for iid, p in zip(ok["image_id"],
                                                                                              ok["path"])}
    by_key = {k: iid for iid, k in img_keys.items()}
    by_stem: dict[str, list[str]] = {}
    for iid, k in full_keys.items():
        by_stem.setdefault(PurePosixPath(k).name, []).append(iid)
    pairs: dict[str, str] = {}  # image_id -> truth key
    taken: set[str] = set()
    leftovers = []
    for key in truth.images["key"]:
        iid = by_key.get(key)
        if iid is not None and iid not in taken:
            pairs[iid] = key
            taken.add(iid)
        else:
            leftovers.append(key)
    unmatched_labels = []
    for key in leftovers:
        cands = [i for i in by_stem.get(PurePosixPath(key).name, []) if i not in taken]
        if len(cands) > 1:
            parts = PurePosixPath(key).parts
            score = [_common_tail(parts, PurePosixPath(full_keys[i]).parts) for i in cands]
            best = max(score)
            cands = [i for i, s in zip(cands, score) if s == best]
        if len(cands) == 1:
            pairs[cands[0]] = key
            taken.add(cands[0])
        else:
            if len(cands) > 1:
                log.warning("truth entry %r matches %d images equally well; it is not used", key, len(cands))
            unmatched_labels.append(key)
    # truth for images that failed is reported as unmatched with the reason
    failed_stems = {PurePosixPath(Path(p).with_suffix("").as_posix()).name for p in failed["path"].astype(str)}
    file_of = dict(zip(truth.images["key"], truth.images["file"]))
    labels = [file_of.get(k, k) + (" (its image has no result)" if PurePosixPath(k).name in failed_stems else "")
              for k in unmatched_labels]
    unmatched_images = [p for iid, p in zip(ok["image_id"], ok["path"]) if iid not in pairs]
    links = pd.DataFrame({"image_id": list(pairs), "key": list(pairs.values())})
    return links, unmatched_images, labels


def _common_tail(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(reversed(a), reversed(b)):
        if x != y:
            break
        n += 1
    return n


def _build_curves(
    classes: list[str],
    image_ids: np.ndarray,
    true_counts: pd.DataFrame,
    dets: pd.DataFrame,
    boxes: pd.DataFrame | None,
    iou: float,
    present: set[str],
    rotated: bool = False,
) -> dict[str, _ClassCurve]:
    index = {v: i for i, v in enumerate(image_ids)}
    d = dets[dets["image_id"].isin(index)]
    iou_cols = np.unique(np.r_[IOU_THRESHOLDS, iou])
    at = int(np.flatnonzero(np.isclose(iou_cols, iou))[0])
    ap_cols = [int(np.flatnonzero(np.isclose(iou_cols, t))[0]) for t in IOU_THRESHOLDS]
    curves = {}
    for c in classes:
        dc = d[d["class"] == c]
        conf = dc["confidence"].to_numpy(np.float64)
        n_images = len(image_ids) if c in present else 0
        tc = true_counts[c].to_numpy(np.int64) if c in present else np.zeros(len(image_ids), np.int64)
        tp_flags = None
        if boxes is not None and c in present:
            tp_flags = np.zeros((len(dc), len(iou_cols)), bool)
            bc = boxes[boxes["class"] == c]
            truth_by_img = {k: g for k, g in bc.groupby("image_id")}
            pos = np.arange(len(dc))
            for iid, rows in dc.groupby("image_id").indices.items():
                t = truth_by_img.get(iid)
                if t is None:
                    continue
                sub = dc.iloc[rows]
                t_xyxy = t[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
                p_xyxy = sub[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
                m = polygon_iou(list(t["corners"]), [np.asarray(p.tolist() if hasattr(p, "tolist") else p, float)
                                                      for p in sub["polygon"]], min_iou=iou_cols.min()) if rotated else None
                tp_flags[pos[rows]] = match_detections(p_xyxy, sub["confidence"].to_numpy(np.float64), t_xyxy,
                                                       iou_cols, iou=m)
        order = np.argsort(-conf, kind="stable")
        conf_s = conf[order]
        img_s = dc["image_id"].map(index).to_numpy(np.int64)[order]
        abs_e, sq_e, e = _accumulate_counts(img_s, tc)
        n_true = int(tc.sum())
        if tp_flags is not None:
            tp_s = tp_flags[order]
            tp_cum = np.r_[0, np.cumsum(tp_s[:, at])]
            ap = average_precision(tp_s[:, ap_cols], conf_s, n_true)
        else:
            tp_cum = None
            ap = np.full(len(IOU_THRESHOLDS), np.nan)
        if n_images == 0:
            abs_e = sq_e = e = np.full(len(conf_s) + 1, np.nan)
        curves[c] = _ClassCurve(c, conf_s, n_true, n_images, tp_cum, abs_e, sq_e, e, ap)
    return curves


# =============================================================================================== plots
def _chosen(ev: Evaluation, chosen: float | Mapping[str, float] | None) -> dict[str, float]:
    return ev.class_thresholds(chosen)


def plot_pr(ev: Evaluation, *, ax: Any = None) -> Figure:
    """Precision-recall curves per class (AP50 in the legend), the threshold's point marked.

    Examples
    --------
    >>> fig = plot_pr(ev); fig.savefig("pr.png")                                # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5, 4.5))
    th = ev.class_thresholds()
    for c in ev.classes:
        cur = ev._curves[c]
        if cur.tp is None or cur.n_true == 0:
            continue
        s = cur.stats(np.arange(1, len(cur.conf) + 1))
        line, = ax.plot(s["recall"], s["precision"], label=f"{c} (AP50 {cur.ap[0]:.3f})")
        p = cur.stats(cur.index(th[c]))
        ax.plot(p["recall"], p["precision"], "o", color=line.get_color(), markersize=6)
    if not ev.has_boxes:
        ax.text(0.5, 0.5, "no boxes in the truth:\nprecision and recall need boxes", ha="center", va="center",
                transform=ax.transAxes)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
           title=f"Precision-recall at IoU {ev.iou:g} (dots: threshold)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_count_error(ev: Evaluation, chosen: float | Mapping[str, float] | None = None) -> Figure:
    """Per-image count MAE and bias versus threshold, per class, with the chosen threshold (solid),
    the count-calibrated one (dashed) and the F1-optimal one (dotted) marked.

    Examples
    --------
    >>> fig = plot_count_error(ev, chosen=0.5)                                    # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    th = _chosen(ev, chosen)
    cal = ev.calibration.set_index("class")
    n = len(ev.classes)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.8), squeeze=False)
    curves = ev.curves
    for ax, c in zip(axes[0], ev.classes):
        cv = curves[curves["class"] == c]
        ax.plot(cv["threshold"], cv["count_mae"], label="MAE per image")
        ax.plot(cv["threshold"], cv["count_bias"], label="bias per image", alpha=0.8)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.axvline(th[c], color="k", lw=1.2, label=f"chosen {th[c]:.3f}")
        bc = cal.at[c, "best_threshold_count"]
        if pd.notna(bc):
            ax.axvline(bc, color="tab:red", ls="--", lw=1.2, label=f"calibrated ({ev.objective}) {bc:.3f}")
        bf = cal.at[c, "best_threshold_f1"]
        if pd.notna(bf):
            ax.axvline(bf, color="tab:green", ls=":", lw=1.5, label=f"best F1 {bf:.3f}")
        ax.set(title=c, xlabel="confidence threshold", ylabel="count error (detections per image)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_pred_vs_true(ev: Evaluation, threshold: float | Mapping[str, float] | None = None) -> Figure:
    """Predicted versus true counts per image, one panel per class, with the 1:1 line.

    Examples
    --------
    >>> fig = plot_pred_vs_true(ev)                                               # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    th = ev.class_thresholds(threshold)
    pred = ev.predicted_counts(th)
    n = len(ev.classes)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False)
    for ax, c in zip(axes[0], ev.classes):
        t = ev._true_counts.loc[pred.index, c].to_numpy()
        p = pred[c].to_numpy()
        hi = max(1, int(max(t.max(initial=0), p.max(initial=0)) * 1.05) + 1)
        ax.plot([0, hi], [0, hi], color="0.5", lw=1, ls="--", label="1:1")
        ax.scatter(t, p, s=18, alpha=0.75)
        mae = float(np.mean(np.abs(p - t))) if len(t) else float("nan")
        ax.set(title=f"{c} at {th[c]:.3f} (MAE {mae:.2f})", xlabel="true count", ylabel="predicted count",
               xlim=(0, hi), ylim=(0, hi), aspect="equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


# ================================================================================================= CLI
def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``musseltools evaluate RUN_ID TRUTH [--store DIR] [--threshold T] [--json]``."""
    p = sub.add_parser(
        "evaluate", help="metrics of a run against hand counts or labels, and calibrated thresholds",
        description="Compare a run with ground truth (Ultralytics label folder, COCO JSON, or a CSV of counts "
                    "per image and class): precision, recall, F1, AP, count error, and thresholds that "
                    "minimise count error. No inference.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("truth", metavar="TRUTH", help="label folder, COCO .json or counts .csv")
    p.add_argument("--store", metavar="DIR", help="results store (default $MUSSELTOOLS_STORE or ./data/store)")
    p.add_argument("--threshold", type=float, metavar="T", help="confidence threshold (default: the run's)")
    p.add_argument("--iou", type=float, default=0.5, metavar="F", help="IoU of a match (0.5)")
    p.add_argument("--objective", choices=OBJECTIVES, default="mae", help="what calibration minimises (mae)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .runs import Run

    run = Run(args.store, args.run_id)
    ev = evaluate(run, args.truth, iou=args.iou, threshold=args.threshold, objective=args.objective)
    if args.json:
        print(json.dumps(ev.summary(), indent=2, allow_nan=False))
        return 0
    m = ev.metrics.set_index("class")
    cal = ev.calibration.set_index("class")
    table = pd.DataFrame({
        "threshold": m["threshold"], "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
        "ap50": m["ap50"], "ap50_95": m["ap50_95"], "count_mae": m["count_mae"], "count_bias": m["count_bias"],
        "best_t_count": cal["best_threshold_count"], "best_t_f1": cal["best_threshold_f1"],
    })
    print(f"run {ev.run_id} against {ev.truth.format} truth {ev.truth.source}: {len(ev._validated)} images, "
          f"IoU {ev.iou:g}")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    tot = ev.totals.set_index("class")
    print("\nsurvey totals (95% bootstrap intervals over images; corrected: ratio estimator on the validated images)")
    print(pd.DataFrame({
        "predicted": tot["predicted_total"], "ci_low": tot["ci_low"], "ci_high": tot["ci_high"],
        "corrected": tot["corrected_total"], "corr_ci_low": tot["corrected_ci_low"],
        "corr_ci_high": tot["corrected_ci_high"],
    }).to_string(float_format=lambda v: f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"))
    if ev.unmatched_labels:
        print(f"{len(ev.unmatched_labels)} truth entries match no image: {_preview(ev.unmatched_labels)}")
    if ev.unmatched_images:
        print(f"{len(ev.unmatched_images)} images have no truth (not evaluated)")
    if ev.failed_images:
        print(f"{len(ev.failed_images)} images have no result (not evaluated)")
    return 0


class _CallableModule(types.ModuleType):
    """``musseltools.evaluate`` is this module; calling it calls :func:`evaluate`, so that
    ``mt.evaluate(run, truth)`` works whichever of the two the package attribute holds."""

    def __call__(self, run: Run | Any, truth: str | os.PathLike | Truth, **kwargs: Any) -> Evaluation:
        return evaluate(run, truth, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
