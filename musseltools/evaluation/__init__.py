"""Evaluation against hand counts and annotations, and threshold calibration.

Researchers annotate or hand-count a subset of a survey and want to know how wrong the detector is
and which confidence threshold makes the totals right. :func:`evaluate` links a :class:`Truth`
(Ultralytics label folders, COCO JSON, or a CSV of counts) to a run's images and computes, per class:

- detection metrics (boxes only): TP/FP/FN by greedy IoU matching, precision, recall, F1, AP50 and
  AP50-95, computed the way Ultralytics' ``val()`` computes them (rotated-box IoU for OBB models);
- count metrics: per-image MAE, RMSE and bias, and the relative error of the total;
- calibration: the threshold that minimises count error, next to the F1-optimal one;
- survey totals with bootstrap confidence intervals, and ratio-corrected totals.

Every metric is a step function of the threshold that changes only at detection confidences. The
detections of each class are sorted by confidence once and every metric is accumulated along that
order, so the value at any threshold (and the exact optimum over all thresholds) is a binary search,
never a re-filtering of the detections. Thresholds follow the one rule of :mod:`musseltools.core.thresholds`.

Modules, one concern each:

- :mod:`~musseltools.evaluation.truth`: :class:`Truth` and :func:`load_truth` (labels, COCO, counts);
- :mod:`~musseltools.evaluation.geometry`: :func:`box_iou`, :func:`polygon_iou`;
- :mod:`~musseltools.evaluation.matching`: :func:`match_detections`, :func:`average_precision`;
- :mod:`~musseltools.evaluation.curves`: per-class metrics accumulated along the confidences;
- :mod:`~musseltools.evaluation.calibration`: calibrated thresholds, survey totals with intervals;
- :mod:`~musseltools.evaluation.linking`: truth entries paired with a run's images;
- :mod:`~musseltools.evaluation.metrics`: the :class:`Evaluation`;
- :mod:`~musseltools.evaluation.api`: :func:`evaluate` and :func:`evaluate_detections`;
- :mod:`~musseltools.evaluation.verified`: the images verified by hand as truth (``truth="verified"``);
- :mod:`~musseltools.evaluation.crossval`: a setting's count error, thresholds chosen on other images;
- :mod:`~musseltools.evaluation.calibrate`: ``mt.calibrate``, NMS IoU, tiles and thresholds from a few
  labelled images, to the weights' card (imported from its module: the name ``calibrate`` here would hide it).

Its figures are in :mod:`musseltools.plots.survey` (``plot_pr``, ``plot_count_error``, ``plot_pred_vs_true``)
and its command is ``musseltools evaluate``.

Examples
--------
>>> import musseltools as mt                                                  # doctest: +SKIP
>>> run = mt.run("data/demo/images", model="data/models/mussel-demo.pt")      # doctest: +SKIP
>>> ev = mt.evaluate(run, "data/demo/labels")                                 # doctest: +SKIP
>>> ev.metrics                                                                # doctest: +SKIP
>>> ev.calibration                                                            # doctest: +SKIP
>>> run.save_thresholds(ev.best_thresholds(per="model"))                      # doctest: +SKIP
"""

from __future__ import annotations

from .api import evaluate, evaluate_detections
from .calibration import OBJECTIVES, Objective
from .geometry import box_iou, polygon_iou
from .matching import IOU_THRESHOLDS, average_precision, match_detections
from .metrics import Evaluation
from .truth import Truth, TruthError, load_truth
from .verified import VERIFIED, verified_truth

__all__ = [
    "evaluate",
    "evaluate_detections",
    "Evaluation",
    "Truth",
    "TruthError",
    "load_truth",
    "box_iou",
    "polygon_iou",
    "match_detections",
    "average_precision",
    "OBJECTIVES",
    "Objective",
    "IOU_THRESHOLDS",
    "VERIFIED",
    "verified_truth",
]
