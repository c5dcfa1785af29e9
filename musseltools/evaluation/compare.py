"""Comparing two runs over the same images: per-image counts, agreement, totals with intervals, disagreements.

Two runs of the same images (a YOLO model and a Faster R-CNN, two versions of one model, or one model
with other settings) are compared on the images that have a result in both, per category that both
count (a class map gives two models common categories), each run at its own thresholds in effect
(saved per-class thresholds, else the run's threshold) unless others are given, with hand corrections
applied (``corrected=False``: the models alone). No inference: everything comes from the store.

Every difference is **B − A** (how many more B counts than A).

- **Per image**: both counts of each category, their difference, and the image's ``disagreement``:
  the sum over categories of the absolute differences (:func:`musseltools.results.views.count_disagreement`).
- **Agreement** per category (Bland and Altman): the mean difference (bias), the standard deviation
  of the differences, and the limits of agreement, ``mean ± z · sd`` (z = 1.96 for 95 %): where the
  difference of about 95 % of images lies. :func:`musseltools.plots.compare.bland_altman` draws it.
- **Totals** per category for A, B and B − A with percentile intervals from a paired bootstrap over
  images (images are resampled with both of their counts).
- **Disagreements**: the images where the two runs disagree most, most first. They head the review
  queue of run A given run B (``run_a.review_queue(other=run_b)``, the correction editor's
  ``other=``), which ranks by the same ``disagreement``.

Examples
--------
>>> import musseltools as mt                                                        # doctest: +SKIP
>>> c = mt.compare(yolo_run, frcnn_run)                                             # doctest: +SKIP
>>> c.agreement.loc["live", ["mean_difference", "loa_low", "loa_high"]]            # doctest: +SKIP
>>> c.disagreements(5)[["path", "live_a", "live_b", "disagreement"]]               # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from ..errors import MusselToolsError
from ..results import views
from ..runs.run import Run
from ..store.store import Store
from .calibration import bootstrap_sums

__all__ = ["Comparison", "compare", "setting_text"]


@dataclass
class Comparison:
    """Two runs compared on the images both have results for (see the module docstring).

    Attributes
    ----------
    run_a, run_b : dict
        What was compared: ``run_id, model, family, fingerprint, inference_key, thresholds, settings`` of
        each run (``settings``: its inference settings, as recorded in ``run.json``).
    categories : list of str
        The categories both runs count.
    images : pandas.DataFrame
        One row per image with results in both runs: ``image_id, path``, then per category ``C_a, C_b,
        C_diff`` (B − A), and ``disagreement``; in path order.
    agreement : pandas.DataFrame
        Indexed by category: ``n, mean_a, mean_b, mean_difference, sd_difference, loa_low, loa_high,
        mean_abs_difference`` (limits of agreement at :attr:`level`; ``sd`` and the limits are NaN for
        one image).
    totals : pandas.DataFrame
        Indexed by category: ``a, a_low, a_high, b, b_low, b_high, difference, difference_low,
        difference_high`` (bootstrap intervals at :attr:`level`).
    only_a, only_b : list of str
        Image ids with a result in one run only (not compared).
    level : float
        The coverage of the limits of agreement and of the intervals (0.95).
    n_boot : int
        Bootstrap resamples.
    """

    run_a: dict[str, Any]
    run_b: dict[str, Any]
    categories: list[str]
    images: pd.DataFrame
    agreement: pd.DataFrame
    totals: pd.DataFrame
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    level: float = 0.95
    n_boot: int = 2000

    @property
    def labels(self) -> tuple[str, str]:
        """Short names of the two runs for figures: ``A: model.pt (run 5f42afff1ce4)``, ``B: ...``."""
        return tuple(f"{k}: {Path(r['model']).name} (run {r['run_id']})"  # type: ignore[return-value]
                     for k, r in (("A", self.run_a), ("B", self.run_b)))

    @property
    def differences(self) -> pd.DataFrame:
        """What differs between the two runs besides their counts: one row per setting (``weights``,
        ``family``, ``thresholds`` and each inference setting) whose values differ, indexed by ``setting``,
        with columns ``a`` and ``b`` (as text). Empty when both ran the same weights the same way: then
        every difference of counts is zero, unless hand corrections differ."""
        return _differences(self.run_a, self.run_b)

    def describe(self) -> str:
        """Both runs (run id, weights, family, thresholds) and each setting that differs, as lines of text:
        what a reader needs before any figure of the comparison."""
        lines = [f"{label}, {r['family']}, thresholds {setting_text(r['thresholds'])}"
                 for label, r in zip(self.labels, (self.run_a, self.run_b))]
        diff = self.differences
        if diff.empty:
            lines.append("same weights, settings and thresholds")
        else:
            lines.append("differ in " + "; ".join(f"{k}: A {row['a']}, B {row['b']}" for k, row in diff.iterrows()))
        return "\n".join(lines)

    def disagreements(self, n: int | None = 10) -> pd.DataFrame:
        """The images where the two runs disagree (``disagreement > 0``), most first (ties by path); ``n`` of them."""
        out = self.images[self.images["disagreement"] > 0]
        out = out.sort_values(["disagreement", "path"], ascending=[False, True], kind="stable").reset_index(drop=True)
        return out if n is None else out.head(int(n))

    def to_json(self, top: int | None = 10) -> dict[str, Any]:
        """A JSON-ready dict (NaN as None): the contract of ``musseltools compare --json``.

        Keys: ``run_a, run_b, difference ("b - a"), categories, images_compared, only_in_a, only_in_b,
        level, n_boot, agreement`` (by category), ``totals`` (by category), ``disagreements`` (the ``top``
        images, most first), ``images`` (every compared image) and ``settings_differ`` (``{setting: {a, b}}``
        of :attr:`differences`); an image is ``{image_id, path, counts_a, counts_b, disagreement}``.
        """
        return {
            "run_a": self.run_a, "run_b": self.run_b, "difference": "b - a", "categories": list(self.categories),
            "images_compared": len(self.images), "only_in_a": len(self.only_a), "only_in_b": len(self.only_b),
            "level": self.level, "n_boot": self.n_boot,
            "agreement": {c: _plain(row) for c, row in self.agreement.to_dict(orient="index").items()},
            "totals": {c: _plain(row) for c, row in self.totals.to_dict(orient="index").items()},
            "disagreements": [self._image(r) for r in self.disagreements(top).to_dict(orient="records")],
            "images": [self._image(r) for r in self.images.to_dict(orient="records")],
            "settings_differ": self.differences.to_dict(orient="index"),
        }

    def _image(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"image_id": row["image_id"], "path": row["path"],
                "counts_a": {c: int(row[f"{c}_a"]) for c in self.categories},
                "counts_b": {c: int(row[f"{c}_b"]) for c in self.categories},
                "disagreement": int(row["disagreement"])}


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        v = v.item() if isinstance(v, np.generic) else v
        out[str(k)] = None if isinstance(v, float) and not math.isfinite(v) else v
    return out


def _open(run: Run | str, store: Store | str | os.PathLike | None) -> Run:
    return run if isinstance(run, Run) else Run(store, run)


def _describe(run: Run, threshold: Any) -> dict[str, Any]:
    m = run.meta
    return {"run_id": run.run_id, "model": m["model"]["path"], "family": m["model"].get("family", "ultralytics"),
            "fingerprint": m["model"]["fingerprint"], "inference_key": m["inference_key"],
            "thresholds": run.rule(threshold).to_json(run.class_names), "settings": dict(m["settings"])}


def setting_text(value: Any) -> str:
    """A setting as shown: ``0.35``, ``live=0.35, dead=0.23``, ``none`` for None."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={setting_text(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def _differences(a: dict[str, Any], b: dict[str, Any]) -> pd.DataFrame:
    rows = []
    if a["fingerprint"] != b["fingerprint"]:
        rows.append({"setting": "weights", "a": f"{Path(a['model']).name} (SHA-256 {a['fingerprint'][:12]})",
                     "b": f"{Path(b['model']).name} (SHA-256 {b['fingerprint'][:12]})"})
    pairs = {"family": (a["family"], b["family"]), "thresholds": (a["thresholds"], b["thresholds"])}
    sa, sb = a.get("settings") or {}, b.get("settings") or {}
    pairs |= {k: (sa.get(k), sb.get(k)) for k in dict.fromkeys([*sa, *sb])}
    for name, (va, vb) in pairs.items():
        if va != vb:
            rows.append({"setting": name, "a": setting_text(va), "b": setting_text(vb)})
    return pd.DataFrame(rows, columns=["setting", "a", "b"]).set_index("setting")


