"""The check of an ONNX graph against torch: whether two sets of detections of one image agree.

:class:`~musseltools.models.onnx.OnnxPredictor` runs a run's first images through both backends and trusts a
graph only when every image's detections agree by :func:`compare_detections` (the rule is described there
and in :mod:`musseltools.models.onnx`). Kept apart from the backend so that both stay short; it needs numpy
(and shapely for outlines) only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.detections import Detections

__all__ = ["BOX_TOL", "CHECK_THRESHOLDS", "CONF_TOL", "OUTLINE_IOU", "OUTLINE_TOL", "compare_detections"]

#: Thresholds at which the check compares counts: any threshold a run may later be tuned to lies among them.
CHECK_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
#: The check's tolerances: confidences near a threshold may fall either side; box corners in pixels.
CONF_TOL = 1e-3
BOX_TOL = 0.5
#: Segment outlines agree within this many pixels of the mask (vertex to outline), or when they overlap by
#: :data:`OUTLINE_IOU` (intersection over union).
OUTLINE_TOL = 1.5
OUTLINE_IOU = 0.9


def _corner_gap(p: np.ndarray, q: np.ndarray) -> float:
    """The largest distance between paired corners of two rotated boxes, paired as the rectangles' corners
    (the same rectangle listed from another corner, or the other way round, is 0 px away)."""
    return min(float(np.abs(np.roll(r, k, axis=0) - p).max()) for r in (q, q[::-1]) for k in range(len(q)))


def _nearest(one: Detections, other: Detections, rotated: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For each detection of ``one``: the index of the nearest box of its class in ``other`` (-1: none) and
    the largest corner distance to it (inf: none); ``rotated``: the rotated boxes' corners, not the boxes'."""
    index, gap = np.full(len(one), -1), np.full(len(one), np.inf)
    for i in range(len(one)):
        same = np.flatnonzero(other.class_id == one.class_id[i])
        if len(same):
            d = (np.array([_corner_gap(one.polygons[i], other.polygons[j]) for j in same]) if rotated
                 else np.abs(other.xyxy[same] - one.xyxy[i]).max(axis=1))
            index[i], gap[i] = same[d.argmin()], d.min()
    return index, gap


def _polygon_iou(p: np.ndarray, qs: Sequence[np.ndarray]) -> np.ndarray:
    """Intersection over union of the outline ``p`` with each of ``qs`` (as areas; a self-crossing outline
    is taken as the area it encloses)."""
    import shapely

    a = shapely.make_valid(shapely.Polygon(p))
    bs = shapely.make_valid(shapely.polygons(list(qs))) if len(qs) else np.zeros(0, object)
    inter = shapely.area(shapely.intersection(a, bs))
    return inter / np.maximum(a.area + shapely.area(bs) - inter, 1e-9)


def _outlines_agree(p: np.ndarray, q: np.ndarray, mask_px: float) -> bool:
    """Two mask outlines of one detection agree: every vertex of each lies within :data:`OUTLINE_TOL` mask
    pixels of the other outline (mask edge pixels flip with the last bits of the mask's logits), or the
    outlines overlap by :data:`OUTLINE_IOU` (a one-pixel spur or gap of the mask appears in one only)."""
    import shapely

    if len(p) < 3 or len(q) < 3:
        return len(p) == len(q) and np.allclose(p, q, atol=OUTLINE_TOL * mask_px)
    if _polygon_iou(p, [q])[0] >= OUTLINE_IOU:
        return True
    return bool(shapely.hausdorff_distance(shapely.LinearRing(p), shapely.LinearRing(q)) <= OUTLINE_TOL * mask_px)


def _outline_mismatch(a: Detections, b: Detections, floor: float, box_tol: float, mask_px: float) -> str | None:
    """Why a segment's outline in one set has no counterpart in the other, else None. Its counterparts are
    the other set's detections of its class with the box within ``box_tol`` and the confidence within 1e-3;
    one must agree (:func:`_outlines_agree`). A saturated detection (confidence within 1e-3 of 1) is
    forgiven: NMS keeps one of several anchors tied at 1.0 over one box, each with its own mask."""
    for one, other in ((a, b), (b, a)):
        for i in np.flatnonzero((one.confidence >= floor + CONF_TOL) & (one.confidence < 1 - CONF_TOL)):
            twins = np.flatnonzero((other.class_id == one.class_id[i])
                                   & (np.abs(other.xyxy - one.xyxy[i]).max(axis=1) <= box_tol)
                                   & (np.abs(other.confidence - one.confidence[i]) <= CONF_TOL))
            if len(twins) and not any(_outlines_agree(one.polygons[i], other.polygons[j], mask_px) for j in twins):
                return (f"the outline of a class {one.class_id[i]} detection at {one.xyxy[i].round(1).tolist()} is "
                        f"over {OUTLINE_TOL:g} mask px from the other's, and overlaps it by under {OUTLINE_IOU:g}")
    return None


