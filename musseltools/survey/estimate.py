"""Density and fractions by group, with intervals that treat the image as the sampling unit:
:func:`group_estimates`.

Estimators (docs/survey.md, "Estimators"):

* density of a category in a group: ``sum(count) / sum(area)`` over the group's images;
* fraction of a category (live fraction; mortality is the dead fraction): ``sum(count of it) /
  sum(count of all categories)`` over the group's images;
* corrected (when verified images are given): each category's counts times the detector's ratio
  ``sum(true) / sum(model)`` over all verified images, the generalisation of the ratio-corrected survey
  totals (``Evaluation.survey_totals``) to groups;
* intervals: linearized variance of the ratio between images, on the log scale (density) or logit
  scale (fraction), t quantile on ``images - 1`` degrees of freedom (Welch-Satterthwaite when the
  verified images add their own variance): see :mod:`musseltools.survey.ratio` for why. ``interval=
  "bootstrap"`` gives the percentile bootstrap instead (images resampled within groups, seeded), which
  under-covers with few images; it is there to compare.

Examples
--------
>>> import pandas as pd
>>> images = pd.DataFrame({"image_id": list("abcd"), "site": ["A", "A", "B", "B"],
...                        "area_m2": [0.25] * 4, "live": [10, 14, 3, 5], "dead": [2, 4, 1, 0]})
>>> est = group_estimates(images, "site", ["live", "dead"])
>>> est[["site", "category", "count", "density"]].to_dict("records")[0]
{'site': 'A', 'category': 'live', 'count': 24.0, 'density': 48.0}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .ratio import Component, clopper_pearson, poisson_upper, ratio_influence, t_interval

__all__ = ["COLUMNS", "INTERVALS", "Correction", "correction", "group_estimates", "check_images"]

#: The columns of :func:`group_estimates` after the ``by`` columns.
COLUMNS = ["category", "images", "count", "density", "density_low", "density_high", "fraction", "fraction_low",
           "fraction_high", "corrected", "validated_images", "method", "note"]
#: The interval methods :func:`group_estimates` knows.
INTERVALS = ("t", "bootstrap")


@dataclass(frozen=True)
class Correction:
    """The detector's ratio ``true / model`` per category from verified images, and its linearized values."""

    ratio: np.ndarray          # (categories,)
    influence: np.ndarray      # (verified images, categories): (true - ratio * model) / mean(model)
    true: np.ndarray           # (verified images, categories)
    model: np.ndarray          # (verified images, categories)

    @property
    def n(self) -> int:
        return len(self.true)


def correction(validated: pd.DataFrame, categories: Sequence[str]) -> Correction:
    """The :class:`Correction` of ``validated`` (``image_id``, per category ``c`` the true count and
    ``c_model`` the model's count). Raises ValueError when a column is missing or the model counted none
    of a category on the verified images (its ratio is not defined)."""
    need = [col for c in categories for col in (c, f"{c}_model")]
    missing = [col for col in need if col not in validated.columns]
    if missing:
        raise ValueError(f"the verified images' table lacks columns {missing} — expected, per category c, the "
                         f"true count 'c' and the model's count 'c_model' (have {list(validated.columns)})")
    true = _counts(validated, list(categories), "verified images").to_numpy(np.float64)
    model = _counts(validated, [f"{c}_model" for c in categories], "verified images").to_numpy(np.float64)
    empty = [c for c, s in zip(categories, model.sum(0)) if s == 0]
    if empty:
        raise ValueError(f"the model counted no {empty} on the {len(model)} verified images, so their ratio true/"
                         "model is not defined — verify images where the model finds them, or leave validated out")
    pairs = [ratio_influence(true[:, k], model[:, k]) for k in range(len(categories))]
    return Correction(np.array([p[0] for p in pairs]), np.column_stack([p[1] for p in pairs]), true, model)


def _counts(table: pd.DataFrame, columns: list[str], what: str) -> pd.DataFrame:
    counts = table[columns].apply(pd.to_numeric, errors="coerce")
    bad = counts.isna().any(axis=1) | (counts < 0).any(axis=1)
    if bad.any():
        ids = table.loc[bad, "image_id"].astype(str).tolist() if "image_id" in table else list(table.index[bad])
        raise ValueError(f"{what}: counts {columns} must be numbers >= 0 — not so for images {ids[:20]}"
                         + (f" and {len(ids) - 20} more" if len(ids) > 20 else ""))
    return counts


