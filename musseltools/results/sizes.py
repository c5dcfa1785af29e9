"""Shell sizes: a length and a width for every detection, and millimetres where an image has a scale.

A length is a fact of a detection's geometry, threshold-free: :func:`add_lengths` is applied by the results
view (:mod:`musseltools.results.view`), so every view has ``length_px, width_px, length_method``.

``length_method``

``outline``  the long and short sides of the minimum-area rectangle of the outline (shapely's
             ``minimum_rotated_rectangle``): oriented-box (``obb``) and segmentation (``segment``) models;
``hand``     the same, of a detection drawn by hand (an added box or polygon); or the length line measured by
             hand in the editor (a ``length`` correction: ``length_px`` is the line's length, the width stays);
``box``      an axis-aligned box of a detect model: the length is the box's **long side** and the width its
             short side. An estimate with a bias: a shell tilted from the image axes has a box whose long side
             *under-states* its length (by 0 at 0° up to about 30 % at 45° for a slender shell) and whose
             diagonal *over-states* it (by the shell's width at 0°, about 10 %). On the synthetic generator's
             whole live shells (their true boxes, ``benchmarks/sizes.py``), the long side errs by a median of
             -5 % (median absolute error 5 %, 90th percentile 18 %) and the diagonal by +9 % (median 9 %,
             90th percentile 11 %): the long side is the better estimate by median and mean absolute error,
             so it is used. The width of a tilted shell from a box is over-stated: use it with care.

Millimetres (:func:`lengths_mm`): ``length_mm = length_px * mm_per_px`` of the detection's image
(:func:`image_scales`), NaN for an image without a scale and for a detection outside its image (a box reaching
more than :data:`EDGE_TOLERANCE_PX` beyond the image's edges: its geometry is not the shell's).

A minimum length (``min_length_mm``, :func:`at_min_length`) leaves shells shorter than it out of counts, as survey
protocols leave out recruits. Like a threshold it is applied when a view counts and changes no stored result.
A detection without a length in mm (its image has no scale, or it reaches outside its image) cannot be compared
with it: it is **counted**, and the run says how many images with detections lack a scale. Counting it is the
protocol-free count a researcher had before asking for a minimum; dropping it would lose every shell, adult or
not, of an image whose scale was forgotten, without a sign in the totals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..core.thresholds import keep_length

__all__ = ["add_lengths", "length_lines", "lengths_mm", "at_min_length", "image_scales", "outline_size", "outline_sizes",
           "OUTLINE_TASKS", "EDGE_TOLERANCE_PX",
           "DISAGREEMENT", "SCALE_COLUMNS"]

#: Model tasks whose polygons are outlines of the object (their length is measured, not estimated).
OUTLINE_TASKS = ("obb", "segment")
#: How far (px) a detection's box may reach beyond the image before it counts as outside it.
EDGE_TOLERANCE_PX = 1.0
#: A drawn scale differing from the sheet's by more than this fraction is flagged.
DISAGREEMENT = 0.10
#: Columns of :func:`image_scales`.
SCALE_COLUMNS = ("image_id", "path", "mm_per_px", "source", "sheet_mm_per_px", "sheet_source", "drawn_mm_per_px",
                 "drawn_by", "drawn_at", "disagreement", "flagged")


def outline_size(polygon: Any) -> tuple[float, float]:
    """(long side, short side) of the minimum-area rectangle of a polygon (a sequence of [x, y]); NaNs when the
    polygon has fewer than 2 distinct points.

    >>> outline_size([[0, 0], [30, 40], [34, 37], [4, -3]])
    (50.0, 5.0)
    """
    big, small = outline_sizes([np.asarray(polygon, dtype=np.float64).reshape(-1, 2)])
    return float(big[0]), float(small[0])


def outline_sizes(polygons: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`outline_size` of many polygons (each an (N, 2) array) at once: shapely's vectorised minimum-area
    rectangles, so that a view of a segmentation run of many detections pays no Python loop per outline."""
    import shapely

    n = len(polygons)
    if not n:
        return np.zeros(0), np.zeros(0)
    counts = np.array([len(p) for p in polygons])
    points = shapely.multipoints(np.concatenate(polygons), indices=np.repeat(np.arange(n), counts))
    xy, owner = shapely.get_coordinates(shapely.minimum_rotated_rectangle(points), return_index=True)
    # a rectangle's ring (5 coordinates), a segment for collinear points (2), a point for one distinct point (1)
    have = np.bincount(owner, minlength=n)
    first = np.searchsorted(owner, np.arange(n))
    p0 = xy[np.minimum(first, len(xy) - 1)]
    p1 = xy[np.minimum(first + 1, len(xy) - 1)]
    p2 = xy[np.minimum(first + 2, len(xy) - 1)]
    side1 = np.where(have >= 2, np.hypot(*(p1 - p0).T), np.nan)
    side2 = np.where(have >= 3, np.hypot(*(p2 - p1).T), 0.0)
    return np.round(np.maximum(side1, side2), 9), np.round(np.where(have >= 2, np.minimum(side1, side2), np.nan), 9)