def _tied_rival(one: Detections, i: int, other: Detections, iou: float | None, rotated: bool = False) -> bool:
    """Whether ``other`` keeps, instead of ``one``'s detection ``i``, a box of its class that NMS would let
    suppress it (overlap over ``iou``) with a confidence within 1e-3: a tie NMS broke the other way (a
    saturated tile gives dozens of boxes at confidence 1.0). ``rotated``: overlaps of the rotated boxes (area
    IoU; Ultralytics' rotated NMS measures it with probiou, close to it); its NMS is "fast NMS", where a box
    suppressed by a box itself suppressed is gone too, so a saturated box (confidence within 1e-3 of 1)
    needs only a tied rival that overlaps it at all."""
    if iou is None:
        return False
    same = (other.class_id == one.class_id[i]) & (np.abs(other.confidence - one.confidence[i]) <= CONF_TOL)
    if not same.any():
        return False
    if rotated:  # fast NMS: a box suppressed by one that is itself suppressed, so the rival need not be kept
        limit = 0.0 if one.confidence[i] >= 1 - CONF_TOL else iou
        return bool((_polygon_iou(one.polygons[i], [other.polygons[j] for j in np.flatnonzero(same)]) > limit).any())
    box, boxes = one.xyxy[i], other.xyxy[same]
    inter = (np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
             * np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None))
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return bool((inter / np.maximum(area(boxes) + area(box) - inter, 1e-9) > iou).any())


def compare_detections(a: Detections, b: Detections, floor: float, box_tol: float = BOX_TOL,
                       iou: float | None = None, task: str = "detect", mask_px: float = 1.0) -> str | None:
    """None when two sets of detections of one image agree by the check's rule, else why not.

    Every detection above the floor (by more than 1e-3) has a box of its class in the other set within
    0.5 px. Per class, counts at the floor and at every :data:`CHECK_THRESHOLDS` are equal but for
    detections within 1e-3 of that threshold in both sets (0.4 against 0.3996 at 0.4 is forgiven, 0.4
    against 0.39 is not) and near-duplicates: a detection whose nearest box in the other
    set is also another's (NMS keeps or drops a near-duplicate whose overlap lies at the IoU threshold;
    1e-4 on an unclipped box decides it). With ``iou`` (the NMS IoU), a detection without a match is also
    forgiven when the other set keeps instead a box of its class overlapping it by more than ``iou`` with a
    confidence within 1e-3 (NMS broke a tie the other way).

    By task (the model's): ``obb`` matches the rotated boxes' four corners within 0.5 px (the corners paired
    as the rectangles', whichever corner each lists first) and measures NMS's overlap on the rotated boxes;
    ``segment`` also compares each mask outline with those of its twins in the other set (box within
    0.5 px, confidence within 1e-3): one must lie within 1.5 mask pixels (``mask_px``: image pixels per
    pixel of the mask) of it vertex by vertex, or overlap it by 0.9 (:func:`_outline_mismatch`).
    """
    rotated = task == "obb"
    na_, ga = _nearest(a, b, rotated)
    nb_, gb = _nearest(b, a, rotated)
    for one, index, gap in ((a, na_, ga), (b, nb_, gb)):
        other = b if one is a else a
        for i in np.flatnonzero((one.confidence >= floor + CONF_TOL) & (gap > box_tol)):
            if _tied_rival(one, i, other, iou, rotated):
                continue
            where = "has no match" if index[i] < 0 else f"is {gap[i]:.2f} px from the nearest (over {box_tol})"
            return f"a class {one.class_id[i]} box at {one.xyxy[i].round(1).tolist()} {where}"
    for cls in sorted(set(a.class_id.tolist()) | set(b.class_id.tolist())):
        for t in (floor, *CHECK_THRESHOLDS):
            shared, near, n = 0, [], []
            for one, index in ((a, na_), (b, nb_)):
                kept = (one.class_id == cls) & (one.confidence >= t)
                n.append(int(kept.sum()))
                near.append(int((np.abs(one.confidence[one.class_id == cls] - t) <= CONF_TOL).sum()))
                shared += int(kept.sum()) - len(set(index[kept].tolist()))  # several sharing one nearest box
            # A detection crosses t between the sets only when it lies within 1e-3 of t in both (its twin in
            # the other set is listed: it is above the floor), unless t is that close to the floor (the twin
            # may lie below it, unlisted).
            crossing = sum(near) if t - CONF_TOL < floor else min(near)
            if abs(n[0] - n[1]) > crossing + shared:
                return f"class {cls}: {n[0]} against {n[1]} detections at threshold {t:g}"
    return _outline_mismatch(a, b, floor, box_tol, mask_px) if task == "segment" else None
