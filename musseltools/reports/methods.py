"""A methods paragraph for a paper, written from what a run recorded (:func:`methods_paragraph`).

The paragraph names the detector's file and SHA-256, each setting with where it came from (given to the
run, the card beside the weights and how the card found it, or musseltools' default), the thresholds, the
images processed and verified by hand, the evaluation against labels when one is given, and, with a sample
sheet, the estimators of :mod:`musseltools.survey` in the words of docs/survey.md. Plain text, no markup:
a researcher pastes it into a manuscript and edits it there.

>>> print(methods_paragraph(run, ev, comparison=run.compare_groups("treatment")))   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["methods_paragraph"]

#: The estimators of grouped answers, in the words of docs/survey.md ("Estimators").
DESIGN = ("Densities (per m²) and live and dead fractions were estimated per group as ratios of sums over the "
          "group's images (density: count / imaged area; fraction: count of the category / all mussels); the "
          "image (quadrat) is the sampling unit. {level} intervals are t intervals (images - 1 degrees of "
          "freedom) from the linearized (Taylor) between-image variance of the ratio, on the log scale for "
          "densities and the logit scale for fractions; a group of one image has no interval.")
CORRECTED = ("Counts were corrected by the detector's ratio true / model per category, measured on the {n} "
             "verified images, and the ratio's variance was added to each group's (Welch-Satterthwaite degrees "
             "of freedom).")
MODELS = ("Levels of {factor} were compared with {reference}: differences with Welch t intervals; {count}, with "
          "log(area) as offset; and {dead}. Dispersion was checked with Pearson's chi-square over its residual "
          "degrees of freedom (p < 0.05: overdispersed).")


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _origin(origin: str) -> str:
    """Where a setting came from, as a methods section says it."""
    if origin == "given":
        return "given to the run"
    if origin.startswith("card"):  # "card (mussel-demo.yaml)": the card states how it chose each setting
        card = origin[4:].strip().strip("()")
        return f"recommended by the weights' card{' ' + card if card else ''}"
    if origin == "default":
        return "musseltools' defaults"
    return origin


def _settings(table: pd.DataFrame) -> str:
    """``iou = 0.4 and tile = auto (recommended by the weights' card x.yaml); imgsz = 320 (musseltools'
    defaults)``: the settings but the threshold, grouped by where they came from."""
    groups: dict[str, list[str]] = {}
    for name, row in table.drop(index="threshold", errors="ignore").iterrows():
        value = row["value"]
        value = int(value) if isinstance(value, float) and value.is_integer() else value  # 128, not 128.0
        groups.setdefault(_origin(str(row["from"])), []).append(f"{name} = {value}")
    return "; ".join(f"{_join(values)} ({where})" for where, values in groups.items())


def _evaluation(evaluation: Any) -> str:
    metrics = evaluation.metrics
    parts = []
    for _, m in metrics.iterrows():
        parts.append(f"{m['class']}: precision {m['precision']:.2f}, recall {m['recall']:.2f}, AP50 {m['ap50']:.2f}, "
                     f"mean absolute count error {m['count_mae']:.2f} per image (bias {m['count_bias']:+.2f})")
    what = "boxes matched at IoU" if evaluation.has_boxes else "counts per image; IoU"
    return (f"Against labels of {evaluation.images_evaluated} images ({what} {evaluation.iou:g}), "
            f"{'; '.join(parts)}.")


def _comparison(comparison: Any) -> str:
    decisions = {str(r["model"]): str(r.get("decision") or "") for _, r in comparison.dispersion.iterrows()}
    count = next((d for m, d in decisions.items() if m.startswith("count")), "")
    dead = next((d for m, d in decisions.items() if m.startswith("dead")), "")
    count_model = ("a negative binomial GLM of each image's count (Poisson was overdispersed)"
                   if count.startswith("negative binomial") else "a Poisson GLM of each image's count")
    dead_model = ("a quasi-binomial GLM of dead out of all mussels per image (binomial was overdispersed)"
                  if dead.startswith("quasi") else "a binomial GLM of dead out of all mussels per image")
    text = MODELS.format(factor=comparison.factor, reference=comparison.reference, count=count_model, dead=dead_model)
    formulas = [comparison.formulas[k] for k in ("count_model", "dead_model") if comparison.formulas.get(k)]
    return text + (f" In R: {'; '.join(formulas)}." if formulas else "")


def methods_paragraph(run: Any, evaluation: Any | None = None, *, comparison: Any | None = None,
                      level: float = 0.95) -> str:
    """A methods paragraph for a paper, from what ``run`` recorded (plain text).

    Parameters
    ----------
    run : musseltools.Run
        The run: its model (file name, SHA-256, family), settings and where each came from
        (:meth:`~musseltools.Run.settings_table`), thresholds, images and verified images.
    evaluation : musseltools.Evaluation, optional
        Adds precision, recall, AP50 and the count error per class against the labels.
    comparison : musseltools.survey.glm.GroupComparison, optional
        Adds the models of :meth:`~musseltools.Run.compare_groups`, with their dispersion decisions and the
        R formulas.
    level : float
        The intervals' confidence level, as used.

    The estimators of grouped answers are described when the run has a sample sheet; without one the
    paragraph says nothing of groups.
    """
    from .. import __version__
    from ..plots import threshold_label

    meta = run.meta
    model = meta["model"]
    family = model.get("family") or "ultralytics"
    detector = {"ultralytics": "an Ultralytics YOLO detector", "torchvision": "a torchvision Faster R-CNN detector"}
    mapping = model.get("class_map")
    mapped = f", its classes counted as {_join([f'{v} ({k})' for k, v in mapping.items()])}" if mapping else ""
    table = run.settings_table()
    processed = int(meta.get("processed_count") or 0)
    failed = int(meta.get("failed_count") or 0)
    text = [
        f"Mussels were detected and counted with musseltools {meta.get('versions', {}).get('musseltools', __version__)} "
        f"using {detector.get(family, family + ' detector')}, weights file {Path(model['path']).name} "
        f"(SHA-256 {model['fingerprint']}){mapped}.",
        f"Settings: {_settings(table)}. A detection was counted at confidence >= {threshold_label(run.thresholds)}"
        f" ({_origin(str(table.at['threshold', 'from']))}).",
        f"{processed - failed} of {meta['total_images']} images were processed"
        + (f" ({failed} could not be read and {'was' if failed == 1 else 'were'} left out)." if failed else "."),
    ]
    verified = len(run.verified_images())
    if verified:
        text.append(f"{verified} {'image was' if verified == 1 else 'images were'} verified by hand; counts include "
                    "the hand corrections.")
    if evaluation is not None:
        text.append(_evaluation(evaluation))
    if run.sheet() is not None:
        pct = f"{level:.0%}"
        text.append(DESIGN.format(level=pct))
        if verified:
            text.append(CORRECTED.format(n=verified))
        if comparison is not None:
            text.append(_comparison(comparison))
    return " ".join(text)
