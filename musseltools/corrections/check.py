"""New corrections checked against a run before anything is saved: every bad one named, none saved.

Each correction a user gives (by a :class:`~musseltools.runs.run.Run` method, the editor or a CSV import) becomes a
row of the log (:mod:`musseltools.store.corrections_log`) only when it names an image, a detection and a class
of the run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.thresholds import ClassMap
from ..results.corrected import resolve_class
from ..store.corrections_log import KINDS, correction_row

__all__ = ["RunContext", "check_corrections"]


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip())


def _image_index(images: pd.DataFrame, root: str | None) -> dict[str, str]:
    """Every way a correction may name an image (image id, path as in the run, path relative to the
    collection folder) -> image id."""
    index: dict[str, str] = {}
    for iid, path in zip(images["image_id"], images["path"]):
        index.setdefault(str(path), iid)
        if root:
            with contextlib.suppress(ValueError):
                index.setdefault(Path(str(path)).relative_to(root).as_posix(), iid)
    index.update({str(i): i for i in images["image_id"]})
    return index


@dataclass(frozen=True)
class RunContext:
    """What checking a correction needs to know about a run (see :func:`check_corrections`)."""

    run_id: str
    inference_key: str
    classes: ClassMap
    images: pd.DataFrame
    detections: pd.DataFrame
    removed: pd.DataFrame
    thresholds: str
    root: str | None = None
    known_ids: frozenset[str] = frozenset()
    #: turns the thresholds a correction gives (``live=0.35,dead=0.23``, a number, a mapping) into the
    #: stored form (``thresholds``); raises ValueError for thresholds the run cannot answer
    rule: Callable[[Any], str] | None = None


def _four_numbers(spec: Mapping[str, Any], key: str) -> tuple[list[Any], list[float] | None]:
    """``spec[key]`` (or its ``x1, y1, x2, y2``) as given, and as floats (None when they are not numbers)."""
    raw = spec.get(key)
    vals = list(raw) if raw is not None else [spec.get(k) for k in ("x1", "y1", "x2", "y2")]
    try:
        return vals, [float(v) for v in vals]
    except (TypeError, ValueError):
        return vals, None


def _size(width: Any, height: Any) -> tuple[float | None, float | None]:
    return (None if width is None or pd.isna(width) else float(width),
            None if height is None or pd.isna(height) else float(height))


def _outside(xy: list[float], w: float | None, h: float | None) -> bool:
    """Whether the points ``x1, y1, x2, y2`` reach outside an image of ``w`` x ``h`` pixels (None: unknown)."""
    return min(xy) < 0 or (w is not None and max(xy[0], xy[2]) > w) or (h is not None and max(xy[1], xy[3]) > h)


def _box(spec: Mapping[str, Any], width: Any, height: Any) -> tuple[list[float] | None, str | None]:
    vals, box = _four_numbers(spec, "box")
    if box is None:
        return None, f"box {vals} is not four numbers — give x1, y1, x2, y2 in pixels"
    if len(box) != 4 or not all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        return None, f"box {vals} is not a box — expected finite x1 < x2 and y1 < y2 in pixels"
    w, h = _size(width, height)
    if _outside(box, w, h):
        size = f" ({w:g} x {h:g} pixels)" if w and h else ""
        return None, f"box {box} lies outside the image{size} — give pixel coordinates inside it"
    return box, None


def _line(spec: Mapping[str, Any], width: Any, height: Any) -> tuple[list[float] | None, str | None]:
    """The two ends of a length line (``line`` or ``x1, y1, x2, y2``), or what is wrong with them."""
    vals, line = _four_numbers(spec, "line")
    if line is None:
        return None, f"line {vals} is not four numbers — give the length's two ends x1, y1, x2, y2 in pixels"
    if len(line) != 4 or not all(np.isfinite(line)):
        return None, f"line {vals} is not two points — expected four finite numbers x1, y1, x2, y2 in pixels"
    if line[0] == line[2] and line[1] == line[3]:
        return None, (f"line {line} has zero length (its two ends are one point) — drag its ends to the two ends "
                      "of the shell")
    if _outside(line, *_size(width, height)):
        return None, f"line {line} reaches outside the image — give pixel coordinates inside it"
    return line, None


def _check_one(spec: Mapping[str, Any], ctx: RunContext, index: dict[str, str], dets: pd.DataFrame,
               images: pd.DataFrame, known: set[str]) -> dict[str, Any] | str:
    """A correction row from a spec, or what is wrong with it."""
    kind = str(spec.get("kind") or spec.get("action") or "").strip().lower()
    if kind not in KINDS:
        return f"action {kind or None!r} is not one of {', '.join(KINDS)}"
    det_id = None if _blank(spec.get("detection_id")) else str(spec["detection_id"]).strip()
    image = None if _blank(spec.get("image")) else str(spec["image"]).strip()
    image_id = index.get(image) if image is not None else None
    if image is not None and image_id is None:
        return f"image {image!r} is not an image of run {ctx.run_id} — give its path as in the run, or its image id"
    fields: dict[str, Any] = {"note": None if _blank(spec.get("note")) else str(spec["note"]),
                              "author": None if _blank(spec.get("author")) else str(spec["author"]),
                              "created_at": None if _blank(spec.get("created_at")) else spec["created_at"],
                              "correction_id": None if _blank(spec.get("correction_id")) else str(spec["correction_id"]),
                              "run_id": ctx.run_id}
    if kind in ("reclassify", "delete", "length"):
        if det_id is None:
            return f"{kind} needs a detection_id (the detection_id column of run.detections())"
        if det_id not in dets.index:
            return f"detection {det_id!r} is not a detection of run {ctx.run_id} — take ids from run.detections()"
        det_image = dets.at[det_id, "image_id"]
        if image_id is not None and image_id != det_image:
            return f"detection {det_id!r} belongs to image {dets.at[det_id, 'path']!r}, not to {image!r}"
        fields.update(image_id=det_image, path=dets.at[det_id, "path"], detection_id=det_id,
                      inference_key=ctx.inference_key)
        if kind == "reclassify":
            cls = spec.get("class_name", spec.get("class"))
            if resolve_class(cls, ctx.classes) is None:
                return (f"class {cls!r} is neither a class of the model {list(ctx.classes.names)} nor a category "
                        f"{ctx.classes.categories}")
            fields["class_name"] = str(cls)
        if kind == "length":
            size = images.loc[det_image] if det_image in images.index else {}
            line, err = _line(spec, size.get("width"), size.get("height"))
            if err:
                return err
            fields["box"] = line
        return correction_row(kind, **fields)
    if image_id is None:
        return f"{kind} needs an image (its path as in the run, or its image id)"
    row = images.loc[image_id]
    fields.update(image_id=image_id, path=row["path"])
    if kind == "add":
        cls = spec.get("class_name", spec.get("class"))
        if resolve_class(cls, ctx.classes) is None:
            return (f"class {cls!r} is neither a class of the model {list(ctx.classes.names)} nor a category "
                    f"{ctx.classes.categories}")
        box, err = _box(spec, row.get("width"), row.get("height"))
        if err:
            return err
        poly = spec.get("polygon")
        fields.update(class_name=str(cls), box=box, polygon=None if _blank(poly) or poly is None else poly,
                      inference_key=ctx.inference_key)
    elif kind in ("verify", "unverify"):
        given, thresholds = spec.get("thresholds"), ctx.thresholds
        if not _blank(given) and ctx.rule is not None:
            try:
                thresholds = ctx.rule(given)
            except ValueError as exc:
                return f"thresholds {given!r} do not fit run {ctx.run_id}: {exc}"
        fields.update(inference_key=ctx.inference_key, thresholds=thresholds)
    else:  # undo
        target = spec.get("target")
        if _blank(target) or str(target) not in known:
            return f"undo needs target: the correction_id of an earlier correction ({target!r} is none)"
        fields["target"] = str(target)
    return correction_row(kind, **fields)


def check_corrections(specs: Sequence[Mapping[str, Any]], ctx: RunContext, *,
                      labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Check new corrections against a run; returns them as rows to save, or raises for any bad one.

    Each spec is a mapping with ``kind`` (or ``action``), ``image`` (a path as in the run, a path
    relative to the collection folder, or an image id), ``detection_id``, ``class`` (or
    ``class_name``), ``x1, y1, x2, y2`` (or ``box``), ``polygon``, ``target`` (undo), ``note``,
    ``author``, ``created_at``, ``correction_id`` and ``thresholds`` (verify), as each kind needs.

    Raises
    ------
    CorrectionError
        Naming every bad spec (by ``labels``, e.g. CSV row numbers), and saying nothing was saved.
    """
    from ..errors import CorrectionError

    index = _image_index(ctx.images, ctx.root)
    dets = pd.concat([ctx.detections, ctx.removed], ignore_index=True).drop_duplicates("detection_id")
    dets = dets.set_index("detection_id")
    images = ctx.images.drop_duplicates("image_id").set_index("image_id")
    rows, errors = [], []
    known = set(ctx.known_ids)  # an undo may cancel a correction of the same batch
    labels = list(labels) if labels is not None else [f"correction {i + 1}" for i in range(len(specs))]
    for label, spec in zip(labels, specs):
        out = _check_one(spec, ctx, index, dets, images, known)
        if isinstance(out, str):
            errors.append(f"{label}: {out}")
        else:
            rows.append(out)
            known.add(out["correction_id"])
    if errors:
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        raise CorrectionError(
            f"{len(errors)} of {len(specs)} corrections are not valid for run {ctx.run_id}{more} — nothing was "
            "saved — fix them and try again:\n  " + "\n  ".join(errors[:20])
        )
    return rows
