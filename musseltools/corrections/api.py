"""Hand corrections on a run: functions that receive the run, record corrections and read them back.

Each function takes the run first (anything with what :class:`CorrectableRun` lists), so
:class:`~musseltools.runs.run.Run` has them as its methods (``run.reclassify(...)`` is
``reclassify(run, ...)``): ``correct``, ``reclassify``, ``toggle_class``, ``delete_detection``,
``add_detection``, ``set_length``, ``verify``, ``unverify``, ``undo``, the tables ``corrections()`` and
``corrections_report()`` and the verified images; the review queue is :mod:`musseltools.corrections.review`. Each call checks the correction against
the run (:mod:`musseltools.corrections.check`) and saves it at once, atomically
(:func:`musseltools.store.corrections_log.write_corrections`); nothing of an invalid call is saved.

Examples
--------
>>> run = mt.open_run("e16894b5c394")                                         # doctest: +SKIP
>>> d = run.detections().iloc[0]                                              # doctest: +SKIP
>>> run.reclassify(d.detection_id, "dead", note="gaping shell")              # doctest: +SKIP
>>> run.add_detection("img0001.jpg", (10, 20, 60, 50), "live")                # doctest: +SKIP
>>> run.verify("img0001.jpg"); run.counts()                                   # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from ..results.corrected import next_category_class
from ..store.corrections_log import active_corrections, read_corrections, write_corrections
from .check import RunContext, check_corrections

if TYPE_CHECKING:  # pragma: no cover
    from ..core.thresholds import Thresholds
    from ..results.view import RunResults
    from ..store.store import Store

__all__ = [
    "CorrectableRun", "correct", "reclassify", "toggle_class", "delete_detection", "add_detection", "set_length",
    "verify",
    "unverify", "undo", "corrections", "corrections_report", "corrections_applied", "verified_images",
]


class CorrectableRun(Protocol):
    """What the functions of this module need of a run (:class:`musseltools.Run` is one)."""

    run_id: str

    @property
    def store(self) -> Store: ...

    @property
    def meta(self) -> dict[str, Any]: ...

    def results(self, *, corrected: bool = True, image_ids: Any = None) -> RunResults: ...

    def rule(self, threshold: Any | None = None) -> Thresholds: ...

    def at_length(self, res: RunResults, min_length_mm: Any = None, scales: pd.DataFrame | None = None
                  ) -> RunResults: ...

    @property
    def class_names(self) -> list[str]: ...

    def per_image(self, threshold: Any | None = None, *, corrected: bool = True,
                  min_length_mm: Any = None) -> pd.DataFrame: ...

    def detections(self, threshold: Any | None = None, *, corrected: bool = True,
                   min_length_mm: Any = None) -> pd.DataFrame: ...


# ------------------------------------------------------------------ saving


def correct(run: CorrectableRun, corrections: Sequence[Mapping[str, Any]], *, threshold: Any | None = None,
            labels: Sequence[str] | None = None, image_ids: Any = None) -> list[str]:
    """Check corrections against the run and save them together, at once; returns their ids.

    Each correction is a mapping: ``kind`` (``reclassify``, ``delete``, ``add``, ``verify``,
    ``unverify``, ``undo``, ``length``: ``line`` = its ends x1, y1, x2, y2), ``image`` (a path as in the run, or an image id), ``detection_id``,
    ``class``, ``x1, y1, x2, y2`` (or ``box``), ``polygon``, ``target`` (the correction an undo
    cancels), ``note``, ``author`` (default: the OS user), ``thresholds`` (those a ``verify`` was
    made at, e.g. from a CSV). ``threshold`` is what a ``verify`` without ``thresholds`` records as
    the thresholds its image was checked at (default: the thresholds in effect).
    ``image_ids``, when the caller knows which images the corrections concern (an editor), checks
    them against those images only (faster on large runs).

    Raises
    ------
    CorrectionError
        One or more corrections are not valid for the run (each named); none was saved.
    """
    res = run.results(image_ids=image_ids)
    known = frozenset(read_corrections(run.store)["correction_id"])
    ctx = RunContext(
        run_id=run.run_id, inference_key=run.meta["inference_key"], classes=res.classes, images=res.images,
        detections=res.detections, removed=res.removed, root=run.meta["collection"]["source"].get("root"),
        thresholds=json.dumps(run.rule(threshold).by_class(res.classes), sort_keys=True), known_ids=known,
        rule=lambda value: json.dumps(run.rule(value).by_class(res.classes), sort_keys=True),
    )
    rows = check_corrections(list(corrections), ctx, labels=labels)
    new = [r for r in rows if r["correction_id"] not in known]
    if new:
        write_corrections(run.store, new)
    return [r["correction_id"] for r in rows]


def _one(run: CorrectableRun, kind: str, threshold: Any = None, **spec: Any) -> str:
    return correct(run, [{"kind": kind, **spec}], threshold=threshold)[0]


def reclassify(run: CorrectableRun, detection_id: str, to: str, *, note: str | None = None,
               author: str | None = None) -> str:
    """Give a detection another class (a class of the model, or a category); it keeps its confidence.
    Returns the correction's id."""
    return _one(run, "reclassify", detection_id=detection_id, class_name=to, note=note, author=author)


