"""Threshold views: counts, detections and the count-versus-threshold cube, from stored results.

Results hold every detection down to the confidence floor, so any threshold at or above the floor is
answered exactly, without the model. A threshold is one number, or one number per class name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .errors import ThresholdError

__all__ = [
    "Threshold",
    "check_threshold",
    "above_threshold",
    "per_image_counts",
    "totals",
    "threshold_grid",
    "build_cube",
    "polygon_document",
]

Threshold = float | Mapping[str, float]

_EPS = 1e-9


def check_threshold(threshold: Any, conf_floor: float, classes: Sequence[str] | None = None) -> Threshold:
    """Validate a threshold against the stored confidence floor.

    Raises
    ------
    ThresholdError
        Below the floor (the results cannot answer it exactly), above 1, not a number, or naming a
        class the model does not have.
    """
    if isinstance(threshold, Mapping):
        if classes is not None:
            unknown = sorted(set(threshold) - set(classes))
            if unknown:
                raise ThresholdError(
                    f"thresholds given for unknown classes {unknown} — the model's classes are {list(classes)}"
                )
        return {str(k): float(check_threshold(v, conf_floor)) for k, v in threshold.items()}
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ThresholdError(f"threshold {threshold!r} is not a number — expected a confidence in [0, 1]") from None
    if math.isnan(t) or t > 1:
        raise ThresholdError(f"threshold {t} is not a confidence — expected a number in [{conf_floor}, 1]")
    if t < conf_floor - _EPS:
        raise ThresholdError(
            f"threshold {t} is below the confidence floor {conf_floor} the results were stored with — counts "
            f"below it are unknown — use a threshold >= {conf_floor}, or run again with --conf-floor {t}"
        )
    return t


def _row_thresholds(class_names: pd.Series, threshold: Threshold) -> np.ndarray:
    if isinstance(threshold, Mapping):
        return class_names.map(lambda n: threshold.get(n, 0.0)).to_numpy(np.float64)
    return np.full(len(class_names), float(threshold))


def above_threshold(detections: pd.DataFrame, threshold: Threshold) -> pd.DataFrame:
    """Rows of a detections table with ``confidence >= threshold`` (per class when a mapping)."""
    keep = detections["confidence"].to_numpy(np.float64) >= _row_thresholds(detections["class_name"], threshold) - _EPS
    return detections[keep]


def _category(class_names: pd.Series, class_map: Mapping[str, str] | None) -> pd.Series:
    return class_names.map(lambda n: class_map.get(n, n)) if class_map else class_names


def per_image_counts(
    images: pd.DataFrame,
    detections: pd.DataFrame,
    threshold: Threshold,
    categories: Sequence[str],
    class_map: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """``images`` with one count column per category at the threshold (0 for images without results)."""
    kept = above_threshold(detections, threshold)
    cat = _category(kept["class_name"], class_map)
    table = pd.crosstab(kept["image_id"], cat) if len(kept) else pd.DataFrame(index=pd.Index([], name="image_id"))
    table = table.reindex(columns=list(categories), fill_value=0)
    out = images.merge(table, left_on="image_id", right_index=True, how="left")
    for c in categories:
        out[c] = out[c].fillna(0).astype("int64")
    return out


def totals(counts: pd.DataFrame, categories: Sequence[str]) -> dict[str, int]:
    """Survey totals per category from :func:`per_image_counts` (images that errored count 0)."""
    return {c: int(counts[c].sum()) if c in counts else 0 for c in categories}


def threshold_grid(conf_floor: float, extra: Sequence[float] = ()) -> np.ndarray:
    """Thresholds of the cube: the floor, every 0.01 up to 0.99, and any extra ones (e.g. the run's)."""
    base = np.round(np.arange(0.01, 1.0, 0.01), 4)
    grid = np.unique(np.round(np.concatenate([[conf_floor], base, np.asarray(extra, float)]), 6))
    return grid[grid >= conf_floor - _EPS]


def build_cube(
    images: pd.DataFrame,
    detections: pd.DataFrame,
    categories: Sequence[str],
    conf_floor: float,
    *,
    class_map: Mapping[str, str] | None = None,
    extra_thresholds: Sequence[float] = (),
    attrs: Mapping[str, Any] | None = None,
):
    """Counts per image, category and threshold as an ``xarray.Dataset`` (variable ``count``).

    ``count[i, c, t]`` is the number of detections of category ``c`` in image ``i`` with confidence
    >= ``threshold[t]``. Exact, computed with one pass over the detections.
    """
    import xarray as xr

    grid = threshold_grid(conf_floor, extra_thresholds)
    ids = images["image_id"].to_numpy()
    index = {v: i for i, v in enumerate(ids)}
    cats = list(categories)
    cat_index = {c: i for i, c in enumerate(cats)}
    hist = np.zeros((len(ids), len(cats), len(grid)), np.int64)
    dets = detections[detections["image_id"].isin(index)]
    if len(dets):
        ii = dets["image_id"].map(index).to_numpy()
        cc = _category(dets["class_name"], class_map).map(cat_index).to_numpy()
        conf = dets["confidence"].to_numpy(np.float64)
        b = np.searchsorted(grid - _EPS, conf, side="right") - 1
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
    threshold: Threshold,
    width: int | None,
    height: int | None,
    class_map: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One image's results in the replaced system's polygon JSON format.

    ``{"polygons": [{"coords": [[x, y], ...], "confidence": c, "class": name}], "live_count",
    "dead_count", "threshold", "image_width", "image_height"}``; ``class`` is the category name.
    """
    kept = above_threshold(detections, threshold)
    cats = _category(kept["class_name"], class_map)
    polys = [
        {"coords": [[round(float(x), 2), round(float(y), 2)] for x, y in poly], "confidence": round(float(c), 5),
         "class": str(cat)}
        for poly, c, cat in zip(kept["polygon"], kept["confidence"], cats)
    ]
    return {
        "polygons": polys,
        "live_count": int((cats == "live").sum()),
        "dead_count": int((cats == "dead").sum()),
        "threshold": threshold if not isinstance(threshold, Mapping) else dict(threshold),
        "image_width": None if width is None or pd.isna(width) else int(width),
        "image_height": None if height is None or pd.isna(height) else int(height),
    }
