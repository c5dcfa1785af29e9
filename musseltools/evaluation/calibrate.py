"""Calibrate a detector from a few labelled images: NMS IoU, tile merge and size, and thresholds, to its card.

A detector without a card runs at musseltools' defaults (NMS IoU 0.7, ``edge`` merge), which can be far
off for it. :func:`calibrate` searches the inference settings on the run's labelled images:

- NMS IoU over :data:`IOU_GRID` (0.3 to 0.7, step 0.05);
- for a tiled run, also the tile merge (:data:`~musseltools.core.options.TILE_MERGE_METHODS`) and the tile
  size (the run's, the model's input size, 1.5x and 2x it);
- at each setting, thresholds per class of least count error, as ``evaluate``'s calibration chooses them.

Only the labelled images are inferred: each setting is an ordinary run (:func:`musseltools.run`) over a
collection of just those images, in the run's store, so its results are cached under its inference key
like any run's, and calibrating again infers nothing. The setting is chosen by cross-validation
(:mod:`~musseltools.evaluation.crossval`): thresholds chosen on some images, count error measured on the
others, so that a setting that merely fits a few images does not win. The outcome can be written to the
card beside the weights (:func:`musseltools.models.card.write_card`), which later runs then use.

Examples
--------
>>> cal = mt.calibrate(run, "labels/")                   # doctest: +SKIP
>>> print(cal.report())                                  # doctest: +SKIP
>>> cal.write_card()                                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..core.options import NO_TILES, TILE_MERGE_METHODS
from ..core.thresholds import ClassMap
from ..models.card import write_card as write_card_file
from ..runs.engine import run as run_images
from ..runs.run import Run
from .api import evaluate, evaluate_detections
from .calibration import Objective, check_objective
from .crossval import cross_validate
from .metrics import Evaluation
from .truth import Truth, load_truth
from .verified import VERIFIED, verified_truth

__all__ = ["IOU_GRID", "TOO_FEW", "UNLIKE", "Setting", "Calibration", "calibrate", "choose_setting", "search_grid"]

log = logging.getLogger(__name__)

#: NMS IoUs searched: 0.3 to 0.7, step 0.05.
IOU_GRID = tuple(round(0.3 + 0.05 * i, 2) for i in range(9))
#: Fewer labelled images than this: the choice is said to be unlikely to carry over.
TOO_FEW = 3
#: Labelled images whose median size or detections per image differ from the survey's by more than this
#: factor: the choice is said to be unlikely to carry over.
UNLIKE = 2.0


@dataclass(frozen=True)
class Setting:
    """One point of the search: an NMS IoU and, for tiled runs, a tile size and merge."""

    iou: float
    tile: int | str | None = None
    tile_merge: str | None = None

    @property
    def label(self) -> str:
        """``iou 0.45``, or ``iou 0.45, tile 480, ios`` for a tiled setting."""
        if self.tile is None:
            return f"iou {self.iou:g}"
        return f"iou {self.iou:g}, tile {self.tile}, {self.tile_merge}"


def search_grid(settings: Mapping[str, Any], *, ious: Sequence[float] | None = None,
                tile_merges: Sequence[str] | None = None, tile_sizes: Sequence[int | str] | None = None
                ) -> list[Setting]:
    """The settings searched for a run with inference ``settings``; the run's own first (it wins ties).

    >>> [s.label for s in search_grid({"iou": 0.7, "tile": None, "imgsz": 320}, ious=[0.5, 0.7])]
    ['iou 0.7', 'iou 0.5']
    >>> g = search_grid({"iou": 0.7, "tile": "auto", "imgsz": 320, "tile_merge": "edge"})
    >>> len(g), g[0].label, sorted({s.tile for s in g}, key=str)
    (81, 'iou 0.7, tile auto, edge', [480, 640, 'auto'])
    """
    own = Setting(float(settings["iou"]), settings.get("tile"),
                  settings.get("tile_merge") if settings.get("tile") is not None else None)
    grid_ious = [float(i) for i in (IOU_GRID if ious is None else ious)]
    if own.tile is None:
        points = [Setting(i) for i in grid_ious]
    else:
        imgsz = int(settings["imgsz"])
        sizes = list(tile_sizes) if tile_sizes is not None else [own.tile, 3 * imgsz // 64 * 32, 2 * imgsz]
        merges = list(TILE_MERGE_METHODS if tile_merges is None else tile_merges)
        points = [Setting(i, t, m) for t in dict.fromkeys(sizes) for m in merges for i in grid_ious]
    return [own, *[p for p in points if p != own]]


# ------------------------------------------------------------------------------------------ the outcome
class Calibration:
    """What :func:`calibrate` found: one row per setting searched, the chosen one, and why.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per setting: ``setting, iou, tile, tile_merge, thresholds, fitted, count_error`` (in-sample:
        thresholds chosen on every labelled image), ``cv_count_error`` (cross-validated), ``f1`` (mean over
        classes at the in-sample thresholds; NaN with counts-only truth), ``run_id``, ``inferred`` (images
        inferred by this call), ``chosen``, ``current`` (the run's own settings, thresholds fitted). The first
        row is the run as it is (``fitted`` False: its own thresholds, so its cross-validated error is its
        error): the bar a calibration must clear. Count errors are means over images of the summed per-class
        ``|predicted - true|``.
    chosen : Setting
    thresholds : dict
        The chosen setting's thresholds per model class name (what the card carries).
    before : float
        The count error of the labelled images at the run's settings and thresholds.
    method : str
        ``leave-one-out`` or ``5-fold``.
    warnings : list of str
        Why the choice may not carry over to the survey (too few images, images unlike the survey's).
    inferred : int
        Images inferred by this call, over all settings (0 when every setting was cached).
    """

    def __init__(self, *, run: Run, truth: Truth, table: pd.DataFrame, thresholds: dict[str, float],
                 before: float, method: str, warnings: list[str], n_images: int) -> None:
        self.run_id = run.run_id
        self.weights = str(run.meta["model"]["path"])
        self.settings = dict(run.meta["settings"])
        self.truth_source = str(truth.source)
        self.table = table
        row = table[table["chosen"]].iloc[0]
        self.chosen = Setting(float(row["iou"]), _none(row["tile"]), _none(row["tile_merge"]))
        self.thresholds = thresholds
        self.before = before
        self.method = method
        self.warnings = warnings
        self.n_images = n_images
        self.inferred = int(table["inferred"].sum())
        self.date = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d")

    def __repr__(self) -> str:
        return (f"<Calibration of run {self.run_id} on {self.n_images} labelled images: {self.chosen.label}, "
                f"thresholds {self.thresholds}>")

    @property
    def tiled(self) -> bool:
        return self.chosen.tile is not None

    def _row(self, which: str) -> pd.Series:
        return self.table[self.table[which]].iloc[0]

    def recommended(self) -> dict[str, Any]:
        """The card's ``recommended`` section: thresholds, NMS IoU and, for tiled runs, tile, overlap and merge."""
        out: dict[str, Any] = {"threshold": dict(self.thresholds), "iou": self.chosen.iou}
        if self.tiled:
            out.update(tile=self.chosen.tile, tile_overlap=self.settings["tile_overlap"],
                       tile_merge=self.chosen.tile_merge)
        return out

    def how(self) -> dict[str, str]:
        """The card's ``how`` section: per setting, how it was found (images, errors, date, version)."""
        row = self._row("chosen")
        stamp = f"musseltools calibrate, {self.date}, musseltools {_version()}"
        where = f"{self.n_images} labelled images ({self.truth_source}) of run {self.run_id}"
        errors = (f"count error per image {_fmt(row['cv_count_error'])} {self.method} cross-validated "
                  f"({_fmt(row['count_error'])} in-sample), against {_fmt(self.before)} at the run's settings and "
                  "thresholds")
        searched = sorted(set(self.table["iou"]))
        fitted = (f"Per class, the confidence of least count error on {where}, at {self.chosen.label}"
                  if bool(row["fitted"]) else
                  f"The run's own: no thresholds fitted to the {where} counted the held-out images better")
        out = {
            "threshold": f"{fitted}; {stamp}.",
            "iou": f"The lowest {self.method} cross-validated count error (thresholds chosen on the other images "
                   f"of each fold) of NMS IoU {', '.join(f'{v:g}' for v in searched)} on {where}: {errors}; {stamp}.",
        }
        if self.tiled:
            sizes = ", ".join(str(t) for t in dict.fromkeys(self.table["tile"]))
            merges = ", ".join(dict.fromkeys(self.table["tile_merge"]))
            out["tile"] = f"Searched with the NMS IoU: tile sizes {sizes}; {errors}; {stamp}."
            out["tile_merge"] = f"Searched with the NMS IoU: merges {merges}; {errors}; {stamp}."
            out["tile_overlap"] = f"Not searched: the run's {self.settings['tile_overlap']}."
        return out

    def card_extra(self) -> dict[str, Any]:
        """The card's ``calibration`` section: the figures behind ``how``, machine-readable."""
        row = self._row("chosen")
        return {"calibration": {
            "images": self.n_images, "truth": self.truth_source, "run": self.run_id, "method": self.method,
            "count_error_before": _round(self.before), "count_error_cv": _round(row["cv_count_error"]),
            "count_error_in_sample": _round(row["count_error"]), "settings_searched": int(self.table["fitted"].sum()),
            "date": self.date, "musseltools": _version(),
        }}

    def write_card(self, *, force: bool = False) -> str:
        """Write the card beside the weights (see :func:`musseltools.models.card.write_card`); returns its path.

        Raises ``CardExistsError`` when a card is there and ``force`` is False; with ``force`` the old file
        is kept as ``<card>.bak-<timestamp>``."""
        path, backup = write_card_file(self.weights, self.recommended(), self.how(), extra=self.card_extra(), force=force)
        log.info("card written to %s%s; runs of %s now use it for every setting they are not given", path,
                 f" (the old one kept as {backup.name})" if backup else "", os.path.basename(self.weights))
        return str(path)

    def explain(self) -> str:
        """Why the chosen setting was chosen, in a few sentences."""
        row, own = self._row("chosen"), self._row("current")
        th = ", ".join(f"{k} {v:.2f}" for k, v in self.thresholds.items())
        how = (f"by {self.method} cross-validation over {self.n_images} labelled images (thresholds chosen on the "
               "other images, count error measured on the held-out ones)" if self.n_images > 1 else
               "by in-sample count error (one labelled image: nothing to cross-validate with)")
        text = [f"Chosen {how}: {self.chosen.label}, thresholds {th}.",
                f"Count error per image: {_fmt(row['cv_count_error'])} cross-validated, {_fmt(row['count_error'])} "
                f"in-sample; at the run's settings ({own['setting']}) and thresholds it is {_fmt(self.before)} "
                f"({_fmt(own['cv_count_error'])} cross-validated with calibrated thresholds)."]
        if not bool(row["fitted"]):
            text.append("No setting searched, with thresholds fitted to the labelled images, counts the held-out "
                        "images better than the run as it is: keep its settings and thresholds (label more "
                        "images to tell settings apart).")
        elif bool(row["current"]):
            text.append("The run's inference settings are as good as any searched: only the thresholds change.")
        return " ".join(text)

    def table_text(self) -> str:
        """The table as text, the chosen row marked ``*`` and the run's own ``(run)``."""
        t = self.table
        mark = np.where(t["chosen"], "*", "") + np.where(t["current"] | ~t["fitted"], " (run)", "")
        shown = pd.DataFrame({"": mark, "setting": t["setting"], "thresholds": t["thresholds"],
                              "count error": t["count_error"], "cv count error": t["cv_count_error"],
                              "F1": t["f1"], "inferred": t["inferred"]})
        return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")

    def report(self) -> str:
        """The table, the choice explained, and the warnings: what ``musseltools calibrate`` prints."""
        parts = [f"calibration of run {self.run_id} on {self.n_images} labelled images ({self.truth_source}); "
                 f"{int(self.table['fitted'].sum())} settings searched, {self.inferred} images inferred by this call", self.table_text(), "",
                 self.explain()]
        parts += [f"warning: {w}" for w in self.warnings]
        return "\n".join(parts)

    def to_json(self) -> dict[str, Any]:
        """Everything as plain JSON (``musseltools calibrate --json``)."""
        rows = self.table.drop(columns=["thresholds"]).assign(thresholds=list(self.table["threshold_values"]))
        rows = rows.drop(columns=["threshold_values"]).astype(object).where(rows.notna(), None)
        return {"run_id": self.run_id, "weights": self.weights, "truth": self.truth_source, "images": self.n_images,
                "method": self.method, "chosen": self.recommended(), "count_error_before": _round(self.before),
                "inferred": self.inferred, "warnings": self.warnings, "explanation": self.explain(),
                "settings": rows.to_dict(orient="records")}


def _none(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _fmt(v: float) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.2f}"


def _round(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("musseltools")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


@contextlib.contextmanager
def _quiet_sub_runs() -> Iterator[None]:
    """The per-setting runs and evaluations log what the first evaluation already said: only errors show."""
    names = ("musseltools.runs.engine", "musseltools.evaluation.api", "musseltools.evaluation.linking")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ------------------------------------------------------------------------------------------ the search
def calibrate(
    run: Run | Any,
    truth: str | os.PathLike | Truth,
    *,
    store: Any = None,
    ious: Sequence[float] | None = None,
    tile_merges: Sequence[str] | None = None,
    tile_sizes: Sequence[int | str] | None = None,
    objective: Objective = "mae",
    names: Mapping[int, str] | Sequence[str] | None = None,
    device: str | None = None,
    workers: int | None = None,
    write_card: bool = False,
    force: bool = False,
) -> Calibration:
    """Choose a detector's NMS IoU (tile size and merge when tiled) and thresholds from a few labelled images.

    Parameters
    ----------
    run : Run, RunHandle or run id
        A run of the detector over the survey (a run id is opened in ``store``). Its other settings (input
        size, tile overlap, floor, class map) are kept.
    truth : path, Truth or "verified"
        Labels or counts of some of the run's images (anything :func:`~musseltools.evaluation.load_truth`
        reads), or ``"verified"``: the run's images verified by hand.
    ious, tile_merges, tile_sizes : sequences, optional
        The search (see :func:`search_grid`): by default NMS IoU 0.3 to 0.7 step 0.05; for a tiled run the
        merges edge, ios and nmm and the tile sizes: the run's, 1.5x and 2x the model's input size.
    objective : {"mae", "total_bias"}
        What the thresholds minimise on the training images (``evaluate``'s calibration).
    names : optional
        Class names of label ids (as :func:`~musseltools.evaluation.evaluate`).
    device, workers : optional
        Where the labelled images are inferred (as :func:`musseltools.run`).
    write_card, force : bool
        Write the outcome to the card beside the weights (:meth:`Calibration.write_card`); replace an
        existing card only with ``force`` (a backup is kept).

    Returns
    -------
    Calibration
        ``print(cal.report())`` shows the table, the choice and why, and the warnings.

    Raises
    ------
    TruthError
        The truth cannot be read or matches no image of the run.
    """
    check_objective(objective)
    run = _as_run(run, store)
    truth = verified_truth(run) if isinstance(truth, str) and truth == VERIFIED else load_truth(truth, names=names)
    ev0 = evaluate(run, truth, corrected=False, names=names)
    classes = _classes_with_truth(ev0)
    fallback = ev0.class_thresholds()
    before = float(sum(ev0.at()[c]["count_mae"] for c in classes))
    table = run.per_image(corrected=False)
    labelled = table[table["image_id"].isin(set(ev0.true_counts.index))]
    paths = sorted(labelled["path"].astype(str))
    grid = search_grid(run.meta["settings"], ious=ious, tile_merges=tile_merges, tile_sizes=tile_sizes)
    log.info("calibrating run %s on %d labelled images: %d settings", run.run_id, len(paths), len(grid))
    rows = []
    with _quiet_sub_runs():
        for i, setting in enumerate(grid):
            sub = _infer(run, paths, setting, device=device, workers=workers)
            rows.append(_measure(sub, truth, setting, classes, fallback, objective, names=names,
                                 root=(run.meta.get("collection", {}).get("source") or {}).get("root")))
            log.info("setting %d/%d %s: count error %s (cv %s), %d images inferred", i + 1, len(grid), setting.label,
                     _fmt(rows[-1]["count_error"]), _fmt(rows[-1]["cv_count_error"]), rows[-1]["inferred"])
    chosen = choose_setting(pd.DataFrame([_unfitted(run, ev0, grid[0], classes, before), *rows]))
    thresholds = ev0.run_thresholds({**fallback, **chosen["threshold_values"][chosen["chosen"]].iloc[0]})
    warnings = _warnings(table, labelled, run.categories)
    for w in warnings:
        log.warning("calibration of run %s: %s", run.run_id, w)
    cal = Calibration(run=run, truth=truth, table=chosen, thresholds=thresholds, before=before,
                      method=_method(len(labelled)), warnings=warnings, n_images=len(labelled))
    if write_card:
        cal.write_card(force=force)
    return cal


def _as_run(run: Any, store: Any) -> Run:
    if isinstance(run, str):
        return Run(store, run)
    return run.run if not isinstance(run, Run) and hasattr(run, "run") else run  # a RunHandle's run


def _method(n: int) -> str:
    from .crossval import folds

    return folds(n)[0] if n > 1 else "in-sample only"


def _classes_with_truth(ev: Evaluation) -> list[str]:
    """The run's categories that the truth has (count errors sum over them)."""
    m = ev.metrics.set_index("class")
    return [c for c in ev.classes if m.loc[c, "images"] > 0]


def _infer(run: Run, paths: list[str], setting: Setting, *, device: str | None, workers: int | None) -> Run:
    """The labelled images as an ordinary run at ``setting`` (the run's other settings), cached like any run."""
    meta = run.meta
    s, m = meta["settings"], meta["model"]
    return run_images(
        paths, model=m["path"], model_family=m.get("family"), trust_pickle=bool(m.get("trust_pickle")),
        threshold=run.thresholds, store=run.store, conf_floor=s["conf_floor"], imgsz=s["imgsz"], iou=setting.iou,
        max_det=s["max_det"], tile=setting.tile if setting.tile is not None else NO_TILES,
        tile_overlap=s["tile_overlap"], tile_merge=setting.tile_merge or s["tile_merge"],
        class_map=m.get("class_map"), name=f"{meta['collection']['name']}-calibration", device=device,
        workers=workers, quiet=True,
    )


def _measure(sub: Run, truth: Truth, setting: Setting, classes: list[str], fallback: Mapping[str, float],
             objective: Objective, *, names: Any, root: str | None) -> dict[str, Any]:
    """One row of the table: the setting's thresholds, in-sample and cross-validated count error, F1."""
    dets = sub.detections(sub.conf_floor, corrected=False)
    ev = evaluate_detections(sub.per_image(sub.conf_floor, corrected=False), dets, truth, class_names=sub.class_names,
                             class_map=sub.class_map, conf_floor=sub.conf_floor, threshold=sub.rule(),
                             objective=objective, names=names, root=root, run_id=sub.run_id,
                             task=sub.meta["model"].get("task"))
    cmap = ClassMap(sub.class_names, sub.class_map)
    by_class = pd.DataFrame({"image_id": dets["image_id"].to_numpy(),
                             "class": [cmap.category(n) for n in dets["class_name"].astype(str)],
                             "confidence": dets["confidence"].to_numpy(np.float64)})
    cv = cross_validate(by_class, ev.true_counts.sort_index()[classes], classes, conf_floor=sub.conf_floor,
                        fallback=fallback, objective=objective)
    at = ev.at({**fallback, **cv.thresholds})
    f1 = [at[c]["f1"] for c in classes if np.isfinite(at[c]["f1"])]
    return {"setting": setting.label, "iou": setting.iou, "tile": setting.tile, "tile_merge": setting.tile_merge,
            "thresholds": ", ".join(f"{c} {t:.2f}" for c, t in cv.thresholds.items()),
            "threshold_values": cv.thresholds, "fitted": True, "count_error": cv.in_sample_error,
            "cv_count_error": cv.cv_error,
            "f1": float(np.mean(f1)) if f1 else float("nan"), "run_id": sub.run_id,
            "inferred": int(sub.meta.get("inferred_this_call") or 0)}


def _unfitted(run: Run, ev0: Evaluation, own: Setting, classes: list[str], before: float) -> dict[str, Any]:
    """The row of the run as it is: its settings and its own thresholds, fitted to nothing here (so its
    cross-validated error is its error), which a calibration must beat to change anything."""
    th = ev0.class_thresholds()
    f1 = [v for c in classes if np.isfinite(v := ev0.at()[c]["f1"])]
    return {"setting": f"{own.label}, the run's thresholds", "iou": own.iou, "tile": own.tile,
            "tile_merge": own.tile_merge, "thresholds": ", ".join(f"{c} {th[c]:.2f}" for c in classes),
            "threshold_values": {c: float(th[c]) for c in classes}, "fitted": False, "count_error": before,
            "cv_count_error": before, "f1": float(np.mean(f1)) if f1 else float("nan"), "run_id": run.run_id,
            "inferred": 0}


def choose_setting(table: pd.DataFrame) -> pd.DataFrame:
    """The table with ``chosen`` (least cross-validated error; then in-sample; then the table's order: the run
    as it is, then its settings with fitted thresholds, then the grid) and ``current`` (the run's settings
    with fitted thresholds: the second row)."""
    cv = table["cv_count_error"].to_numpy(np.float64)
    score = np.where(np.isfinite(cv), cv, table["count_error"].to_numpy(np.float64))
    order = np.lexsort((np.arange(len(table)), table["count_error"].to_numpy(np.float64).round(9), score.round(9)))
    return table.assign(chosen=np.arange(len(table)) == order[0], current=np.arange(len(table)) == 1)


def _warnings(survey: pd.DataFrame, labelled: pd.DataFrame, cats: list[str]) -> list[str]:
    """Why the choice may not carry over: too few labelled images, or images unlike the survey's (size, density)."""
    out = []
    n = len(labelled)
    if n < TOO_FEW:
        out.append(f"only {n} labelled image{'s' if n != 1 else ''}: a choice made on so few may not carry over "
                   f"to the survey — label at least {TOO_FEW} (10 or more for a steady choice)")
    done = survey[survey["processed_at"].notna()]
    if done.empty or labelled.empty:
        return out

    def size(t: pd.DataFrame) -> tuple[float, float]:
        return float(t["width"].median()), float(t["height"].median())

    (lw, lh), (sw, sh) = size(labelled), size(done)
    if max(lw * lh, sw * sh) > UNLIKE * max(min(lw * lh, sw * sh), 1):
        out.append(f"the labelled images (median {lw:.0f}x{lh:.0f} px) are unlike the survey's (median "
                   f"{sw:.0f}x{sh:.0f} px): settings chosen on them may not carry over — label images like the survey's")
    ld, sd = float(labelled[cats].sum(axis=1).mean()), float(done[cats].sum(axis=1).mean())
    if (max(ld, sd) + 1) > UNLIKE * (min(ld, sd) + 1):
        out.append(f"the labelled images have {ld:.1f} detections per image at the run's thresholds, the survey "
                   f"{sd:.1f}: settings chosen on them may not carry over — label images as crowded as the survey's")
    return out