def add_lengths(detections: pd.DataFrame, task: str | None, lines: pd.DataFrame | None = None) -> pd.DataFrame:
    """``detections`` with ``length_px, width_px, length_method`` (see the module docstring).

    ``task`` is the model's (``detect``, ``obb``, ``segment``): the model's detections of an outline task, and
    every detection whose ``source`` is ``added`` (drawn by hand), are measured on their outline; the others
    are estimated from their box. ``lines`` (``x1, y1, x2, y2`` by ``detection_id``): lengths measured by hand,
    which replace the others' (:attr:`musseltools.results.corrected.Applied.lengths`)."""
    n = len(detections)
    box = detections[["x1", "y1", "x2", "y2"]].to_numpy(np.float64) if n else np.zeros((0, 4))
    w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    length, width = np.maximum(w, h), np.minimum(w, h)
    method = np.full(n, "box", dtype=object)
    source = detections["source"].to_numpy(dtype=object) if "source" in detections else np.full(n, "model", object)
    hand = source == "added"
    measure = hand | (np.full(n, task in OUTLINE_TASKS) if n else np.zeros(0, bool))
    polys = detections["polygon"].to_numpy(dtype=object) if "polygon" in detections else np.full(n, None, object)
    rows, outlines = [], []
    for i in np.flatnonzero(measure):
        poly = polys[i]
        if poly is None or len(poly) < 3:
            if not hand[i]:
                continue  # no outline stored: the box estimate stays
            poly = [[box[i, 0], box[i, 1]], [box[i, 2], box[i, 3]]]
        rows.append(i)
        outlines.append(np.asarray([np.asarray(p, np.float64) for p in poly]).reshape(-1, 2))
    big, small = outline_sizes(outlines)
    ok = np.isfinite(big)
    at = np.asarray(rows, dtype=np.int64)[ok]
    length[at], width[at] = big[ok], small[ok]
    method[at] = np.where(hand[at], "hand", "outline")
    ends = _hand_lines(detections, lines)
    drawn = np.isfinite(ends).all(1)
    length[drawn] = np.hypot(ends[drawn, 2] - ends[drawn, 0], ends[drawn, 3] - ends[drawn, 1])
    method[drawn] = "hand"
    return detections.assign(length_px=length, width_px=width, length_method=method)


def _hand_lines(detections: pd.DataFrame, lines: pd.DataFrame | None) -> np.ndarray:
    """The hand-measured line of each detection (NaNs for those without one)."""
    if lines is None or not len(lines) or "detection_id" not in detections:
        return np.full((len(detections), 4), np.nan)
    ends = lines[["x1", "y1", "x2", "y2"]].reindex(detections["detection_id"].to_numpy())
    return ends.to_numpy(np.float64)


