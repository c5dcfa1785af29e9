"""Size-frequency: histograms of shell length and its quantiles with intervals, per category and group.

Pure over tables (like :mod:`musseltools.survey.estimate`): :func:`size_frequency` takes one row per detection
(``image_id``, ``category``, ``length_px``, ``length_mm``) and one row per image in scope (``image_id``,
``mm_per_px`` and the group columns) and knows nothing of runs or stores (``run.sizes`` assembles them).

Unit
    Millimetres when every image in scope has a scale, else pixels for all (a histogram that mixed them would
    mean nothing); :attr:`SizeFrequency.unit` says which, and :attr:`SizeFrequency.note` why.

Intervals
    The image is the sampling unit (shells of one photograph are not independent): each quantile's interval
    is the percentile bootstrap over images resampled with replacement within the group (seeded), all shells
    of a drawn image coming with it. A detection without a length in the unit (outside its image) is left out
    and counted in ``unmeasured``.

Examples
--------
>>> import pandas as pd
>>> dets = pd.DataFrame({"image_id": ["a", "a", "b"], "category": ["live"] * 3,
...                      "length_px": [20.0, 30.0, 40.0], "length_mm": [10.0, 15.0, 20.0]})
>>> images = pd.DataFrame({"image_id": ["a", "b"], "mm_per_px": [0.5, 0.5]})
>>> sf = size_frequency(dets, images, categories=["live"], bins=[0, 12, 24])
>>> sf.unit, sf.histogram["count"].tolist(), float(sf.quantiles["median"][0])
('mm', [1, 2], 15.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["SizeFrequency", "size_frequency", "QUANTILES", "bin_edges"]

#: The quantiles reported, by column name.
QUANTILES = {"p10": 0.10, "median": 0.50, "p90": 0.90}


@dataclass(frozen=True)
class SizeFrequency:
    """What :func:`size_frequency` returns.

    ``histogram``: one row per group, category and bin (``by`` columns, ``category, bin_low, bin_high, count``);
    ``quantiles``: one row per group and category (``by`` columns, ``category, images, n, unmeasured, outside``,
    then ``p10, p10_low, p10_high, median, median_low, median_high, p90, p90_low, p90_high``); ``unit``: ``mm``
    or ``px``; ``edges``: the bins' edges; ``by``: the group columns; ``level``; ``note``: why the unit is px."""

    histogram: pd.DataFrame
    quantiles: pd.DataFrame
    unit: str
    edges: np.ndarray
    by: list[str]
    level: float
    note: str = ""


def bin_edges(lengths: np.ndarray, bins: Any = None) -> np.ndarray:
    """Bin edges: ``bins`` as given (a sequence of increasing edges), ``bins`` equal bins over the lengths'
    range (an int), or numpy's ``auto`` rule (None). Raises ValueError for edges that do not increase."""
    finite = lengths[np.isfinite(lengths)]
    if bins is not None and not np.isscalar(bins):
        edges = np.asarray(bins, dtype=np.float64)
        if edges.ndim != 1 or len(edges) < 2 or not np.all(np.diff(edges) > 0):
            raise ValueError(f"bins {list(bins)!r} are not increasing edges — expected e.g. [0, 5, 10, 20] "
                             "(in the unit of the lengths) or a number of bins")
        return edges
    if bins is not None and (int(bins) != bins or int(bins) < 1):
        raise ValueError(f"bins={bins!r} — expected a number of bins >= 1 or a sequence of edges")
    if not len(finite):
        return np.array([0.0, 1.0])
    return np.histogram_bin_edges(finite, bins="auto" if bins is None else int(bins))


def _boot_quantiles(per_image: list[np.ndarray], rng: np.random.Generator, n_boot: int, level: float
                    ) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap intervals of :data:`QUANTILES`, resampling images (all of an image's lengths)."""
    k = len(per_image)
    sizes = np.array([len(x) for x in per_image])
    flat = np.concatenate(per_image) if k else np.zeros(0)
    qs = np.array(list(QUANTILES.values()))
    draws = np.full((n_boot, len(qs)), np.nan)
    if k and len(flat):
        weights = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot)  # times each image is drawn
        for b in range(n_boot):
            sample = np.repeat(flat, np.repeat(weights[b], sizes))
            if len(sample):
                draws[b] = np.quantile(sample, qs)
    alpha = (1 - level) / 2
    out = {}
    for j, name in enumerate(QUANTILES):
        col = draws[:, j][np.isfinite(draws[:, j])]
        out[name] = (float(np.quantile(col, alpha)), float(np.quantile(col, 1 - alpha))) if len(col) else (np.nan, np.nan)
    return out


