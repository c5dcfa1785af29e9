"""Matching detections to truth boxes, and average precision, computed as Ultralytics' ``val()`` does."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .geometry import box_iou

__all__ = ["IOU_THRESHOLDS", "match_detections", "average_precision"]

#: IoU thresholds of AP50-95 (0.50, 0.55, ..., 0.95), as in COCO and Ultralytics.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
#: Recall points of the 101-point interpolated AP (COCO).
_AP_RECALL = np.linspace(0.0, 1.0, 101)


def match_detections(
    pred_xyxy: np.ndarray,
    confidence: np.ndarray,
    true_xyxy: np.ndarray,
    iou_thresholds: Sequence[float] = (0.5,),
    *,
    iou: np.ndarray | None = None,
) -> np.ndarray:
    """Which predictions of one class in one image are true positives, at each IoU threshold.

    Greedy by confidence (COCO, Ultralytics): predictions are taken from the most to the least
    confident; each takes the unclaimed truth box it overlaps most, and is a true positive when that
    IoU reaches the threshold. A truth box is claimed once. ``iou`` (truth x predictions, in the
    order given) replaces the axis-aligned box IoU, e.g. with :func:`polygon_iou` of rotated boxes.

    Returns
    -------
    numpy.ndarray of bool, shape (N, T)
        In the order of the predictions given.

    Examples
    --------
    >>> truth = np.array([[0, 0, 10, 10]])
    >>> pred = np.array([[0, 0, 10, 10], [0, 0, 10, 9]])
    >>> match_detections(pred, np.array([0.6, 0.9]), truth)[:, 0].tolist()   # the 0.9 one claims it
    [False, True]
    """
    thr = np.asarray(iou_thresholds, np.float64)
    n = len(confidence)
    correct = np.zeros((n, len(thr)), bool)
    if n == 0 or len(true_xyxy) == 0:
        return correct
    order = np.argsort(-np.asarray(confidence, np.float64), kind="stable")
    if iou is None:
        iou = box_iou(true_xyxy, np.asarray(pred_xyxy))
    iou = np.asarray(iou)[:, order]  # (M truth, N predictions by confidence)
    claimed = np.zeros((iou.shape[0], len(thr)), bool)
    cols = np.arange(len(thr))
    hits = np.zeros((n, len(thr)), bool)
    for j in np.flatnonzero((iou >= thr.min()).any(0)):
        free = np.where(claimed, -1.0, iou[:, j, None])  # (M, T): IoU with each unclaimed truth box
        best = free.argmax(0)
        ok = free[best, cols] >= thr
        hits[j] = ok
        claimed[best[ok], cols[ok]] = True
    correct[order] = hits
    return correct


def average_precision(tp: np.ndarray, confidence: np.ndarray, n_true: int) -> np.ndarray:
    """Average precision per IoU column of ``tp`` (N, T), 101-point interpolated, as Ultralytics computes it.

    The precision envelope (running maximum from high recall down) is sampled at 101 recall points
    0, 0.01, ..., 1 and integrated with the trapezoidal rule, with sentinels (recall 0, precision 1)
    at the start and precision 0 after the last recall, as in ``ultralytics.utils.metrics.compute_ap``.
    NaN when there is no truth; 0 when there are no predictions. (A perfect detector scores 0.995,
    not 1: the trapezoid between recall 1.0 and the precision-0 sentinel, as in Ultralytics.)

    Examples
    --------
    >>> float(average_precision(np.array([[True], [True]]), np.array([0.9, 0.8]), 2)[0])   # perfect
    0.995
    >>> round(float(average_precision(np.array([[True], [False]]), np.array([0.9, 0.8]), 2)[0]), 4)
    0.495
    """
    tp = np.asarray(tp, bool)
    tp = tp[:, None] if tp.ndim == 1 else tp
    if n_true == 0:
        return np.full(tp.shape[1], np.nan)
    if len(confidence) == 0:
        return np.zeros(tp.shape[1])
    order = np.argsort(-np.asarray(confidence, np.float64), kind="stable")
    tpc = np.cumsum(tp[order], 0)
    fpc = np.cumsum(~tp[order], 0)
    recall = tpc / (n_true + 1e-16)
    precision = tpc / (tpc + fpc)
    return np.array([_ap(recall[:, j], precision[:, j]) for j in range(tp.shape[1])])


def _ap(recall: np.ndarray, precision: np.ndarray) -> float:
    r = np.concatenate(([0.0], recall, [recall[-1]], [1.0]))
    p = np.concatenate(([1.0], precision, [0.0], [0.0]))
    envelope = np.maximum.accumulate(p[::-1])[::-1]
    return float(np.trapezoid(np.interp(_AP_RECALL, r, envelope), _AP_RECALL))