def length_lines(detections: pd.DataFrame, task: str | None, lines: pd.DataFrame | None = None) -> np.ndarray:
    """The ends ``(x1, y1, x2, y2)`` of each detection's length line, one row per detection, whose length is
    its ``length_px`` (:func:`add_lengths`): the line measured by hand (``lines``); the long axis of the
    outline's minimum-area rectangle (outlines, boxes drawn by hand); the box's long midline (box estimates).
    The correction editor draws it, with a handle at each end."""
    import shapely

    n = len(detections)
    box = detections[["x1", "y1", "x2", "y2"]].to_numpy(np.float64) if n else np.zeros((0, 4))
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    wide = (box[:, 2] - box[:, 0]) >= (box[:, 3] - box[:, 1])
    out = np.where(wide[:, None], np.stack([box[:, 0], cy, box[:, 2], cy], 1),
                   np.stack([cx, box[:, 1], cx, box[:, 3]], 1)) if n else np.zeros((0, 4))
    measured = add_lengths(detections, task)["length_method"].to_numpy() != "box"
    polys = detections["polygon"].to_numpy(dtype=object) if "polygon" in detections else np.full(n, None, object)
    for i in np.flatnonzero(measured):
        poly = polys[i] if polys[i] is not None and len(polys[i]) >= 3 else [[box[i, 0], box[i, 1]],
                                                                            [box[i, 2], box[i, 3]]]
        rect = shapely.minimum_rotated_rectangle(shapely.multipoints(np.asarray(
            [np.asarray(p, np.float64) for p in poly]).reshape(-1, 2)))
        xy = shapely.get_coordinates(rect)
        if len(xy) >= 4:  # the midpoints of the rectangle's two short sides
            p0, p1, p2, p3 = xy[:4]
            a, b = ((p3 + p0) / 2, (p1 + p2) / 2) if np.hypot(*(p1 - p0)) >= np.hypot(*(p2 - p1)) else \
                ((p0 + p1) / 2, (p2 + p3) / 2)
            out[i] = [a[0], a[1], b[0], b[1]]
        elif len(xy) >= 2:  # a segment (collinear points)
            out[i] = [xy[0, 0], xy[0, 1], xy[-1, 0], xy[-1, 1]]
    hand = _hand_lines(detections, lines)
    drawn = np.isfinite(hand).all(1)
    out[drawn] = hand[drawn]
    return out


def lengths_mm(detections: pd.DataFrame, images: pd.DataFrame, scales: pd.DataFrame) -> pd.DataFrame:
    """``detections`` (with :func:`add_lengths`' columns) with ``mm_per_px, length_mm, width_mm``: NaN for a
    detection of an image without a scale, and for one outside its image (``images``: ``image_id, width,
    height``)."""
    scale = detections["image_id"].map(scales.drop_duplicates("image_id").set_index("image_id")["mm_per_px"])
    scale = pd.to_numeric(scale, errors="coerce").to_numpy(np.float64)
    sizes = images.drop_duplicates("image_id").set_index("image_id")
    wid = pd.to_numeric(detections["image_id"].map(sizes["width"]), errors="coerce").to_numpy(np.float64)
    hei = pd.to_numeric(detections["image_id"].map(sizes["height"]), errors="coerce").to_numpy(np.float64)
    box = detections[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
    tol = EDGE_TOLERANCE_PX
    inside = ((box[:, 0] >= -tol) & (box[:, 1] >= -tol) & (box[:, 2] <= wid + tol) & (box[:, 3] <= hei + tol)
              & (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1]))
    scale = np.where(inside & (scale > 0), scale, np.nan)
    return detections.assign(mm_per_px=scale, length_mm=detections["length_px"].to_numpy(np.float64) * scale,
                             width_mm=detections["width_px"].to_numpy(np.float64) * scale)


