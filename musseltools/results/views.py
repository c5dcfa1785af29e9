"""Threshold views: counts, detections and the count-versus-threshold cube, from stored results.

Results hold every detection down to the confidence floor, so any threshold at or above the floor is
answered exactly, without the model. Thresholds and class maps are the values of :mod:`musseltools.core.thresholds`: every function here applies their one rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..core.thresholds import TOLERANCE, ClassMap, Thresholds

__all__ = [
    "above_threshold",
    "per_image_counts",
    "totals",
    "totals_at",
    "class_confidences",
    "with_results",
    "count_disagreement",
    "threshold_grid",
    "build_cube",
    "polygon_document",
]


def above_threshold(detections: pd.DataFrame, thresholds: Thresholds) -> pd.DataFrame:
    """Rows of a detections table that count at the thresholds (see :mod:`musseltools.core.thresholds`)."""
    return detections[thresholds.keep(detections["confidence"].to_numpy(np.float64), detections["class_name"])]


def per_image_counts(
    images: pd.DataFrame,
    detections: pd.DataFrame,
    thresholds: Thresholds,
    classes: ClassMap,
) -> pd.DataFrame:
    """``images`` with one count column per category at the thresholds (0 for images without results)."""
    kept = above_threshold(detections, thresholds)
    categories = classes.categories
    cat = pd.Series(classes.categories_of(kept["class_name"]), index=kept.index, dtype=object)
    table = pd.crosstab(kept["image_id"], cat) if len(kept) else pd.DataFrame(index=pd.Index([], name="image_id"))
    table = table.reindex(columns=list(categories), fill_value=0)
    out = images.merge(table, left_on="image_id", right_index=True, how="left")
    for c in categories:
        out[c] = out[c].fillna(0).astype("int64")
    return out


def class_confidences(detections: pd.DataFrame) -> dict[str, np.ndarray]:
    """The confidences of each class, sorted (float64): the index :func:`totals_at` answers from."""
    out = {}
    if len(detections):
        for name, conf in detections.groupby("class_name", sort=False)["confidence"]:
            out[str(name)] = np.sort(conf.to_numpy(np.float64))
    return out


def totals_at(confidences: Mapping[str, np.ndarray], thresholds: Thresholds, classes: ClassMap) -> dict[str, int]:
    """Survey totals per category at the thresholds, by binary search in sorted confidences: the rule of
    :mod:`musseltools.core.thresholds` (``confidence >= T - TOLERANCE``), in microseconds whatever the survey."""
    out = dict.fromkeys(classes.categories, 0)
    for name, conf in confidences.items():
        cut = np.searchsorted(conf, thresholds.of(name) - TOLERANCE, side="left")
        out[classes.category(name)] = out.get(classes.category(name), 0) + int(len(conf) - cut)
    return out


def totals(counts: pd.DataFrame, categories: Sequence[str]) -> dict[str, int]:
    """Survey totals per category from :func:`per_image_counts` (images that errored count 0)."""
    return {c: int(counts[c].sum()) if c in counts else 0 for c in categories}


def with_results(counts: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`per_image_counts` of images that have a result (processed, no error), one per image."""
    ok = counts["error"].isna() & counts["processed_at"].notna()
    return counts[ok].drop_duplicates("image_id")


def count_disagreement(mine: pd.DataFrame, theirs: pd.DataFrame, categories: Sequence[str]) -> pd.Series:
    """How much two per-image count tables (:func:`per_image_counts` of two runs) disagree, per row of ``mine``.

    The sum over ``categories`` (those both tables count) of the absolute difference between the two counts of
    the same image (by ``image_id``); 0 for an image that ``theirs`` has no result for. The review queue
    (``other=``) and :mod:`musseltools.evaluation.compare` rank images by it.

    Examples
    --------
    >>> a = pd.DataFrame({"image_id": ["x", "y"], "live": [3, 1], "dead": [0, 2]})
    >>> b = pd.DataFrame({"image_id": ["x", "y"], "live": [1, 1], "dead": [1, 2], "error": [None, None],
    ...                   "processed_at": [1, 1]})
    >>> count_disagreement(a, b, ["live", "dead"]).tolist()
    [3, 0]
    """
    theirs = with_results(theirs).set_index("image_id")
    shared = [c for c in categories if c in theirs.columns and c in mine.columns]
    diff = pd.Series(0, index=mine.index, dtype="int64")
    known = mine["image_id"].isin(theirs.index)
    for c in shared:
        vals = mine.loc[known, "image_id"].map(theirs[c]).astype("int64")
        diff.loc[known] += (mine.loc[known, c].astype("int64") - vals).abs()
    return diff


