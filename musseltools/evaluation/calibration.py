"""Calibration and survey totals: thresholds that make counts right, and totals with bootstrap intervals.

Calibration is exact: every distinct outcome of a class (each confidence at which a count changes) is
tried on its :class:`~musseltools.evaluation.curves.ClassCurve`. Survey totals resample images with
replacement; validated images give a ratio-corrected total.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..survey.ratio import Component, t_interval
from .curves import ClassCurve

__all__ = ["OBJECTIVES", "Objective", "bootstrap_sums", "check_objective", "calibrate", "survey_totals"]

Objective = Literal["mae", "total_bias"]
#: What calibration can minimise: the per-image count MAE, or the absolute error of the validated total.
OBJECTIVES = ("mae", "total_bias")


def check_objective(objective: str) -> str:
    """``objective`` when it is one of :data:`OBJECTIVES`, else a ValueError that lists them."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {OBJECTIVES}")
    return objective


# ========================================================================================= calibration
def calibrate(curves: Mapping[str, ClassCurve], classes: Sequence[str], conf_floor: float,
              objective: Objective) -> pd.DataFrame:
    """Per-class thresholds minimising count error, next to the F1-optimal ones (see ``Evaluation.calibrate``).

    Returns
    -------
    pandas.DataFrame
        ``class, best_threshold_count, best_threshold_f1, objective`` and the metrics at each.
    """
    check_objective(objective)
    rows = []
    for c in classes:
        cur = curves[c]
        m, t = cur.candidates(conf_floor)
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


def _middle_argmin(score: np.ndarray) -> int:
    best = np.nanmin(score)
    idx = np.flatnonzero(np.isclose(score, best, rtol=0, atol=1e-12))
    return int(idx[len(idx) // 2])


# ============================================================================================== totals
def survey_totals(
    survey: np.ndarray,
    predicted: np.ndarray,
    true: np.ndarray,
    classes: Sequence[str],
    *,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    fpc: bool = False,
) -> pd.DataFrame:
    """Survey totals per class with intervals, and ratio-corrected totals (see ``Evaluation.survey_totals``).

    The predicted total's interval resamples the survey's images (percentile bootstrap, ``n_boot``,
    ``seed``). The corrected total ``sum(true) / sum(predicted) * survey total`` gets the interval of
    :mod:`musseltools.survey.ratio`: the ratio's linearized variance over the validated images, log scale
    (logit for the live fraction), t quantile on ``validated - 1`` df. ``fpc`` multiplies the variance by
    the finite population correction ``1 - validated / survey images`` (right when the validated images
    are a random sample of the survey's; off by default: verified images are seldom drawn at random, and
    without it the interval held 92-96% rather than 92%). NaN bounds where the validated images cannot
    measure a variance: fewer than two, or the model exactly right on every one. The percentile
    bootstrap it replaces held 78-82% at 95% with 5 of 20 images validated
    (``benchmarks/survey_coverage.py``, docs/survey.md).

    Parameters
    ----------
    survey : numpy.ndarray, shape (images, classes)
        Predicted counts of every image of the survey.
    predicted, true : numpy.ndarray, shape (validated images, classes)
        Predicted and true counts of the validated images.
    classes : sequence of str
        The classes of the columns.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    classes = list(classes)
    rng = np.random.default_rng(seed)
    q = ((1 - ci) / 2, 1 - (1 - ci) / 2)
    S, P, T = survey, predicted, true
    boot_s = bootstrap_sums(S, n_boot, rng)  # (B, C)
    total = S.sum(0)
    finite = max(0.0, 1 - len(P) / len(S)) if fpc and len(S) else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = T.sum(0) / P.sum(0) if len(P) else np.full(len(classes), np.nan)
        corrected = ratio * total
        influence = (T - ratio * P) / P.mean(0) if len(P) else np.empty((0, len(classes)))
    rows = []
    for k, c in enumerate(classes):
        lo, hi = np.quantile(boot_s[:, k], q) if len(S) else (np.nan, np.nan)
        clo, chi = _corrected_interval(corrected[k], influence[:, k] / ratio[k] if ratio[k] > 0 else None,
                                       finite, ci, "log")
        rows.append({"class": c, "predicted_total": float(total[k]), "ci_low": float(lo), "ci_high": float(hi),
                     "validated_images": len(P), "validated_true": float(T[:, k].sum()) if len(T) else np.nan,
                     "validated_predicted": float(P[:, k].sum()) if len(P) else np.nan, "ratio": float(ratio[k]),
                     "corrected_total": float(corrected[k]), "corrected_ci_low": float(clo),
                     "corrected_ci_high": float(chi)})
    if "live" in classes and "dead" in classes:
        li, di = classes.index("live"), classes.index("dead")
        rows.append(_live_fraction_row(total[[li, di]], boot_s[:, [li, di]], ratio[[li, di]],
                                       influence[:, [li, di]], finite, ci, len(P)))
    return pd.DataFrame(rows)


def _corrected_interval(estimate: float, z: np.ndarray | None, finite: float, ci: float, scale: str
                        ) -> tuple[float, float]:
    """The t interval of a corrected estimate from its linearized values ``z`` on ``scale``; the estimate
    itself when every survey image is validated (``finite`` 0), NaN where not estimable."""
    if z is None or not np.isfinite(estimate) or len(z) < 2:
        return np.nan, np.nan
    if finite == 0:
        return estimate, estimate
    low, high, _ = t_interval(estimate, [Component(z, finite)], ci, scale)
    return low, high


def _live_fraction_row(total: np.ndarray, boot: np.ndarray, ratio: np.ndarray, influence: np.ndarray,
                       finite: float, ci: float, validated_images: int) -> dict[str, Any]:
    """The row ``class="live_fraction"``: live / (live + dead), from (live, dead) totals, their resamples,
    and the (live, dead) ratios and linearized values of the validated images."""
    q = ((1 - ci) / 2, 1 - (1 - ci) / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = total[0] / (total[0] + total[1])
        bf = boot[:, 0] / (boot[:, 0] + boot[:, 1])
        weighted = ratio * total
        cfrac = weighted[0] / weighted.sum()
    bf = bf[np.isfinite(bf)]
    lo, hi = np.quantile(bf, q) if len(bf) else (np.nan, np.nan)
    clo = chi = np.nan
    if 0 < cfrac < 1:
        grad = total * (np.array([1.0, 0.0]) - cfrac) / weighted.sum()  # d fraction / d ratio (live, dead)
        clo, chi = _corrected_interval(cfrac, influence @ grad / (cfrac * (1 - cfrac)), finite, ci, "logit")
    return {"class": "live_fraction", "predicted_total": float(frac), "ci_low": float(lo),
            "ci_high": float(hi), "validated_images": validated_images, "validated_true": np.nan,
            "validated_predicted": np.nan, "ratio": np.nan, "corrected_total": float(cfrac),
            "corrected_ci_low": float(clo), "corrected_ci_high": float(chi)}


def bootstrap_sums(x: np.ndarray, n_boot: int, rng: np.random.Generator, chunk: int = 256) -> np.ndarray:
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