def check_images(images: pd.DataFrame, by: list[str], categories: list[str], area: str) -> None:
    """Raise ValueError naming what ``images`` lacks: the ``by`` and count columns, and positive areas."""
    missing = [c for c in ["image_id", *by, *categories] if c not in images.columns]
    if missing:
        raise ValueError(f"the images' table lacks columns {missing} — expected image_id, the group columns {by} "
                         f"and one count column per category {categories} (have {list(images.columns)})")
    _counts(images, categories, "images")
    if area in images.columns:
        a = pd.to_numeric(images[area], errors="coerce")
        bad = ~(a > 0) | ~np.isfinite(a)
        if bad.any():
            raise ValueError(f"column {area!r} must be a positive area for every image — not so for images "
                             f"{images.loc[bad, 'image_id'].astype(str).tolist()[:20]}; fix the sheet, or drop the "
                             "column to estimate fractions alone")


def group_estimates(
    images: pd.DataFrame,
    by: str | Sequence[str],
    categories: Sequence[str],
    *,
    area: str = "area_m2",
    validated: pd.DataFrame | None = None,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    interval: str = "t",
) -> pd.DataFrame:
    """Density per m² and share of each category by group, with ``level`` intervals.

    Parameters
    ----------
    images : pandas.DataFrame
        One row per image: ``image_id``, the ``by`` columns, ``area`` (m² the image shows; without it,
        density is not defined and the note says so) and one count column per category.
    by : str or sequence of str
        The columns that make a group (for example ``["site", "date"]``); missing values form their own group.
    categories : sequence of str
        The count columns (for example ``["live", "dead"]``).
    validated : pandas.DataFrame, optional
        Verified images: ``image_id`` and per category ``c`` the true count and ``c_model`` the model's.
        Given, every estimate is ratio-corrected (``corrected`` True).
    level : float
        Confidence level of the intervals.
    n_boot, seed : int
        Resamples and seed of ``interval="bootstrap"``.
    interval : {"t", "bootstrap"}
        ``"t"``: linearized variance, log/logit scale, t quantile (the default: it holds its coverage with
        few images); ``"bootstrap"``: percentile bootstrap of images within groups (under-covers below ~20).

    Returns
    -------
    pandas.DataFrame
        One row per group and category: the ``by`` columns, then :data:`COLUMNS`. ``count`` is the
        group's total (corrected when ``corrected``); ``fraction`` is that category's share of all
        categories. Bounds are NaN where not estimable, and ``note`` says why.
    """
    by = [by] if isinstance(by, str) else list(by)
    categories = list(categories)
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if interval not in INTERVALS:
        raise ValueError(f"interval {interval!r} is not one of {INTERVALS}")
    check_images(images, by, categories, area)
    corr = correction(validated, categories) if validated is not None else None
    rng = np.random.default_rng(seed)
    ctx = _Context(categories, area if area in images.columns else None, corr, level, interval, n_boot, rng)
    rows = []
    for key, g in images.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rows += [dict(zip(by, key)) | row for row in _group_rows(g, ctx)]
    return pd.DataFrame(rows, columns=by + COLUMNS)


@dataclass
class _Context:
    categories: list[str]
    area: str | None
    corr: Correction | None
    level: float
    interval: str
    n_boot: int
    rng: np.random.Generator


def _group_rows(g: pd.DataFrame, ctx: _Context) -> list[dict]:
    y = g[ctx.categories].to_numpy(np.float64)
    a = g[ctx.area].to_numpy(np.float64) if ctx.area else None
    corr = ctx.corr
    r = corr.ratio if corr is not None else np.ones(len(ctx.categories))
    boot = _bootstrap(y, a, corr, ctx) if ctx.interval == "bootstrap" else None
    rows = []
    for k, c in enumerate(ctx.categories):
        notes: list[str] = []
        dens = _density(y, a, k, r, corr, ctx, boot, notes)
        frac = _fraction(y, k, r, corr, ctx, boot, notes)
        rows.append({"category": c, "images": len(g), "count": float(r[k] * y[:, k].sum()),
                     "density": dens[0], "density_low": dens[1], "density_high": dens[2],
                     "fraction": frac[0], "fraction_low": frac[1], "fraction_high": frac[2],
                     "corrected": corr is not None, "validated_images": corr.n if corr is not None else 0,
                     "method": _method(len(g), corr, ctx), "note": "; ".join(dict.fromkeys(notes))})
    return rows


