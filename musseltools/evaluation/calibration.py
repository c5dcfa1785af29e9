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
) -> pd.DataFrame:
    """Survey totals per class with bootstrap intervals, and ratio-corrected totals (see
    ``Evaluation.survey_totals``).

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
    boot_p, boot_t = (bootstrap_sums(np.hstack([P, T]), n_boot, rng).reshape(n_boot, 2, -1).transpose(1, 0, 2)
                      if len(P) else (np.full((n_boot, len(classes)), np.nan),) * 2)
    total = S.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = T.sum(0) / P.sum(0) if len(P) else np.full(len(classes), np.nan)
        boot_ratio = boot_t / boot_p
        corrected = ratio * total
        boot_corr = boot_ratio * total
    rows = []
    for k, c in enumerate(classes):
        lo, hi = np.quantile(boot_s[:, k], q) if len(S) else (np.nan, np.nan)
        bc = boot_corr[:, k]
        bc = bc[np.isfinite(bc)]
        clo, chi = np.quantile(bc, q) if len(bc) and np.isfinite(corrected[k]) else (np.nan, np.nan)
        rows.append({"class": c, "predicted_total": float(total[k]), "ci_low": float(lo), "ci_high": float(hi),
                     "validated_images": len(P), "validated_true": float(T[:, k].sum()) if len(T) else np.nan,
                     "validated_predicted": float(P[:, k].sum()) if len(P) else np.nan, "ratio": float(ratio[k]),
                     "corrected_total": float(corrected[k]), "corrected_ci_low": float(clo),
                     "corrected_ci_high": float(chi)})
    if "live" in classes and "dead" in classes:
        li, di = classes.index("live"), classes.index("dead")
        rows.append(_live_fraction_row(total[[li, di]], boot_s[:, [li, di]], corrected[[li, di]],
                                       boot_corr[:, [li, di]], q, len(P)))
    return pd.DataFrame(rows)


def _live_fraction_row(total: np.ndarray, boot: np.ndarray, corrected: np.ndarray, boot_corr: np.ndarray,
                       q: tuple[float, float], validated_images: int) -> dict[str, Any]:
    """The row ``class="live_fraction"``: live / (live + dead), from (live, dead) totals and resamples."""
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = total[0] / (total[0] + total[1])
        bf = boot[:, 0] / (boot[:, 0] + boot[:, 1])
        cfrac = corrected[0] / (corrected[0] + corrected[1])
        bcf = boot_corr[:, 0] / (boot_corr[:, 0] + boot_corr[:, 1])
    bf, bcf = bf[np.isfinite(bf)], bcf[np.isfinite(bcf)]
    lo, hi = np.quantile(bf, q) if len(bf) else (np.nan, np.nan)
    clo, chi = np.quantile(bcf, q) if len(bcf) and np.isfinite(cfrac) else (np.nan, np.nan)
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
