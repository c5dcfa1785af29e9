"""Cross-validated count error of one inference setting: thresholds chosen on some images, error measured on others.

A setting's in-sample error (thresholds calibrated on the labelled images, error on the same images)
flatters whichever setting has the most freedom to fit a few images. Here the labelled images are
split into folds (:func:`folds`: leave-one-out below :data:`LOO_BELOW` images, else
:data:`K_FOLDS`-fold); per fold, thresholds per class are calibrated on the other images exactly as
``evaluate``'s calibration does (:func:`musseltools.evaluation.calibration.calibrate`), and the count
error is measured on the held-out images at those thresholds. Every image is held out once.

The count error of an image is the sum over classes of ``|predicted - true|`` (classes the truth has);
errors below are means over images.

Examples
--------
>>> import pandas as pd
>>> dets = pd.DataFrame({"image_id": ["a", "a", "b", "c"], "class": ["live"] * 4,
...                      "confidence": [0.9, 0.3, 0.8, 0.85]})
>>> truth = pd.DataFrame({"live": [1, 1, 1]}, index=pd.Index(["a", "b", "c"], name="image_id"))
>>> r = cross_validate(dets, truth, ["live"], conf_floor=0.01, fallback={"live": 0.5})
>>> r.method, round(r.cv_error, 3), r.in_sample_error, r.thresholds["live"] > 0.3
('leave-one-out', 0.333, 0.0, True)

(Held out, image ``a`` is counted at the threshold that ``b`` and ``c`` chose, the floor: its 0.3
detection counts, an error the in-sample figure hides.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..core.thresholds import TOLERANCE
from .calibration import Objective, calibrate
from .curves import build_curves

__all__ = ["LOO_BELOW", "K_FOLDS", "CrossValidation", "folds", "count_errors", "choose_thresholds", "cross_validate"]

#: Below this many labelled images every image is held out alone (leave-one-out); from it on, k-fold.
LOO_BELOW = 10
#: Folds of the k-fold split (10 or more labelled images).
K_FOLDS = 5


@dataclass(frozen=True)
class CrossValidation:
    """One setting's thresholds and count errors (means over images of the summed per-class |error|).

    ``cv_error`` is NaN with a single labelled image (nothing to train on when it is held out).
    """

    method: str
    thresholds: dict[str, float]  # calibrated on every labelled image (what a card would carry)
    in_sample_error: float
    cv_error: float
    cv_errors: np.ndarray  # per image, as held out (in the order of the truth's index)


def folds(n: int, *, seed: int = 0) -> tuple[str, list[np.ndarray]]:
    """The held-out index sets of ``n`` images and the method's name.

    >>> folds(3)
    ('leave-one-out', [array([0]), array([1]), array([2])])
    >>> method, held = folds(12)
    >>> method, sorted(len(h) for h in held), sorted(np.concatenate(held).tolist()) == list(range(12))
    ('5-fold', [2, 2, 2, 3, 3], True)
    """
    if n < LOO_BELOW:
        return "leave-one-out", [np.array([i]) for i in range(n)]
    order = np.random.default_rng(seed).permutation(n)
    return f"{K_FOLDS}-fold", [np.sort(part) for part in np.array_split(order, K_FOLDS)]


def count_errors(dets: pd.DataFrame, true_counts: pd.DataFrame, thresholds: Mapping[str, float],
                 classes: Sequence[str]) -> np.ndarray:
    """Per image (the rows of ``true_counts``), the sum over ``classes`` of |detections counted - true|.

    A detection counts when ``confidence >= threshold - TOLERANCE`` (the one rule of
    :mod:`musseltools.core.thresholds`).

    >>> d = pd.DataFrame({"image_id": ["a", "a"], "class": ["live", "dead"], "confidence": [0.6, 0.2]})
    >>> t = pd.DataFrame({"live": [2], "dead": [1]}, index=["a"])
    >>> count_errors(d, t, {"live": 0.5, "dead": 0.5}, ["live", "dead"]).tolist()
    [2.0]
    """
    ids = true_counts.index
    err = np.zeros(len(ids))
    for c in classes:
        d = dets[(dets["class"] == c) & (dets["confidence"].to_numpy(np.float64) >= thresholds[c] - TOLERANCE)]
        predicted = d["image_id"].value_counts().reindex(ids, fill_value=0).to_numpy(np.float64)
        err += np.abs(predicted - true_counts[c].to_numpy(np.float64))
    return err


def choose_thresholds(dets: pd.DataFrame, true_counts: pd.DataFrame, classes: Sequence[str], *, conf_floor: float,
                      fallback: Mapping[str, float], objective: Objective = "mae") -> dict[str, float]:
    """Per class, the threshold of least count error on these images (``evaluate``'s calibration); a class
    that calibration leaves without one (no truth of it) keeps ``fallback``'s."""
    ids = true_counts.index.to_numpy()
    curves = build_curves(list(classes), ids, true_counts, dets, None, 0.5, present=set(classes))
    table = calibrate(curves, list(classes), conf_floor, objective).set_index("class")["best_threshold_count"]
    return {c: float(fallback[c]) if pd.isna(table.get(c)) else float(table[c]) for c in classes}


def cross_validate(dets: pd.DataFrame, true_counts: pd.DataFrame, classes: Sequence[str], *, conf_floor: float,
                   fallback: Mapping[str, float], objective: Objective = "mae", seed: int = 0) -> CrossValidation:
    """Thresholds on all images, in-sample error, and the cross-validated error (see the module docstring).

    Parameters
    ----------
    dets : pandas.DataFrame
        ``image_id, class, confidence``: every stored detection of the labelled images (class: category).
    true_counts : pandas.DataFrame
        True counts, one row per labelled image (index ``image_id``), one column per class of ``classes``.
    classes : sequence of str
        The classes the truth has (the error sums over them).
    fallback : mapping
        The threshold of a class that calibration cannot choose (the run's).
    """
    classes = list(classes)
    th_all = choose_thresholds(dets, true_counts, classes, conf_floor=conf_floor, fallback=fallback,
                               objective=objective)
    in_sample = float(count_errors(dets, true_counts, th_all, classes).mean())
    n = len(true_counts)
    method, held = folds(n, seed=seed)
    cv = np.full(n, np.nan)
    if n > 1:
        for test in held:
            train = np.setdiff1d(np.arange(n), test)
            th = choose_thresholds(dets, true_counts.iloc[train], classes, conf_floor=conf_floor, fallback=fallback,
                                   objective=objective)
            cv[test] = count_errors(dets, true_counts.iloc[test], th, classes)
    return CrossValidation(method, th_all, in_sample, float(cv.mean()) if n > 1 else float("nan"), cv)