def _shared_categories(a: Run, b: Run) -> list[str]:
    cats = [c for c in a.categories if c in b.categories]
    if not cats:
        raise MusselToolsError(
            f"runs {a.run_id} and {b.run_id} share no category (A counts {a.categories}, B counts {b.categories}) — "
            "expected at least one category in common — give one model a class map (--class-map NAME=CATEGORY) "
            "onto the other's categories"
        )
    return cats


def _agreement(images: pd.DataFrame, cats: list[str], level: float) -> pd.DataFrame:
    z = NormalDist().inv_cdf(0.5 + level / 2)
    rows = []
    for c in cats:
        d = images[f"{c}_diff"].to_numpy(np.float64)
        n = len(d)
        sd = float(np.std(d, ddof=1)) if n > 1 else math.nan
        mean = float(d.mean())
        rows.append({"category": c, "n": n, "mean_a": float(images[f"{c}_a"].mean()),
                     "mean_b": float(images[f"{c}_b"].mean()), "mean_difference": mean, "sd_difference": sd,
                     "loa_low": mean - z * sd, "loa_high": mean + z * sd,
                     "mean_abs_difference": float(np.abs(d).mean())})
    return pd.DataFrame(rows).set_index("category")


def _totals(images: pd.DataFrame, cats: list[str], level: float, n_boot: int, seed: int) -> pd.DataFrame:
    a = images[[f"{c}_a" for c in cats]].to_numpy(np.float64)
    b = images[[f"{c}_b" for c in cats]].to_numpy(np.float64)
    boot = bootstrap_sums(np.hstack([a, b]), n_boot, np.random.default_rng(seed))  # paired: one draw per image
    k = len(cats)
    boot_a, boot_b = boot[:, :k], boot[:, k:]
    q = ((1 - level) / 2, 1 - (1 - level) / 2)
    rows = []
    for i, c in enumerate(cats):
        row: dict[str, Any] = {"category": c}
        for name, total, draws in (("a", a[:, i].sum(), boot_a[:, i]), ("b", b[:, i].sum(), boot_b[:, i]),
                                   ("difference", b[:, i].sum() - a[:, i].sum(), boot_b[:, i] - boot_a[:, i])):
            lo, hi = np.quantile(draws, q)
            row |= {name: int(total), f"{name}_low": float(lo), f"{name}_high": float(hi)}
        rows.append(row)
    return pd.DataFrame(rows).set_index("category")


