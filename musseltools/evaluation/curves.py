"""Per-class curves: every metric of one class accumulated along its detections by decreasing confidence.

Every metric is a step function of the threshold that changes only at detection confidences. The
detections of each class are sorted by confidence once and every metric is accumulated along that
order, so the value at any threshold (and the exact optimum over all thresholds) is a binary search,
never a re-filtering of the detections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..core.thresholds import TOLERANCE
from .geometry import polygon_iou
from .matching import IOU_THRESHOLDS, average_precision, match_detections

__all__ = ["ClassCurve", "build_curves"]


@dataclass
class ClassCurve:
    """One class's metrics accumulated along its detections sorted by decreasing confidence.

    Index ``m`` (0..K) means "the ``m`` most confident detections are kept"; every array has K + 1
    entries, entry 0 being "nothing kept".
    """

    name: str
    conf: np.ndarray  # (K,) decreasing
    n_true: int  # truth objects (or summed true counts) on validated images
    n_images: int
    tp: np.ndarray | None  # (K+1,) cumulative true positives at the evaluation IoU (None: counts only)
    abs_err: np.ndarray  # (K+1,) sum over images of |predicted - true|
    sq_err: np.ndarray  # (K+1,) sum of squares
    err: np.ndarray  # (K+1,) sum of (predicted - true)
    ap: np.ndarray  # (10,) AP at IoU 0.5..0.95 (NaN when counts only or no truth)

    def index(self, threshold: float | np.ndarray) -> np.ndarray:
        """Number of detections kept at a threshold (``confidence >= threshold - TOLERANCE``)."""
        return np.searchsorted(-self.conf, -np.asarray(threshold, np.float64) + TOLERANCE, side="right")

    def stats(self, m: np.ndarray | int) -> dict[str, np.ndarray]:
        """Every metric when the ``m`` most confident detections are kept (``m`` from :meth:`index`)."""
        m = np.asarray(m)
        n = max(self.n_images, 1)
        pred_total = m.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {
                "count_mae": self.abs_err[m] / n if self.n_images else np.full(m.shape, np.nan),
                "count_rmse": np.sqrt(self.sq_err[m] / n) if self.n_images else np.full(m.shape, np.nan),
                "count_bias": self.err[m] / n if self.n_images else np.full(m.shape, np.nan),
                "total_rel_error": (pred_total - self.n_true) / self.n_true if self.n_true else
                np.full(m.shape, np.nan),
                "predicted_total": pred_total,
                "true_total": np.full(m.shape, float(self.n_true)),
            }
            if self.tp is not None:
                tp = self.tp[m].astype(np.float64)
                fp = pred_total - tp
                fn = self.n_true - tp
                out.update(
                    tp=tp, fp=fp, fn=fn,
                    precision=np.where(pred_total > 0, tp / np.maximum(pred_total, 1), np.nan),
                    recall=np.where(self.n_true > 0, tp / max(self.n_true, 1), np.nan),
                    f1=np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan),
                )
            else:
                nan = np.full(m.shape, np.nan)
                out.update(tp=nan, fp=nan, fn=nan, precision=nan, recall=nan, f1=nan)
        return out

    def candidates(self, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """Every distinct outcome as (detections kept ``m``, a threshold that keeps exactly them).

        Thresholds lie midway between neighbouring distinct confidences, so that rounding of stored
        confidences cannot flip a detection across them; "keep all" is the floor. ``m`` is recomputed
        from the threshold, so a reported optimum is exactly what applying its threshold gives.
        """
        c = self.conf
        if len(c) == 0:
            return np.array([0]), np.array([floor])
        last = np.flatnonzero(np.r_[c[1:] != c[:-1], True])  # last index of each run of equal confidences
        kept = c[last]  # confidence of the last detection kept, per candidate m = last + 1
        dropped = np.r_[c[last[:-1] + 1], np.nan]  # confidence of the first detection dropped
        t = np.r_[(1.0 + c[0]) / 2, (kept + dropped) / 2]
        t[-1] = floor
        if c[0] >= 1.0:  # nothing can drop a detection of confidence 1
            t = t[1:]
        return self.index(t), t


def _accumulate_counts(image_index: np.ndarray, true_counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sums over images of |e|, e**2 and e, e = predicted - true, after keeping each next detection.

    ``image_index`` gives the image of each detection, in decreasing confidence. Keeping one more
    detection in image i raises e_i by one: |e_i| grows by one when e_i >= 0 before (else shrinks), and
    e_i**2 grows by 2 e_i + 1; e_i before is (detections of i already kept) - true_i.
    """
    k = len(image_index)
    e0 = -true_counts.astype(np.float64)
    if k == 0:
        z = np.zeros(1)
        return z + np.abs(e0).sum(), z + (e0**2).sum(), z + e0.sum()
    order = np.argsort(image_index, kind="stable")
    rank = np.empty(k, np.int64)
    sorted_img = image_index[order]
    starts = np.r_[0, np.flatnonzero(sorted_img[1:] != sorted_img[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, k]))
    rank[order] = np.arange(k) - run_start  # detections of the same image kept before this one
    e_before = rank + e0[image_index]
    d_abs = np.where(e_before >= 0, 1.0, -1.0)
    d_sq = 2 * e_before + 1
    cum = lambda d, start: np.r_[start, start + np.cumsum(d)]  # noqa: E731
    return cum(d_abs, np.abs(e0).sum()), cum(d_sq, (e0**2).sum()), cum(np.ones(k), e0.sum())