def at_min_length(detections: pd.DataFrame, images: pd.DataFrame, scales: pd.DataFrame,
                  min_length_mm: float) -> tuple[pd.DataFrame, int]:
    """The rows of ``detections`` (with :func:`add_lengths`' columns) that count at a minimum shell length, and
    how many images holding detections have no scale (their detections all count: see the module docstring).

    The rule is :func:`musseltools.core.thresholds.keep_length` on :func:`lengths_mm`; ``min_length_mm`` 0 keeps
    every row. The rows keep their columns (no ``length_mm`` is added)."""
    if min_length_mm <= 0 or not len(detections):
        return detections, 0
    measured = lengths_mm(detections, images, scales)
    kept = detections[keep_length(measured["length_mm"].to_numpy(np.float64), min_length_mm)]
    scaled = scales.loc[pd.to_numeric(scales["mm_per_px"], errors="coerce") > 0, "image_id"]
    unscaled = int(pd.Index(detections["image_id"].unique()).difference(pd.Index(scaled)).size)
    return kept, unscaled


def image_scales(images: pd.DataFrame, sheet: pd.DataFrame | None, drawn: pd.DataFrame) -> pd.DataFrame:
    """Each image's scale in mm per pixel and where it came from (columns :data:`SCALE_COLUMNS`).

    The first that applies: the sheet's ``mm_per_px``; the sheet's ``quadrat_side_m`` (the image is cropped to
    the quadrat's inside: ``side_mm / min(width, height)``: the shorter side, since a crop that is not square
    holds at least the quadrat's side along it); the latest scale drawn by hand (``drawn``: ``image_id,
    mm_per_px, author, created_at``, oldest first). ``source`` says which (None: no scale; lengths in pixels
    only). A drawn scale that differs from the sheet's by more than :data:`DISAGREEMENT` is kept (the sheet's
    applies) and ``flagged``, with ``disagreement`` the relative difference.
    """
    out = images[["image_id", "path"]].drop_duplicates("image_id").reset_index(drop=True)
    short = np.fmin(pd.to_numeric(out["image_id"].map(_by_id(images, "width")), errors="coerce"),
                    pd.to_numeric(out["image_id"].map(_by_id(images, "height")), errors="coerce")).to_numpy(float)
    n = len(out)
    direct, quadrat = np.full(n, np.nan), np.full(n, np.nan)
    if sheet is not None:
        if "mm_per_px" in sheet:
            direct = pd.to_numeric(out["image_id"].map(_by_id(sheet, "mm_per_px")), errors="coerce").to_numpy(float)
        if "quadrat_side_m" in sheet:
            side = pd.to_numeric(out["image_id"].map(_by_id(sheet, "quadrat_side_m")), errors="coerce").to_numpy(float)
            quadrat = np.where(short > 0, side * 1000.0 / np.where(short > 0, short, 1.0), np.nan)
    sheet_scale = np.where(np.isfinite(direct), direct, quadrat)
    sheet_source = np.where(np.isfinite(direct), "sheet mm_per_px",
                            np.where(np.isfinite(quadrat), "sheet quadrat_side_m", None)).astype(object)
    latest = drawn.drop_duplicates("image_id", keep="last").set_index("image_id") if len(drawn) else None
    drawn_scale = (out["image_id"].map(latest["mm_per_px"]).to_numpy(float) if latest is not None else np.full(n, np.nan))
    scale = np.where(np.isfinite(sheet_scale), sheet_scale, drawn_scale)
    source = np.where(np.isfinite(sheet_scale), sheet_source, np.where(np.isfinite(drawn_scale), "drawn", None))
    with np.errstate(invalid="ignore", divide="ignore"):
        disagreement = np.abs(drawn_scale - sheet_scale) / sheet_scale
    out = out.assign(
        mm_per_px=scale, source=source.astype(object), sheet_mm_per_px=sheet_scale, sheet_source=sheet_source,
        drawn_mm_per_px=drawn_scale,
        drawn_by=out["image_id"].map(latest["author"]) if latest is not None else None,
        drawn_at=out["image_id"].map(latest["created_at"]) if latest is not None else pd.NaT,
        disagreement=disagreement, flagged=np.nan_to_num(disagreement, nan=0.0) > DISAGREEMENT + 1e-12)
    return out[list(SCALE_COLUMNS)]


def _by_id(table: pd.DataFrame, column: str) -> Mapping[Any, Any]:
    return table.drop_duplicates("image_id").set_index("image_id")[column] if column in table else {}
