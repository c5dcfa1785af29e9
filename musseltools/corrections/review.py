"""What to check first, and what has been checked: the review queue and the verified labels.

:func:`review_queue` ranks a run's images by how uncertain their counts are, from the stored
detections (no inference): how many detections the model left untouched sit within ``window`` of the
threshold, and so how far the image's count would move if the threshold moved by ``window``; and, given
a second run (another model, other settings), how much the two runs' counts of the image disagree.
Images already verified by hand are left out.

:func:`verified_labels` gives the truth of the verified images: their corrected detections at the
thresholds in use when each was marked, added boxes included. Evaluation
(``mt.evaluate(run, "verified")``), threshold calibration and ``musseltools export-dataset`` read it.

Examples
--------
>>> q = review_queue(run, n=10)                          # doctest: +SKIP
>>> q[["path", "score", "near_threshold", "count_swing"]]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..core.thresholds import TOLERANCE, Thresholds
from ..results import views

if TYPE_CHECKING:  # pragma: no cover
    from .api import CorrectableRun

__all__ = ["review_queue", "verified_labels"]


def review_queue(run: CorrectableRun, n: int | None = 20, *, other: CorrectableRun | None = None, threshold: Any | None = None,
                 window: float = 0.05, include_verified: bool = False) -> pd.DataFrame:
    """Images ranked by how uncertain their counts are, most uncertain first.

    Parameters
    ----------
    run : musseltools.Run
    n : int or None
        How many images (None: all).
    other : musseltools.Run, optional
        A second run over the same images (another model or settings): where the two disagree counts.
    threshold : optional
        The thresholds (default: those in effect).
    window : float
        How far around the threshold a confidence is uncertain (0.05).
    include_verified : bool
        Keep images already verified (they are left out by default).

    Returns
    -------
    pandas.DataFrame
        ``image_id, path, score, near_threshold, count_swing, relative_swing, disagreement, verified``
        and the corrected count of each category at the threshold (shells under the run's minimum length
        left out, as from every count: they neither count nor swing). ``near_threshold``: detections the
        model gave (and no one corrected) with a confidence within ``window`` of their class's threshold;
        ``count_swing``: by how much the image's count changes between ``threshold - window`` and
        ``threshold + window``, summed over categories; ``relative_swing``: that, divided by the count
        (at least 1); ``disagreement``: the sum over categories of the absolute difference with
        ``other``'s counts (0 without it; :func:`musseltools.results.views.count_disagreement`, the measure by
        which :mod:`musseltools.evaluation.compare` ranks images). ``score = count_swing + disagreement``. Images are
        ranked by ``score``, ties broken by ``relative_swing``, then by path; with ``other``, by
        ``disagreement`` first: the images where the two runs disagree most head the queue.
    """
    if not 0 < window < 1:
        raise ValueError(f"window {window!r} is not a confidence distance — expected a number in (0, 1), e.g. 0.05")
    res = run.at_length(run.results())  # a shell under the minimum length counts at no threshold
    t = run.rule(threshold)
    cats = res.classes.categories
    table = views.per_image_counts(res.images, res.detections, t, res.classes)
    dets = res.detections[res.detections["source"] == "model"]
    thr = t.per_row(dets["class_name"])
    conf = dets["confidence"].to_numpy(np.float64)
    near = np.abs(conf - thr) <= window + TOLERANCE
    lower = conf >= thr - window - TOLERANCE
    upper = conf >= thr + window - TOLERANCE
    moved = pd.Series((lower & ~upper).astype(np.int64), index=dets.index)
    flags = pd.DataFrame({"image_id": dets["image_id"].to_numpy(), "near": near.astype(np.int64),
                          "moved": moved.to_numpy()})
    per = flags.groupby("image_id")[["near", "moved"]].sum()
    table["near_threshold"] = table["image_id"].map(per["near"]).fillna(0).astype("int64")
    table["count_swing"] = table["image_id"].map(per["moved"]).fillna(0).astype("int64")
    total = table[cats].sum(axis=1).clip(lower=1)
    table["relative_swing"] = table["count_swing"] / total
    table["disagreement"] = _disagreement(table, other, cats) if other is not None else 0
    table["score"] = table["count_swing"] + table["disagreement"]
    keep = table["error"].isna() & table["processed_at"].notna()
    if not include_verified:
        keep &= ~table["verified"]
    order = (["disagreement"] if other is not None else []) + ["score", "relative_swing", "path"]
    out = table[keep].sort_values(order, ascending=[False] * (len(order) - 1) + [True], kind="stable")
    cols = ["image_id", "path", "score", "near_threshold", "count_swing", "relative_swing", "disagreement",
            "verified", *cats]
    out = out[cols].reset_index(drop=True)
    return out if n is None else out.head(int(n))


def _disagreement(table: pd.DataFrame, other: CorrectableRun, cats: list[str]) -> pd.Series:
    """Sum over the shared categories of |count - other run's count| per image (0 for images it has no result for)."""
    return views.count_disagreement(table, other.per_image(), cats)


def verified_labels(run: CorrectableRun) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The truth of the images marked verified: ``(images, boxes)``.

    ``images``: ``image_id, path, width, height, verified_at, verified_by, thresholds`` (one row per
    verified image, also those with no object). ``boxes``: ``image_id, path, class_id, class_name,
    x1, y1, x2, y2, polygon, detection_id, source``: the image's corrected detections that count at the
    thresholds recorded when it was marked (added boxes always). Later corrections of a verified image
    change its truth; a later change of the run's thresholds does not.
    """
    res = run.results()
    marks = res.verified.drop_duplicates("image_id", keep="last").set_index("image_id")
    images = res.images[res.images["image_id"].isin(marks.index) & res.images["processed_at"].notna()]
    marks = marks[["created_at", "author", "thresholds"]].rename(columns={"created_at": "verified_at",
                                                                          "author": "verified_by"})
    images = images[["image_id", "path", "width", "height"]].merge(marks, left_on="image_id", right_index=True)
    images = images.reset_index(drop=True)
    parts = []
    for image_id, text in zip(images["image_id"], images["thresholds"]):
        dets = res.detections[res.detections["image_id"] == image_id]
        rule = _rule(run, text)
        kept = (dets["source"] == "added").to_numpy() | rule.keep(dets["confidence"], dets["class_name"])
        parts.append(dets[kept])
    cols = ["image_id", "path", "class_id", "class_name", "x1", "y1", "x2", "y2", "polygon", "detection_id", "source"]
    boxes = pd.concat(parts, ignore_index=True)[cols] if parts else res.detections.iloc[:0][cols]
    return images, boxes.reset_index(drop=True)


def _rule(run: CorrectableRun, text: Any) -> Thresholds:
    """The thresholds recorded with a verify mark (the run's in effect when none was recorded)."""
    if isinstance(text, str) and text.strip():
        return run.rule(json.loads(text))
    return run.rule()
