"""The :class:`Evaluation`: a run's detections against ground truth, queried at any threshold.

Built by :func:`musseltools.evaluation.evaluate`. Per class it gives detection metrics (TP/FP/FN,
precision, recall, F1, AP50, AP50-95; boxes only), count metrics (per-image MAE, RMSE and bias, the
relative error of the total), calibrated thresholds and survey totals. Thresholds follow the one rule
of :mod:`musseltools.core.thresholds`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..core.thresholds import TOLERANCE, ClassMap, ThresholdLike, Thresholds
from .calibration import Objective, calibrate, survey_totals
from .curves import ClassCurve
from .truth import Truth

__all__ = ["Evaluation"]

_CURVE_COLUMNS = ["tp", "fp", "fn", "precision", "recall", "f1", "count_mae", "count_rmse", "count_bias",
                  "total_rel_error", "predicted_total", "true_total"]


class Evaluation:
    """A run's detections against ground truth. Build with :func:`~musseltools.evaluation.evaluate`.

    Thresholds are given as a number (every class), or a mapping keyed by class (category) or by
    model class name; a class a mapping leaves out keeps the evaluation's default threshold
    (``thresholds.default``: the run's threshold). Classes of one category must share a threshold.

    Attributes
    ----------
    metrics : pandas.DataFrame
        One row per class at the threshold: ``class, threshold, tp, fp, fn, precision, recall, f1,
        ap50, ap50_95, count_mae, count_rmse, count_bias, total_rel_error, predicted_total,
        true_total, images``.
    curves : pandas.DataFrame
        The same metrics for every class and every threshold of a grid (floor, 0.01 ... 0.99).
    per_image : pandas.DataFrame
        ``image_id, path, key, class, true, predicted`` at the threshold, validated images only.
    calibration : pandas.DataFrame
        ``class, best_threshold_count, best_threshold_f1, objective`` and the metrics at each.
    thresholds : Thresholds
        The evaluation's thresholds (its ``default`` is the threshold of classes a mapping leaves out).
    threshold : float or dict
        The same as JSON: one number when every class has the same threshold, else one per class.
    unmatched_images : list of str
        Paths of run images without truth (or that failed), not evaluated.
    unmatched_labels : list of str
        Truth entries (files or names) that match no image of the run.
    """

    def __init__(
        self,
        *,
        run_id: str,
        class_map: ClassMap,
        curves: dict[str, ClassCurve],
        thresholds: Thresholds,
        iou: float,
        conf_floor: float,
        objective: str,
        iou_type: str = "box",
        truth: Truth,
        validated: pd.DataFrame,
        true_counts: pd.DataFrame,
        detections: pd.DataFrame,
        survey: pd.DataFrame,
        unmatched_images: list[str],
        unmatched_labels: list[str],
        failed_images: list[str],
    ) -> None:
        self.run_id = run_id
        self.class_map = class_map
        self.classes = class_map.categories
        self._curves = curves
        self.iou = iou
        self.iou_type = iou_type
        self.conf_floor = conf_floor
        self.objective = objective
        self.truth = truth
        self._validated = validated  # image_id, path, key (validated images, in order)
        self._true_counts = true_counts  # index image_id, one column per class (validated, evaluated classes)
        self._detections = detections  # image_id, class (category), confidence: every stored detection
        self._survey = survey  # image_id, path: every image of the run with a result
        self.unmatched_images = unmatched_images
        self.unmatched_labels = unmatched_labels
        self.failed_images = failed_images
        self._cache: dict[str, Any] = {}
        self.thresholds = Thresholds.parse(thresholds, floor=conf_floor, classes=class_map)
        by_class = self.thresholds.by_category(class_map)  # validates now: one threshold per category
        values = set(by_class.values())
        self.threshold: float | dict[str, float] = values.pop() if len(values) == 1 else by_class

    def __repr__(self) -> str:
        return (f"<Evaluation of run {self.run_id} against {self.truth.format} truth: {len(self._validated)} images, "
                f"classes {self.classes}, threshold {self.threshold}, iou {self.iou}>")

    @property
    def has_boxes(self) -> bool:
        """Whether detection metrics (P, R, F1, AP) are available (truth with boxes)."""
        return self.truth.has_boxes

    @property
    def images_evaluated(self) -> int:
        """Number of validated images (images with truth, or taken as empty with ``unlabelled="empty"``)."""
        return len(self._validated)

    @property
    def true_counts(self) -> pd.DataFrame:
        """True counts: one row per validated image (index ``image_id``), one integer column per class."""
        return self._true_counts.copy()

    # ------------------------------------------------------------------ thresholds
    def thresholds_of(self, threshold: ThresholdLike | None = None) -> Thresholds:
        """Validated :class:`~musseltools.core.thresholds.Thresholds` from any accepted form (the evaluation's own
        when None); a class that a mapping leaves out keeps the evaluation's default threshold.

        Raises
        ------
        ThresholdError
            Not a number, outside ``[conf_floor, 1]``, or naming an unknown class or category.
        """
        if threshold is None:
            return self.thresholds
        return Thresholds.parse(threshold, default=self.thresholds.default, floor=self.conf_floor,
                                classes=self.class_map)

    def class_thresholds(self, threshold: ThresholdLike | None = None) -> dict[str, float]:
        """One threshold per evaluated class (category) from a number, or a mapping by class or model class
        name (see :meth:`thresholds_of`).

        Raises
        ------
        ThresholdError
            As :meth:`thresholds_of`, or when classes of one category have different thresholds.
        """
        return self.thresholds_of(threshold).by_category(self.class_map)

    def run_thresholds(self, thresholds: Mapping[str, float]) -> dict[str, float]:
        """Per-category thresholds as the per-model-class mapping ``Run.save_thresholds`` takes."""
        cm = self.class_map
        return {n: float(thresholds[cm.category(n)]) for n in cm.names if cm.category(n) in thresholds}

    # ------------------------------------------------------------------ fast queries
    def at(self, thresholds: ThresholdLike | None = None) -> dict[str, dict[str, float]]:
        """Metrics per class at thresholds, instantly (a binary search per class).

        Returns ``{class: {"precision", "recall", "f1", "count_mae", "count_rmse", "count_bias",
        "total_rel_error", "tp", "fp", "fn", "predicted_total", "true_total"}}`` (NaN where undefined:
        detection metrics without boxes). Fast enough for a slider.

        Examples
        --------
        >>> ev.at({"live": 0.4, "dead": 0.6})["live"]["f1"]                        # doctest: +SKIP
        """
        th = self.class_thresholds(thresholds)
        out = {}
        for c in self.classes:
            cur = self._curves[c]
            s = cur.stats(cur.index(th[c]))
            out[c] = {k: float(v) for k, v in s.items()}
        return out

    def precision_recall(self, cls: str) -> pd.DataFrame | None:
        """The precision-recall curve of a class: one row per number of detections kept, most confident
        first (``confidence`` of the last one kept, ``precision``, ``recall``). None without boxes or truth
        of the class."""
        cur = self._curves[cls]
        if cur.tp is None or cur.n_true == 0:
            return None
        s = cur.stats(np.arange(1, len(cur.conf) + 1))
        return pd.DataFrame({"confidence": cur.conf, "precision": s["precision"], "recall": s["recall"]})

    # ------------------------------------------------------------------ tables
    @property
    def metrics(self) -> pd.DataFrame:
        """One row per class at the evaluation's threshold."""
        if "metrics" not in self._cache:
            th = self.class_thresholds()
            rows = []
            for c in self.classes:
                cur = self._curves[c]
                s = {k: float(v) for k, v in cur.stats(cur.index(th[c])).items()}
                rows.append({
                    "class": c, "threshold": th[c], "tp": s["tp"], "fp": s["fp"], "fn": s["fn"],
                    "precision": s["precision"], "recall": s["recall"], "f1": s["f1"],
                    "ap50": float(cur.ap[0]), "ap50_95": float(np.mean(cur.ap)),
                    "count_mae": s["count_mae"], "count_rmse": s["count_rmse"], "count_bias": s["count_bias"],
                    "total_rel_error": s["total_rel_error"], "predicted_total": s["predicted_total"],
                    "true_total": s["true_total"], "images": cur.n_images,
                })
            df = pd.DataFrame(rows)
            for col in ("tp", "fp", "fn"):
                df[col] = df[col].astype("Int64") if self.has_boxes else df[col]
            self._cache["metrics"] = df
        return self._cache["metrics"].copy()

    def thresholds_grid(self) -> np.ndarray:
        """Thresholds of :attr:`curves`: the floor, every 0.01 up to 0.99, and the evaluated ones."""
        from ..results.views import threshold_grid

        extra = list(self.class_thresholds().values())
        return threshold_grid(self.conf_floor, extra)

    @property
    def curves(self) -> pd.DataFrame:
        """Metrics of every class at every threshold of :meth:`thresholds_grid` (tidy, long format)."""
        if "curves" not in self._cache:
            grid = self.thresholds_grid()
            frames = []
            for c in self.classes:
                cur = self._curves[c]
                s = cur.stats(cur.index(grid))
                frames.append(pd.DataFrame({"class": c, "threshold": grid, **s}))
            self._cache["curves"] = pd.concat(frames, ignore_index=True)[["class", "threshold", *_CURVE_COLUMNS]]
        return self._cache["curves"].copy()

    def predicted_counts(self, threshold: ThresholdLike | None = None, *,
                         images: str = "validated") -> pd.DataFrame:
        """Predicted counts per image (rows: ``image_id``) and class at a threshold.

        ``images="validated"`` (images with truth) or ``"survey"`` (every image of the run with a result).
        """
        th = self.class_thresholds(threshold)
        ids = (self._validated if images == "validated" else self._survey)["image_id"]
        d = self._detections
        keep = d["confidence"].to_numpy(np.float64) >= d["class"].map(th).to_numpy(np.float64) - TOLERANCE
        kept = d[keep]
        table = pd.crosstab(kept["image_id"], kept["class"]) if len(kept) else pd.DataFrame()
        table = table.reindex(index=ids.to_numpy(), columns=self.classes, fill_value=0).fillna(0).astype("int64")
        table.index.name = "image_id"
        table.columns.name = None
        return table

    @property
    def per_image(self) -> pd.DataFrame:
        """True and predicted counts per validated image and class at the threshold (long format)."""
        if "per_image" not in self._cache:
            pred = self.predicted_counts()
            rows = []
            v = self._validated.set_index("image_id")
            for c in self.classes:
                rows.append(pd.DataFrame({
                    "image_id": pred.index, "path": v.loc[pred.index, "path"].to_numpy(),
                    "key": v.loc[pred.index, "key"].to_numpy(), "class": c,
                    "true": self._true_counts.loc[pred.index, c].to_numpy(), "predicted": pred[c].to_numpy(),
                }))
            df = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
                columns=["image_id", "path", "key", "class", "true", "predicted"])
            df["error"] = df["predicted"] - df["true"]
            self._cache["per_image"] = df
        return self._cache["per_image"].copy()

    # ------------------------------------------------------------------ calibration
    def calibrate(self, objective: Objective | None = None) -> pd.DataFrame:
        """Per-class thresholds minimising count error, next to the F1-optimal ones. Exact: every
        distinct outcome (each confidence at which a count changes) is tried.

        ``objective="mae"`` minimises the mean absolute per-image count error; ``"total_bias"`` the
        absolute error of the validated total. Ties go to the middle of the tied candidates.
        """
        return calibrate(self._curves, self.classes, self.conf_floor, objective or self.objective)

    @property
    def calibration(self) -> pd.DataFrame:
        """:meth:`calibrate` with the evaluation's objective."""
        if "calibration" not in self._cache:
            self._cache["calibration"] = self.calibrate()
        return self._cache["calibration"].copy()

    def best_thresholds(self, by: Literal["count", "f1"] = "count", *, per: Literal["class", "model"] = "class"
                        ) -> dict[str, float]:
        """Calibrated thresholds ``{class: threshold}`` (``per="model"``: keyed by model class name, for
        ``Run.save_thresholds``). Classes that cannot be calibrated are left out."""
        cal = self.calibration.set_index("class")[f"best_threshold_{by}"]
        best = {c: float(v) for c, v in cal.items() if pd.notna(v)}
        return self.run_thresholds(best) if per == "model" else best

    # ------------------------------------------------------------------ totals
    def survey_totals(
        self,
        threshold: ThresholdLike | None = None,
        *,
        n_boot: int = 2000,
        ci: float = 0.95,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Survey totals per class with bootstrap confidence intervals, and ratio-corrected totals.

        Totals are over every image of the run with a result. Their interval comes from resampling
        images with replacement (``n_boot`` times, ``seed``). When some images have truth, the
        ratio estimator ``sum(true) / sum(predicted)`` on those images times the survey's predicted
        total gives a corrected total; its interval is a t interval from the ratio's linearized variance
        over the validated images, on the log scale, t quantile on ``validated - 1`` df (a percentile
        bootstrap of 5 validated images covered 80%: see docs/survey.md, "Estimators"). A row
        ``class="live_fraction"`` gives the fraction live/(live+dead) when both classes exist.

        Returns
        -------
        pandas.DataFrame
            ``class, predicted_total, ci_low, ci_high, validated_images, validated_true,
            validated_predicted, ratio, corrected_total, corrected_ci_low, corrected_ci_high``.

        Examples
        --------
        >>> ev.survey_totals(n_boot=1000, seed=1)                                   # doctest: +SKIP
        """
        if not 0 < ci < 1:
            raise ValueError(f"ci must lie in (0, 1), got {ci}")
        survey = self.predicted_counts(threshold, images="survey")
        pred_v = self.predicted_counts(threshold)
        true_v = self._true_counts.loc[pred_v.index, self.classes]
        return survey_totals(survey.to_numpy(np.float64), pred_v.to_numpy(np.float64), true_v.to_numpy(np.float64),
                             self.classes, n_boot=n_boot, ci=ci, seed=seed)

    @property
    def totals(self) -> pd.DataFrame:
        """:meth:`survey_totals` at the evaluation's threshold (2000 resamples, seed 0)."""
        if "totals" not in self._cache:
            self._cache["totals"] = self.survey_totals()
        return self._cache["totals"].copy()

    # ------------------------------------------------------------------ exports
    def to_xarray(self):
        """Metrics over thresholds as an ``xarray.Dataset`` (dims ``class``, ``threshold``), with the
        predicted counts of validated images (``predicted[image, class, threshold]``) and true counts."""
        import xarray as xr

        grid = self.thresholds_grid()
        cur = self.curves
        data = {}
        for var in _CURVE_COLUMNS:
            arr = cur.pivot(index="class", columns="threshold", values=var).reindex(index=self.classes, columns=grid)
            data[var] = (("class", "threshold"), arr.to_numpy(np.float64))
        ids = self._validated["image_id"].to_numpy()
        data["predicted"] = (("image", "class", "threshold"), self._predicted_on_grid(ids, grid))
        data["true"] = (("image", "class"), self._true_counts.loc[ids, self.classes].to_numpy(np.int64))
        m = self.metrics.set_index("class")
        data["ap50"] = (("class",), m.loc[self.classes, "ap50"].to_numpy(np.float64))
        data["ap50_95"] = (("class",), m.loc[self.classes, "ap50_95"].to_numpy(np.float64))
        return xr.Dataset(
            data,
            coords={"class": np.array(self.classes, object), "threshold": grid, "image": ids.astype(object),
                    "path": ("image", self._validated["path"].astype(str).to_numpy(object))},
            attrs={"run_id": self.run_id, "iou": self.iou, "iou_type": self.iou_type, "truth": self.truth.source,
                   "truth_format": self.truth.format, "threshold": json.dumps(self.threshold),
                   "conf_floor": self.conf_floor},
        )

    def _predicted_on_grid(self, ids: np.ndarray, grid: np.ndarray) -> np.ndarray:
        """Predicted counts (images x classes x thresholds of ``grid``), one pass over the detections."""
        pred = np.zeros((len(ids), len(self.classes), len(grid)), np.int64)
        d = self._detections[self._detections["image_id"].isin(set(ids))]
        if len(d):
            ii = d["image_id"].map({v: i for i, v in enumerate(ids)}).to_numpy()
            cc = d["class"].map({c: i for i, c in enumerate(self.classes)}).to_numpy()
            b = np.searchsorted(grid - TOLERANCE, d["confidence"].to_numpy(np.float64), side="right") - 1
            ok = b >= 0
            np.add.at(pred, (ii[ok], cc[ok].astype(int), b[ok]), 1)
            pred = np.flip(np.cumsum(np.flip(pred, 2), 2), 2)
        return pred

    def summary(self) -> dict[str, Any]:
        """The JSON document of ``musseltools evaluate --json`` (NaN as ``None``).

        ``{"threshold", "classes": {class: {"precision", "recall", "f1", "ap50", "ap50_95", "count_mae",
        "count_bias", "best_threshold_count", "best_threshold_f1"}}}``, and beside them ``run_id, truth,
        truth_format, iou, objective, images_evaluated, unmatched_images, unmatched_labels, failed_images``
        and ``survey_totals`` (:attr:`totals` by class).
        """
        m = self.metrics.set_index("class")
        cal = self.calibration.set_index("class")
        classes = {}
        for c in self.classes:
            classes[c] = {
                "precision": m.at[c, "precision"], "recall": m.at[c, "recall"], "f1": m.at[c, "f1"],
                "ap50": m.at[c, "ap50"], "ap50_95": m.at[c, "ap50_95"], "count_mae": m.at[c, "count_mae"],
                "count_bias": m.at[c, "count_bias"], "best_threshold_count": cal.at[c, "best_threshold_count"],
                "best_threshold_f1": cal.at[c, "best_threshold_f1"],
            }
        doc = {
            "threshold": self.threshold,
            "classes": classes,
            "run_id": self.run_id,
            "truth": self.truth.source,
            "truth_format": self.truth.format,
            "iou": self.iou,
            "iou_type": self.iou_type,
            "objective": self.objective,
            "images_evaluated": self.images_evaluated,
            "unmatched_images": list(self.unmatched_images),
            "unmatched_labels": list(self.unmatched_labels),
            "failed_images": list(self.failed_images),
            "survey_totals": {row.pop("class"): row for row in self.totals.to_dict(orient="records")},
        }
        return _jsonable(doc)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if obj is pd.NA or obj is None:
        return None
    return obj