def compare(
    run_a: Run | str,
    run_b: Run | str,
    *,
    store: Store | str | os.PathLike | None = None,
    threshold_a: Any | None = None,
    threshold_b: Any | None = None,
    corrected: bool = True,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare two runs over the images both have results for (see the module docstring).

    Parameters
    ----------
    run_a, run_b : Run or str
        The runs (or their ids, in ``store``). Differences are B − A.
    store : path or Store, optional
        Where run ids are looked up.
    threshold_a, threshold_b : optional
        Thresholds of each run (a number, ``"live=0.45,dead=0.6"``, a mapping); default: each run's
        thresholds in effect.
    corrected : bool
        Counts with hand corrections (default) or of the models alone.
    level : float
        Coverage of the limits of agreement and of the bootstrap intervals.
    n_boot, seed : int
        Bootstrap resamples and the seed that makes them reproducible.

    Raises
    ------
    MusselToolsError
        The runs share no category, or no image with a result in both.

    Examples
    --------
    >>> c = compare("5f42afff1ce4", "1a2b3c4d5e6f", store="data/store")   # doctest: +SKIP
    >>> c.totals.loc["live", ["a", "b", "difference", "difference_low", "difference_high"]]  # doctest: +SKIP
    """
    if not 0 < level < 1:
        raise ValueError(f"level {level!r} is not a coverage — expected a number in (0, 1), e.g. 0.95")
    a, b = _open(run_a, store), _open(run_b, store)
    cats = _shared_categories(a, b)
    table_a = views.with_results(a.per_image(threshold_a, corrected=corrected))
    table_b = views.with_results(b.per_image(threshold_b, corrected=corrected))
    merged = table_a[["image_id", "path", *cats]].merge(table_b[["image_id", *cats]], on="image_id",
                                                        suffixes=("_a", "_b"))
    if merged.empty:
        raise MusselToolsError(
            f"runs {a.run_id} and {b.run_id} have no image with a result in both ({len(table_a)} and {len(table_b)} "
            "images with results) — expected two runs over the same images — run the second model on the first "
            "run's images"
        )
    images = merged[["image_id", "path"]].copy()
    for c in cats:
        images[f"{c}_a"], images[f"{c}_b"] = merged[f"{c}_a"].astype("int64"), merged[f"{c}_b"].astype("int64")
        images[f"{c}_diff"] = images[f"{c}_b"] - images[f"{c}_a"]
    mine = merged[["image_id", *[f"{c}_a" for c in cats]]].rename(columns=lambda k: k.removesuffix("_a"))
    theirs = table_b[["image_id", "error", "processed_at", *cats]]
    images["disagreement"] = views.count_disagreement(mine, theirs, cats).to_numpy()
    images = images.sort_values("path", kind="stable").reset_index(drop=True)
    ids_a, ids_b = set(table_a["image_id"]), set(table_b["image_id"])
    return Comparison(
        run_a=_describe(a, threshold_a), run_b=_describe(b, threshold_b), categories=cats, images=images,
        agreement=_agreement(images, cats, level), totals=_totals(images, cats, level, n_boot, seed),
        only_a=sorted(ids_a - ids_b), only_b=sorted(ids_b - ids_a), level=level, n_boot=n_boot,
    )