def size_frequency(detections: pd.DataFrame, images: pd.DataFrame, by: str | Sequence[str] | None = None, *,
                   categories: Sequence[str], bins: Any = None, level: float = 0.95, n_boot: int = 2000,
                   seed: int = 0) -> SizeFrequency:
    """Histograms and quantiles (with image-bootstrap intervals) of shell length per group and category.

    ``images``: every image in scope (with a result), with ``mm_per_px`` (NaN: no scale) and the ``by``
    columns; images without a detection count in the bootstrap's draws. ``detections``: ``image_id, category,
    length_px, length_mm`` of the detections that count. See the module docstring for the unit and intervals."""
    by = [by] if isinstance(by, str) else list(by or [])
    if not 0 < level < 1:
        raise ValueError(f"level={level!r} — expected a confidence level between 0 and 1, e.g. 0.95")
    scale = pd.to_numeric(images["mm_per_px"], errors="coerce").to_numpy(np.float64) if "mm_per_px" in images \
        else np.full(len(images), np.nan)
    unscaled = int((~(np.isfinite(scale) & (scale > 0))).sum())
    unit = "mm" if len(images) and not unscaled else "px"
    note = "" if unit == "mm" else (f"lengths in pixels: {unscaled} of {len(images)} images have no scale "
                                    "(run.scales(); give mm_per_px or quadrat_side_m in the sheet, or run.set_scale)")
    dets = detections[detections["image_id"].isin(set(images["image_id"]))]
    if by:
        dets = dets.drop(columns=[c for c in by if c in dets]).merge(images[["image_id", *by]], on="image_id",
                                                                     how="left")
    value = pd.to_numeric(dets[f"length_{unit}"], errors="coerce").to_numpy(np.float64)
    dets = dets.assign(_value=value)
    edges = bin_edges(value, bins)
    rng = np.random.default_rng(seed)
    hist_rows, q_rows = [], []
    groups = images.groupby(by, sort=True, dropna=False) if by else [((), images)]
    for key, group_images in groups:
        key = key if isinstance(key, tuple) else (key,)
        where = dict(zip(by, key))
        in_group = dets[dets["image_id"].isin(set(group_images["image_id"]))]
        ids = group_images["image_id"].drop_duplicates().tolist()
        for cat in categories:
            rows = in_group[in_group["category"] == cat]
            ok = rows[np.isfinite(rows["_value"].to_numpy())]
            lengths = ok["_value"].to_numpy(np.float64)
            counts, _ = np.histogram(lengths, bins=edges)
            hist_rows.extend({**where, "category": cat, "bin_low": lo, "bin_high": hi, "count": int(n)}
                             for lo, hi, n in zip(edges[:-1], edges[1:], counts))
            by_image = dict(tuple(ok.groupby("image_id")["_value"])) if len(ok) else {}
            per_image = [by_image[i].to_numpy(np.float64) if i in by_image else np.zeros(0) for i in ids]
            intervals = _boot_quantiles(per_image, rng, n_boot, level)
            row = {**where, "category": cat, "images": len(ids), "n": len(lengths),
                   "unmeasured": len(rows) - len(ok), "outside": len(lengths) - int(counts.sum())}
            for name, q in QUANTILES.items():
                row[name] = float(np.quantile(lengths, q)) if len(lengths) else np.nan
                row[f"{name}_low"], row[f"{name}_high"] = intervals[name]
            q_rows.append(row)
    return SizeFrequency(pd.DataFrame(hist_rows, columns=[*by, "category", "bin_low", "bin_high", "count"]),
                         pd.DataFrame(q_rows), unit, edges, by, level, note)
