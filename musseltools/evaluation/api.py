"""Evaluate a run (or detections given as tables) against ground truth: :func:`evaluate`.

:func:`evaluate` reads a run's stored results through the public methods of
:class:`~musseltools.runs.run.Run` and hands them to :func:`evaluate_detections`, which links the truth
to the images, maps classes to the run's categories and builds an
:class:`~musseltools.evaluation.metrics.Evaluation`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from ..core.thresholds import ClassMap, ThresholdLike, Thresholds
from .calibration import Objective, check_objective
from .curves import build_curves
from .linking import link_truth, preview, true_count_table, truth_at_length, truth_boxes
from .metrics import Evaluation
from .truth import Truth, TruthError, load_truth
from .verified import VERIFIED, verified_truth

if TYPE_CHECKING:  # pragma: no cover
    from ..runs.run import Run

__all__ = ["evaluate", "evaluate_detections"]

log = logging.getLogger(__name__)


def evaluate(
    run: Run | Any,
    truth: str | os.PathLike | Truth,
    *,
    iou: float = 0.5,
    threshold: ThresholdLike | None = None,
    objective: Objective = "mae",
    names: Mapping[int, str] | Sequence[str] | None = None,
    unlabelled: Literal["skip", "empty"] = "skip",
    iou_type: Literal["auto", "box", "obb"] = "auto",
    store: Any = None,
    corrected: bool | None = None,
    min_length_mm: Any = None,
) -> Evaluation:
    """Evaluate a run against ground truth.

    Parameters
    ----------
    run : Run, RunHandle or run id
        The run (a run id is opened in ``store``).
    truth : path, Truth or "verified"
        An Ultralytics label folder, a COCO JSON, a counts CSV (see :func:`load_truth`), a Truth, or
        ``"verified"``: the images marked verified by hand, with their corrected detections at the
        thresholds in use when each was marked (see :mod:`musseltools.evaluation.verified`).
    iou : float
        IoU at which a detection matches a truth box (TP/FP/FN, precision, recall, F1).
    threshold : float, str, mapping or Thresholds, optional
        Confidence threshold(s) of the metrics at a threshold; the run's thresholds by default. A
        mapping may be keyed by category or by model class name; a class it leaves out keeps the
        run's threshold.
    objective : {"mae", "total_bias"}
        What calibration minimises: the per-image count MAE, or the absolute error of the total.
    names : mapping or list, optional
        Class names of label ids; by default from a ``data.yaml`` by the labels, else the model's.
    unlabelled : {"skip", "empty"}
        Images of the run without truth: not evaluated (a validated subset; default), or taken as
        having no objects (Ultralytics' convention for missing label files).
    iou_type : {"auto", "box", "obb"}
        How boxes overlap: axis-aligned boxes, or rotated boxes (OBB label corners against an OBB
        model's corners, intersected exactly). ``"auto"``: rotated for an OBB model with OBB labels.
        (Ultralytics' OBB ``val()`` uses ProbIoU, a smooth stand-in for the rotated IoU.)
    store : optional
        The store of ``run`` when it is a run id.
    corrected : bool, optional
        Score detections with hand corrections (True) or the model alone (False). Default: True, but the
        model alone against ``"verified"`` truth (a verified image's corrected detections are its truth).
    min_length_mm : float, optional
        The minimum shell length (the run's by default; 0: none) for detections and truth boxes alike.

    Returns
    -------
    Evaluation

    Raises
    ------
    TruthError
        The truth cannot be read, or shares no class or no image with the run.
    ThresholdError
        A threshold below the run's confidence floor, above 1, naming an unknown class, or giving
        classes of one category different thresholds.

    Examples
    --------
    >>> import musseltools as mt                                                     # doctest: +SKIP
    >>> ev = mt.evaluate(run, "data/demo/counts.csv")                                # doctest: +SKIP
    >>> ev.calibration                                                               # doctest: +SKIP

    Length: the docstring documents every option of this entry point; the body is a dozen lines that read the
    run and hand its tables to :func:`evaluate_detections`.
    """
    run = _as_run(run, store)
    _check_options(iou, objective, unlabelled, iou_type)
    if isinstance(truth, str) and truth == VERIFIED:  # the model alone is scored against what was checked
        truth, corrected = verified_truth(run), False if corrected is None else corrected
    corrected = True if corrected is None else corrected
    cmap = ClassMap(run.class_names, run.class_map)
    thresholds = Thresholds.parse(run.thresholds if threshold is None else threshold, default=run.threshold,
                                  floor=run.conf_floor, classes=cmap)
    meta, mm = run.meta, run.length_rule(min_length_mm)
    dets = run.detections(run.conf_floor, corrected=corrected, min_length_mm=mm)
    return evaluate_detections(
        run.per_image(run.conf_floor, corrected=corrected, min_length_mm=mm), dets,
        truth, class_names=cmap.names, min_length_mm=mm, scales=run.scales() if mm else None,
        class_map=cmap.to_dict(), conf_floor=run.conf_floor, threshold=thresholds, iou=iou, objective=objective,
        names=names, unlabelled=unlabelled, root=(meta.get("collection", {}).get("source") or {}).get("root"),
        run_id=run.run_id, task=meta["model"].get("task"), iou_type=iou_type,
    )


def _as_run(run: Any, store: Any) -> Run:
    """A Run from a Run, a RunHandle or a run id (opened in ``store``)."""
    from ..runs.run import Run

    if isinstance(run, str):
        return Run(store, run)
    if not isinstance(run, Run) and hasattr(run, "run"):  # RunHandle
        return run.run
    return run


def evaluate_detections(
    images: pd.DataFrame,
    detections: pd.DataFrame,
    truth: str | os.PathLike | Truth,
    *,
    class_names: Sequence[str],
    class_map: Mapping[str, str] | None = None,
    conf_floor: float = 0.0,
    threshold: ThresholdLike = 0.5,
    iou: float = 0.5,
    objective: Objective = "mae",
    names: Mapping[int, str] | Sequence[str] | None = None,
    unlabelled: Literal["skip", "empty"] = "skip",
    root: str | None = None,
    run_id: str = "",
    task: str | None = None,
    iou_type: Literal["auto", "box", "obb"] = "auto",
    min_length_mm: float = 0.0, scales: pd.DataFrame | None = None,
) -> Evaluation:
    """Evaluate detections given as tables (what :func:`evaluate` does with a run's stored results).

    Parameters
    ----------
    images : pandas.DataFrame
        ``image_id, path, width, height`` and optionally ``error`` (images with an error are not
        evaluated) and ``processed_at`` (images without it have no result).
    detections : pandas.DataFrame
        ``image_id, class_name, confidence, x1, y1, x2, y2`` (pixels), every detection down to ``conf_floor``.
    truth : path or Truth
    class_names : list of str
        The model's class names, in id order (names label ids without a ``data.yaml``).
    class_map : mapping, optional
        Model class name -> category; metrics are per category.
    threshold : float, str, mapping or Thresholds
        A mapping without a default (a plain dict) must give every class a threshold; a
        :class:`~musseltools.core.thresholds.Thresholds` carries the default of the classes it leaves out.
    root : str, optional
        Folder the image paths are relative to, for linking truth by relative path.
    task : str, optional
        The model's task (``detect``, ``segment``, ``obb``); with ``iou_type="auto"``, OBB models with
        OBB labels are matched by rotated-box IoU (``detections`` then needs a ``polygon`` column).

    Other parameters are those of :func:`evaluate` (``min_length_mm``: the one ``detections`` were filtered at);
    ``scales`` (``image_id, mm_per_px``) measures the truth boxes at it (:func:`.linking.truth_at_length`).

    Examples
    --------
    >>> imgs = pd.DataFrame({"image_id": ["a"], "path": ["/x/a.jpg"], "width": [100], "height": [100]})
    >>> dets = pd.DataFrame({"image_id": ["a", "a"], "class_name": ["live", "live"], "confidence": [0.9, 0.3],
    ...                      "x1": [0, 50], "y1": [0, 50], "x2": [10, 60], "y2": [10, 60]})
    >>> ev = evaluate_detections(imgs, dets, Truth.from_records({"a.jpg": {"live": 1}}), class_names=["live"])
    >>> ev.at(0.5)["live"]["count_mae"], ev.at(0.2)["live"]["count_mae"]
    (0.0, 1.0)
    """
    _check_options(iou, objective, unlabelled, iou_type)
    cmap = ClassMap(class_names, class_map)
    thresholds = Thresholds.parse(threshold, floor=conf_floor, classes=cmap)  # a clear error before any work
    truth = load_truth(truth, names=names)
    if truth.has_boxes and truth.objects["class_name"].isna().any():
        log.info("truth %s has no class names; using the model's %s", truth.source, list(cmap.names))
        truth = truth.with_names(list(cmap.names))
    run_label = f"run {run_id}" if run_id else "the detections"
    table, failed_mask, ok, dets = _with_results(images, detections, cmap)
    validated, unmatched_images, unmatched_labels = _validated_images(ok, table, failed_mask, truth, root,
                                                                      unlabelled, run_label)
    classes = cmap.categories
    mapped, present = _truth_classes(truth, cmap, run_label)
    true_counts, boxes = _truth_tables(truth, mapped, classes, validated, scales, min_length_mm)
    iou_type = _choose_iou_type(iou_type, task, boxes, dets, truth)
    curves = build_curves(classes, validated["image_id"].to_numpy(), true_counts, dets, boxes, iou,
                          present=present, rotated=iou_type == "obb")
    return Evaluation(
        run_id=run_id, class_map=cmap, curves=curves, thresholds=thresholds, iou=float(iou), iou_type=iou_type,
        conf_floor=conf_floor, objective=objective, truth=truth,
        validated=validated[["image_id", "path", "key"]].reset_index(drop=True), true_counts=true_counts,
        detections=dets[["image_id", "class", "confidence"]], survey=ok[["image_id", "path"]],
        unmatched_images=unmatched_images, unmatched_labels=unmatched_labels,
        failed_images=table.loc[failed_mask, "path"].astype(str).tolist(),
    )


def _truth_tables(truth: Truth, mapped: Mapping[str, str], classes: Sequence[str], validated: pd.DataFrame,
                  scales: pd.DataFrame | None, min_length_mm: float) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """True counts and truth boxes (None for counts only) of the validated images, at the minimum length the
    detections were filtered at: boxes measured and left out as detections are; counts only: a warning."""
    true_counts = true_count_table(truth, mapped, classes, validated)
    boxes = truth_boxes(truth, mapped, classes, validated) if truth.has_boxes else None
    if min_length_mm <= 0:
        return true_counts, boxes
    if boxes is None:
        log.warning("truth %s has counts only: min_length_mm=%g cannot be applied to it: its counts include shells "
                    "shorter than %g mm, which the detections leave out, so the run seems to undercount — "
                    "give labels with boxes (YOLO or COCO), or evaluate every length with min_length_mm=0",
                    truth.source, min_length_mm, min_length_mm)
        return true_counts, boxes
    if scales is None:
        scales = pd.DataFrame({"image_id": pd.Series([], dtype=object), "mm_per_px": pd.Series([], dtype="float64")})
    boxes, true_counts, short = truth_at_length(boxes, true_counts, validated, scales, min_length_mm)
    if short:
        log.info("truth %s: %d boxes shorter than %g mm left out, as from the detections", truth.source, short,
                 min_length_mm)
    return true_counts, boxes


def _check_options(iou: float, objective: str, unlabelled: str, iou_type: str) -> None:
    if not 0 < iou <= 1:
        raise ValueError(f"iou must lie in (0, 1], got {iou!r}")
    check_objective(objective)
    if unlabelled not in ("skip", "empty"):
        raise ValueError(f"unlabelled {unlabelled!r} is not one of ('skip', 'empty')")
    if iou_type not in ("auto", "box", "obb"):
        raise ValueError(f"iou_type {iou_type!r} is not one of ('auto', 'box', 'obb')")


def _with_results(images: pd.DataFrame, detections: pd.DataFrame, cmap: ClassMap
                  ) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.DataFrame]:
    """(images, mask of those without a result, ``ok``: images with one, their detections by category)."""
    table = images.reset_index(drop=True)
    failed_mask = pd.Series(False, index=table.index)
    if "error" in table:
        failed_mask |= table["error"].notna()
    if "processed_at" in table:
        failed_mask |= table["processed_at"].isna()
    ok = table.loc[~failed_mask, ["image_id", "path", "width", "height"]].reset_index(drop=True)
    category = {n: cmap.category(n) for n in cmap.names}  # detections of unknown classes are dropped
    dets = pd.DataFrame({
        "image_id": detections["image_id"].to_numpy(),
        "class": detections["class_name"].astype(str).map(category).to_numpy(),
        "confidence": detections["confidence"].to_numpy(np.float64),
        "x1": detections["x1"].to_numpy(np.float64), "y1": detections["y1"].to_numpy(np.float64),
        "x2": detections["x2"].to_numpy(np.float64), "y2": detections["y2"].to_numpy(np.float64),
    })
    if "polygon" in detections:
        dets["polygon"] = detections["polygon"].to_numpy()
    dets = dets[dets["image_id"].isin(set(ok["image_id"])) & dets["class"].notna()].reset_index(drop=True)
    return table, failed_mask, ok, dets


def _validated_images(ok: pd.DataFrame, table: pd.DataFrame, failed_mask: pd.Series, truth: Truth,
                      root: str | None, unlabelled: str, run_label: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The images that are evaluated (``ok`` with the truth ``key``), unmatched images and labels; logged."""
    links, unmatched_images, unmatched_labels = link_truth(ok, root, truth, table.loc[failed_mask])
    failed = table.loc[failed_mask, "path"].astype(str).tolist()
    if failed:
        log.warning("%d images of %s have no result (failed or not processed) and are not evaluated: %s",
                    len(failed), run_label, preview(failed))
    validated = ok.merge(links, on="image_id", how="inner")
    if unlabelled == "empty" and unmatched_images:
        extra = ok[ok["path"].isin(set(unmatched_images))].assign(key=None)
        validated = pd.concat([validated, extra], ignore_index=True)
        unmatched_images = []
    if unmatched_labels:
        log.warning("%d truth entries of %s match no image of %s: %s", len(unmatched_labels), truth.source,
                    run_label, preview(unmatched_labels))
    if unmatched_images:
        log.info("%d images of %s have no truth and are not evaluated: %s", len(unmatched_images), run_label,
                 preview(unmatched_images))
    if validated.empty:
        raise TruthError(
            f"no image of {run_label} matches the truth {truth.source!r} ({len(truth.images)} entries, e.g. "
            f"{preview(truth.images['key'].tolist())}) — expected label names like the image names (relative "
            f"path or file stem), e.g. {preview(ok['path'].map(lambda p: Path(p).stem).tolist())}"
        )
    return validated, unmatched_images, unmatched_labels


def _truth_classes(truth: Truth, cmap: ClassMap, run_label: str) -> tuple[dict[str, str], set[str]]:
    """The evaluated class (category) of each truth class, and the classes the truth has at all."""
    classes = cmap.categories
    tclasses = truth.classes
    mapped = {t: cmap.category(t) for t in tclasses}
    unknown = sorted(t for t, c in mapped.items() if c not in classes)
    if unknown:
        log.warning("truth classes %s of %s are not classes of the run (%s); they are ignored", unknown,
                    truth.source, classes)
    if not any(c in classes for c in mapped.values()):
        raise TruthError(f"truth {truth.source!r} has classes {tclasses}, none of which is a class of "
                         f"{run_label} ({classes}) — name the truth classes like the model's (pass names=...)")
    # annotated boxes are exhaustive: a class no box has is a class with no object; count columns are not
    present = set(classes) if truth.has_boxes else set(mapped.values())
    missing = [c for c in classes if c not in present]
    if missing:
        log.warning("run classes %s have no truth in %s; their metrics are NaN", missing, truth.source)
    return mapped, present


def _choose_iou_type(iou_type: str, task: str | None, boxes: pd.DataFrame | None, dets: pd.DataFrame,
                     truth: Truth) -> str:
    """``"obb"`` (rotated-box IoU) or ``"box"``: what was asked, or with ``"auto"``, what the model and labels allow."""
    if boxes is None:
        return "box"
    has_corners = "corners" in boxes and len(boxes) > 0 and boxes["corners"].notna().all()
    if iou_type == "obb" and not (has_corners and "polygon" in dets):
        raise TruthError(f"iou_type='obb' needs OBB labels (4 corners per object) and detections with polygons — "
                         f"{truth.source!r} has {'them' if has_corners else 'none'}; use iou_type='box'")
    if iou_type == "auto":
        return "obb" if task == "obb" and has_corners and "polygon" in dets else "box"
    return iou_type
