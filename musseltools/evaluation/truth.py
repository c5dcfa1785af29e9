"""Ground truth: Ultralytics label folders, COCO JSON, CVAT XML, Label Studio JSON and CSVs of counts, read
into one :class:`Truth` (CVAT and Label Studio through :mod:`musseltools.corrections.formats`).

Researchers annotate or hand-count a subset of a survey. :func:`load_truth` reads what they made;
:mod:`musseltools.evaluation.linking` pairs its entries with a run's images.

Examples
--------
>>> from musseltools.evaluation import load_truth                           # doctest: +SKIP
>>> load_truth("data/demo/labels"), load_truth("data/demo/counts.csv")      # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import pandas as pd

from ..errors import MusselToolsError

__all__ = ["TruthError", "Truth", "load_truth"]

log = logging.getLogger(__name__)

_IMAGE_COLUMNS = ("image", "path", "file", "filename", "file_name")


class TruthError(MusselToolsError, ValueError):
    """Ground truth (labels, COCO JSON or a counts CSV) could not be read or does not fit the run."""


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
    def from_annotations(cls, path: str | os.PathLike, format: str = "auto") -> Truth:
        """Read a CVAT XML or Label Studio JSON export (or COCO) through
        :func:`musseltools.corrections.formats.load_annotations`: boxes in pixels, a rotated box's four
        ``corners`` kept, a polygon as its enclosing box."""
        from ..corrections.formats import FormatError, load_annotations
        from ..corrections.formats.base import shape_of

        try:
            ann = load_annotations(path, format)
        except FormatError as exc:
            raise TruthError(str(exc)) from None
        rows, images = [], []
        for im in ann.images:
            key = _key(im.name)
            images.append((key, im.name, im.width if im.width else np.nan, im.height if im.height else np.nan))
            d = im.detections
            for i in range(len(d)):
                poly = d.polygons[i]
                corners = np.asarray(poly, np.float64) if shape_of(poly) == "rotated" else None
                rows.append((key, int(d.class_id[i]), d.names[int(d.class_id[i])], *map(float, d.xyxy[i]), corners))
        img = pd.DataFrame(images, columns=["key", "file", "width", "height"])
        _check_unique(img, str(path))
        obj = pd.DataFrame(rows, columns=["key", "class_id", "class_name", "x1", "y1", "x2", "y2", "corners"])
        obj["normalized"] = False
        obj = obj[["key", "class_id", "class_name", "x1", "y1", "x2", "y2", "normalized", "corners"]]
        return cls(str(path), ann.format, img, obj, None, dict(enumerate(ann.labels)))

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
    format: Literal["auto", "yolo", "coco", "cvat", "labelstudio", "counts"] = "auto",
    names: Mapping[int, str] | Sequence[str] | None = None,
) -> Truth:
    """Load ground truth: an Ultralytics label folder, a COCO JSON file, a CVAT XML or Label Studio JSON
    export, or a CSV of counts.

    Parameters
    ----------
    path : path or Truth
        A folder (Ultralytics labels, or a dataset root with ``labels/``), a ``.json`` (COCO, or a Label
        Studio export: told from its content), an ``.xml`` (CVAT for images 1.1) or a ``.csv`` (counts
        per image and class). A :class:`Truth` is returned as it is.
    format : {"auto", "yolo", "coco", "cvat", "labelstudio", "counts"}
        Chosen from the path when ``"auto"``.
    names : mapping or list, optional
        Class names of label ids (Ultralytics labels only).

    Raises
    ------
    TruthError
        The path does not exist or cannot be read as the format; the message names the file.

    Examples
    --------
    >>> from musseltools.evaluation import load_truth                          # doctest: +SKIP
    >>> load_truth("data/demo/labels"), load_truth("data/demo/counts.csv")     # doctest: +SKIP
    """
    if isinstance(path, Truth):
        return path.with_names(names) if names is not None else path
    p = Path(path).expanduser()
    if format == "auto":
        if p.is_dir():
            format = "yolo"
        elif p.suffix.lower() == ".json":
            from ..corrections.formats import detect_format

            format = "labelstudio" if detect_format(p) == "labelstudio" else "coco"
        elif p.suffix.lower() == ".xml":
            format = "cvat"
        elif p.suffix.lower() in (".csv", ".tsv", ".txt"):
            format = "counts"
        elif not p.exists():
            raise TruthError(f"truth {str(path)!r} does not exist — expected a label folder, a COCO .json or a "
                             "counts .csv — check the path")
        else:
            raise TruthError(f"cannot tell the format of truth {str(path)!r} — expected a label folder, a COCO or "
                             "Label Studio .json, a CVAT .xml or a counts .csv; pass format='yolo'|'coco'|'cvat'|"
                             "'labelstudio'|'counts'")
    if format == "yolo":
        return Truth.from_yolo(p, names)
    if format == "coco":
        return Truth.from_coco(p)
    if format in ("cvat", "labelstudio"):
        return Truth.from_annotations(p, format)
    if format == "counts":
        return Truth.from_counts(p)
    raise TruthError(f"unknown truth format {format!r} — expected one of 'auto', 'yolo', 'coco', 'cvat', "
                     "'labelstudio', 'counts'")