def threshold_grid(conf_floor: float, extra: Sequence[float] = ()) -> np.ndarray:
    """Thresholds of the cube: the floor, every 0.01 up to 0.99, and any extra ones (e.g. the run's)."""
    base = np.round(np.arange(0.01, 1.0, 0.01), 4)
    grid = np.unique(np.round(np.concatenate([[conf_floor], base, np.asarray(extra, float)]), 6))
    return grid[grid >= conf_floor - TOLERANCE]


def build_cube(
    images: pd.DataFrame,
    detections: pd.DataFrame,
    classes: ClassMap,
    conf_floor: float,
    *,
    extra_thresholds: Sequence[float] = (),
    attrs: Mapping[str, Any] | None = None,
):
    """Counts per image, category and threshold as an ``xarray.Dataset`` (variable ``count``).

    ``count[i, c, t]`` is the number of detections of category ``c`` in image ``i`` that count at the
    uniform threshold ``threshold[t]`` (the rule of :mod:`musseltools.core.thresholds`). Exact, computed with
    one pass over the detections.
    """
    import xarray as xr

    grid = threshold_grid(conf_floor, extra_thresholds)
    ids = images["image_id"].to_numpy()
    index = {v: i for i, v in enumerate(ids)}
    cats = classes.categories
    cat_index = {c: i for i, c in enumerate(cats)}
    hist = np.zeros((len(ids), len(cats), len(grid)), np.int64)
    dets = detections[detections["image_id"].isin(index)]
    if len(dets):
        ii = dets["image_id"].map(index).to_numpy()
        cc = pd.Series(classes.categories_of(dets["class_name"]), dtype=object).map(cat_index).to_numpy()
        conf = dets["confidence"].to_numpy(np.float64)
        b = np.searchsorted(grid - TOLERANCE, conf, side="right") - 1
        ok = (b >= 0) & ~pd.isna(cc)
        np.add.at(hist, (ii[ok], cc[ok].astype(int), b[ok]), 1)
    count = np.flip(np.cumsum(np.flip(hist, axis=2), axis=2), axis=2).astype(np.int32)
    err = images["error"] if "error" in images else pd.Series([None] * len(images))
    ds = xr.Dataset(
        {"count": (("image", "class", "threshold"), count)},
        coords={
            "image": ids.astype(object),
            "class": np.array(cats, dtype=object),
            "threshold": grid,
            "path": ("image", images["path"].astype(str).to_numpy(dtype=object)),
            "width": ("image", images["width"].fillna(-1).astype("int64").to_numpy()),
            "height": ("image", images["height"].fillna(-1).astype("int64").to_numpy()),
            "failed": ("image", err.notna().to_numpy()),
        },
        attrs=dict(attrs or {}),
    )
    ds["count"].attrs.update(
        long_name="detections with confidence >= threshold", units="count", conf_floor=float(conf_floor)
    )
    ds["threshold"].attrs.update(long_name="confidence threshold", units="1")
    return ds


def polygon_document(
    detections: pd.DataFrame,
    *,
    thresholds: Thresholds,
    classes: ClassMap,
    width: int | None,
    height: int | None,
) -> dict[str, Any]:
    """One image's results in the replaced system's polygon JSON format.

    ``{"polygons": [{"coords": [[x, y], ...], "confidence": c, "class": name}], "live_count",
    "dead_count", "threshold", "image_width", "image_height"}``; ``class`` is the category name.
    """
    kept = above_threshold(detections, thresholds)
    cats = pd.Series(classes.categories_of(kept["class_name"]), index=kept.index, dtype=object)
    polys = [
        {"coords": [[round(float(x), 2), round(float(y), 2)] for x, y in poly], "confidence": round(float(c), 5),
         "class": str(cat)}
        for poly, c, cat in zip(kept["polygon"], kept["confidence"], cats)
    ]
    return {
        "polygons": polys,
        "live_count": int((cats == "live").sum()),
        "dead_count": int((cats == "dead").sum()),
        "threshold": thresholds.to_json(classes),
        "image_width": None if width is None or pd.isna(width) else int(width),
        "image_height": None if height is None or pd.isna(height) else int(height),
    }