def _why_not(n: int, corr: Correction | None) -> str:
    if n < 2:
        return "one image: interval not estimable (needs at least 2 images per group)"
    if corr is not None and corr.n < 2:
        return "one verified image: interval not estimable (needs at least 2 verified images)"
    return "no variation between images: interval not estimable"


def _density(y, a, k, r, corr, ctx, boot, notes) -> tuple[float, float, float]:
    if a is None:
        notes.append("no area column: density not defined")
        return np.nan, np.nan, np.nan
    total_a = a.sum()
    est = float(r[k] * y[:, k].sum() / total_a)
    if est == 0:
        notes.append(f"none counted: density 0, upper bound from a Poisson count of 0 over {total_a:g} m² "
                     "(between-image variation not measurable)")
        return est, 0.0, float(r[k] * poisson_upper(ctx.level) / total_a)
    if boot is not None:
        low, high = _percentile(boot[0][:, k], ctx.level, len(y), corr)
    else:
        d, u = ratio_influence(y[:, k], a)
        comps = [Component(u / d)] + ([Component(corr.influence[:, k] / r[k])] if corr is not None else [])
        low, high, _ = t_interval(est, comps, ctx.level, "log")
    if np.isnan(low):
        notes.append(_why_not(len(y), corr))
    return est, low, high


def _fraction(y, k, r, corr, ctx, boot, notes) -> tuple[float, float, float]:
    totals = y.sum(0)
    if totals.sum() == 0:
        notes.append("no mussels counted: fraction not defined")
        return np.nan, np.nan, np.nan
    weighted = r * totals
    w = weighted.sum()
    f = float(weighted[k] / w)
    if f in (0.0, 1.0):
        n = int(round(totals.sum()))
        notes.append(f"fraction {f:g}: exact binomial bounds on the {n} pooled mussels "
                     "(between-image variation not measurable)")
        low, high = clopper_pearson(int(round(totals[k])), n, ctx.level)
        return f, low, high
    if boot is not None:
        low, high = _percentile(boot[1][:, k], ctx.level, len(y), corr)
    else:
        s = y @ r                                  # each image's (corrected) count of all categories
        scale = f * (1 - f)
        comps = [Component((r[k] * y[:, k] - f * s) / s.mean() / scale)]
        if corr is not None:
            grad = totals * ((np.arange(len(r)) == k) - f) / w   # d f / d ratio of each category
            comps.append(Component(corr.influence @ grad / scale))
        low, high, _ = t_interval(f, comps, ctx.level, "logit")
    if np.isnan(low):
        notes.append(_why_not(len(y), corr))
    return f, low, high


def _bootstrap(y, a, corr, ctx) -> tuple[np.ndarray, np.ndarray]:
    """Resampled (densities, fractions), each (n_boot, categories): images within the group, verified
    images on their own."""
    n = len(y)
    w = ctx.rng.multinomial(n, np.full(n, 1.0 / n), size=ctx.n_boot).astype(np.float64)
    yb = w @ y
    if corr is not None:
        wv = ctx.rng.multinomial(corr.n, np.full(corr.n, 1.0 / corr.n), size=ctx.n_boot).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            yb = yb * ((wv @ corr.true) / (wv @ corr.model))
    with np.errstate(invalid="ignore", divide="ignore"):
        dens = yb / (w @ a)[:, None] if a is not None else np.full_like(yb, np.nan)
        frac = yb / yb.sum(1, keepdims=True)
    return dens, frac


def _percentile(values: np.ndarray, level: float, n: int, corr: Correction | None) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if n < 2 or (corr is not None and corr.n < 2) or len(values) == 0 or values.min() == values.max():
        return np.nan, np.nan
    low, high = np.quantile(values, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high)


def _method(n: int, corr: Correction | None, ctx: _Context) -> str:
    pct = f"{ctx.level:.0%}"
    what = "ratio of sums over the group's images (density: count / area; fraction: category / all)"
    if corr is not None:
        what += f", counts times the detector's ratio true/model per category from {corr.n} verified images"
    if ctx.interval == "bootstrap":
        return f"{what}; {pct} percentile bootstrap of images within the group ({ctx.n_boot} resamples)"
    df = (f"Welch-Satterthwaite df of {n} images and {corr.n} verified, variances added" if corr is not None
          else f"df {n - 1}")
    return (f"{what}; {pct} t interval ({df}) from the linearized between-image variance, "
            "log scale for density, logit scale for fraction")