def toggle_class(run: CorrectableRun, detection_id: str, *, note: str | None = None,
                 author: str | None = None) -> str:
    """Reclassify a detection to the next category (live <-> dead with two); returns the correction's id."""
    res = run.results()
    row = res.detections.loc[res.detections["detection_id"] == detection_id]
    if row.empty:
        from ..errors import CorrectionError

        raise CorrectionError(f"detection {detection_id!r} is not a detection of run {run.run_id} (deleted, or "
                              "of another run) — take ids from run.detections()")
    to = next_category_class(row["class_name"].iat[0], res.classes)
    return reclassify(run, detection_id, to, note=note, author=author)


def delete_detection(run: CorrectableRun, detection_id: str, *, note: str | None = None,
                     author: str | None = None) -> str:
    """Delete a detection (it counts at no threshold); returns the correction's id."""
    return _one(run, "delete", detection_id=detection_id, note=note, author=author)


def add_detection(run: CorrectableRun, image: str, box: Sequence[float], class_name: str, *,
                  polygon: Sequence[Sequence[float]] | None = None, note: str | None = None,
                  author: str | None = None) -> str:
    """Add a detection the model missed: ``box`` = (x1, y1, x2, y2) in pixels, a class or category.

    It counts at every threshold, in every run that contains the image. Its ``detection_id`` is
    ``add-<correction id>``; returns the correction's id.
    """
    return _one(run, "add", image=image, box=list(box), class_name=class_name, polygon=polygon, note=note,
                author=author)


def set_length(run: CorrectableRun, detection_id: str, line: Sequence[float], *, note: str | None = None,
               author: str | None = None) -> str:
    """Measure a detection's length by hand: ``line`` = (x1, y1, x2, y2), its two ends in image pixels.

    ``run.detections()`` then gives that detection ``length_px`` = the line's length (``length_mm`` with a
    scale) and ``length_method="hand"``; nothing else changes. A later call replaces it; :func:`undo` takes it
    back. A line of zero length, outside the image, or of an unknown detection is refused and nothing is saved.
    Returns the correction's id."""
    return _one(run, "length", detection_id=detection_id, line=list(line), note=note, author=author)


def verify(run: CorrectableRun, image: str, *, threshold: Any | None = None, note: str | None = None,
           author: str | None = None) -> str:
    """Mark an image checked by hand: its corrected detections at ``threshold`` (default: the
    thresholds in effect) become its truth for evaluation, calibration and training data."""
    return _one(run, "verify", threshold=threshold, image=image, note=note, author=author)


def unverify(run: CorrectableRun, image: str, *, note: str | None = None, author: str | None = None) -> str:
    """Take back an image's verified mark."""
    return _one(run, "unverify", image=image, note=note, author=author)


def undo(run: CorrectableRun, correction_id: str, *, note: str | None = None, author: str | None = None) -> str:
    """Cancel an earlier correction (by a later one: nothing is erased); returns the undo's id."""
    known = read_corrections(run.store)
    row = known.loc[known["correction_id"] == correction_id]
    image = row["image_id"].iat[0] if len(row) else None
    return _one(run, "undo", image=image, target=correction_id, note=note, author=author)


# ------------------------------------------------------------------ reading


def corrections(run: CorrectableRun, *, active: bool = False) -> pd.DataFrame:
    """The corrections saved on this run's images, oldest first (``active=True``: those in effect,
    undos left out). Columns of :data:`musseltools.store.corrections_log.CORRECTIONS_SCHEMA`."""
    ids = set(run.store.read_collection(run.run_id)["image_id"])
    table = read_corrections(run.store)
    table = table[table["image_id"].isin(ids)].reset_index(drop=True)
    return active_corrections(table).reset_index(drop=True) if active else table


def corrections_report(run: CorrectableRun) -> pd.DataFrame:
    """Corrections of this run's images that cannot be applied to it, with the ``reason`` (e.g. made
    on another model's detections). Empty when every correction applies."""
    return run.results().unapplied


def corrections_applied(run: CorrectableRun) -> int:
    """How many corrections are in effect on this run."""
    return len(run.results().applied)


def verified_images(run: CorrectableRun) -> pd.DataFrame:
    """The per-image table (corrected counts at the thresholds in effect) of the images marked verified."""
    table = run.per_image()
    return table[table["verified"]].reset_index(drop=True)