def build_curves(
    classes: list[str],
    image_ids: np.ndarray,
    true_counts: pd.DataFrame,
    dets: pd.DataFrame,
    boxes: pd.DataFrame | None,
    iou: float,
    present: set[str],
    rotated: bool = False,
) -> dict[str, ClassCurve]:
    """One :class:`ClassCurve` per class.

    Parameters
    ----------
    classes : list of str
        The evaluated classes (categories).
    image_ids : numpy.ndarray
        The validated images, in order.
    true_counts : pandas.DataFrame
        True counts per validated image (index ``image_id``) and class.
    dets : pandas.DataFrame
        ``image_id, class, confidence, x1, y1, x2, y2`` (and ``polygon`` when ``rotated``): every stored
        detection.
    boxes : pandas.DataFrame or None
        Truth boxes in pixels, ``image_id, class, x1, y1, x2, y2`` (and ``corners``); None for counts.
    iou : float
        The IoU of a match for TP/FP/FN (AP50-95 uses :data:`IOU_THRESHOLDS` as well).
    present : set of str
        Classes the truth has (others get NaN count metrics).
    rotated : bool
        Match rotated boxes (label ``corners`` against detection ``polygon``) instead of enclosing boxes.
    """
    index = {v: i for i, v in enumerate(image_ids)}
    d = dets[dets["image_id"].isin(index)]
    iou_cols = np.unique(np.r_[IOU_THRESHOLDS, iou])
    at = int(np.flatnonzero(np.isclose(iou_cols, iou))[0])
    ap_cols = [int(np.flatnonzero(np.isclose(iou_cols, t))[0]) for t in IOU_THRESHOLDS]
    curves = {}
    for c in classes:
        dc = d[d["class"] == c]
        conf = dc["confidence"].to_numpy(np.float64)
        n_images = len(image_ids) if c in present else 0
        tc = true_counts[c].to_numpy(np.int64) if c in present else np.zeros(len(image_ids), np.int64)
        tp_flags = None
        if boxes is not None and c in present:
            tp_flags = _true_positives(dc, boxes[boxes["class"] == c], iou_cols, rotated)
        order = np.argsort(-conf, kind="stable")
        conf_s = conf[order]
        img_s = dc["image_id"].map(index).to_numpy(np.int64)[order]
        abs_e, sq_e, e = _accumulate_counts(img_s, tc)
        n_true = int(tc.sum())
        if tp_flags is not None:
            tp_s = tp_flags[order]
            tp_cum = np.r_[0, np.cumsum(tp_s[:, at])]
            ap = average_precision(tp_s[:, ap_cols], conf_s, n_true)
        else:
            tp_cum = None
            ap = np.full(len(IOU_THRESHOLDS), np.nan)
        if n_images == 0:
            abs_e = sq_e = e = np.full(len(conf_s) + 1, np.nan)
        curves[c] = ClassCurve(c, conf_s, n_true, n_images, tp_cum, abs_e, sq_e, e, ap)
    return curves


def _true_positives(dc: pd.DataFrame, bc: pd.DataFrame, iou_cols: np.ndarray, rotated: bool) -> np.ndarray:
    """TP flags (detections of one class x IoU thresholds), matched image by image against its truth boxes."""
    tp_flags = np.zeros((len(dc), len(iou_cols)), bool)
    truth_by_img = {k: g for k, g in bc.groupby("image_id")}
    pos = np.arange(len(dc))
    for iid, rows in dc.groupby("image_id").indices.items():
        t = truth_by_img.get(iid)
        if t is None:
            continue
        sub = dc.iloc[rows]
        t_xyxy = t[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
        p_xyxy = sub[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
        m = polygon_iou(list(t["corners"]), [np.asarray(p.tolist() if hasattr(p, "tolist") else p, float)
                                              for p in sub["polygon"]], min_iou=iou_cols.min()) if rotated else None
        tp_flags[pos[rows]] = match_detections(p_xyxy, sub["confidence"].to_numpy(np.float64), t_xyxy,
                                               iou_cols, iou=m)
    return tp_flags
