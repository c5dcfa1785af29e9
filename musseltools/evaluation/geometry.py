"""Overlap of boxes and polygons: axis-aligned box IoU, and exact IoU of convex polygons (rotated boxes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["box_iou", "polygon_iou"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (M, 4) with every box in ``b`` (N, 4), xyxy; shape (M, N).

    Examples
    --------
    >>> box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 5], [20, 20, 30, 30]])).round(3).tolist()
    [[0.5, 0.0]]
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-7)


def polygon_iou(a: Sequence[np.ndarray], b: Sequence[np.ndarray], *, min_iou: float = 0.0) -> np.ndarray:
    """IoU of convex polygons (e.g. rotated boxes as 4 corners): every one of ``a`` with every one of
    ``b``, shape (len(a), len(b)). Only pairs whose enclosing boxes overlap are intersected, and with
    ``min_iou``, only pairs that could reach it (the others are left 0).

    The intersection is clipped polygon by polygon (Sutherland-Hodgman), which stays exact for nearly
    identical polygons, where OpenCV's ``intersectConvexConvex`` can return 0.

    Examples
    --------
    >>> sq = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    >>> diamond = np.array([[5, -5], [15, 5], [5, 15], [-5, 5]], float)   # the square turned 45 degrees
    >>> polygon_iou([sq], [sq + [5, 0], diamond]).round(4).tolist()
    [[0.3333, 0.5]]
    """
    pa = [_ccw(np.asarray(p, np.float64).reshape(-1, 2)) for p in a]
    pb = [_ccw(np.asarray(p, np.float64).reshape(-1, 2)) for p in b]
    out = np.zeros((len(pa), len(pb)))
    if not pa or not pb:
        return out
    box = lambda ps: np.array([[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()] for p in ps])  # noqa: E731
    ba, bb = box(pa), box(pb)
    area_a = np.array([_area(p) for p in pa])
    area_b = np.array([_area(p) for p in pb])
    iw = np.minimum(ba[:, None, 2], bb[None, :, 2]) - np.maximum(ba[:, None, 0], bb[None, :, 0])
    ih = np.minimum(ba[:, None, 3], bb[None, :, 3]) - np.maximum(ba[:, None, 1], bb[None, :, 1])
    overlap = (iw > 0) & (ih > 0)
    if min_iou > 0:  # the polygons' intersection is at most their enclosing boxes' intersection
        bound = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        bound = np.minimum(bound, np.minimum(area_a[:, None], area_b[None, :]))
        overlap &= bound / (area_a[:, None] + area_b[None, :] - bound + 1e-7) >= min_iou - 1e-9
    la, lb = [p.tolist() for p in pa], [p.tolist() for p in pb]
    for i, j in zip(*np.nonzero(overlap)):
        inter = _area(np.array(_clip(la[i], lb[j]))) if len(la[i]) > 2 and len(lb[j]) > 2 else 0.0
        out[i, j] = inter / (area_a[i] + area_b[j] - inter + 1e-7)
    return out


def _area(p: np.ndarray) -> float:
    """Area of a simple polygon (shoelace)."""
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def _ccw(p: np.ndarray) -> np.ndarray:
    """The polygon with its corners in counter-clockwise order (y up)."""
    if len(p) < 3:
        return p
    x, y = p[:, 0], p[:, 1]
    return p if np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)) >= 0 else p[::-1]


def _clip(subject: list, clip: list) -> list:
    """Sutherland-Hodgman: the part of convex polygon ``subject`` inside convex CCW polygon ``clip``."""
    out = subject
    n = len(clip)
    for k in range(n):
        if not out:
            break
        (cx1, cy1), (cx2, cy2) = clip[k], clip[(k + 1) % n]
        ex, ey = cx2 - cx1, cy2 - cy1
        side = [ex * (py - cy1) - ey * (px - cx1) for px, py in out]  # >= 0: inside (left of the edge)
        nxt = []
        for m in range(len(out)):
            p, q = out[m], out[(m + 1) % len(out)]
            sp, sq = side[m], side[(m + 1) % len(out)]
            if sp >= 0:
                nxt.append(p)
            if (sp >= 0) != (sq >= 0):
                f = sp / (sp - sq)
                nxt.append([p[0] + f * (q[0] - p[0]), p[1] + f * (q[1] - p[1])])
        out = nxt
    return out
