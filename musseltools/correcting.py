"""Hand corrections on a :class:`~musseltools.runs.Run`: the methods that record and read them.

:class:`CorrectionsMixin` gives :class:`~musseltools.runs.Run` its correction methods
(``reclassify``, ``delete_detection``, ``add_detection``, ``verify``, ``unverify``, ``undo``,
``correct``), the tables ``corrections()`` and ``corrections_report()``, the review queue and the
verified images. Each call checks the correction against the run and saves it at once, atomically
(:func:`musseltools.corrections.write_corrections`); nothing of an invalid call is saved.

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
from typing import TYPE_CHECKING, Any

import pandas as pd

from .corrections import (
    RunContext,
    active_corrections,
    check_corrections,
    next_category_class,
    read_corrections,
    write_corrections,
)

if TYPE_CHECKING:  # pragma: no cover
    from .results import RunResults
    from .runs import Run
    from .thresholds import ClassMap, Thresholds

__all__ = ["CorrectionsMixin"]


class CorrectionsMixin:
    """Correction methods of :class:`~musseltools.runs.Run` (see :mod:`musseltools.corrections`)."""

    # provided by Run
    run_id: str
    store: Any
    meta: dict[str, Any]
    classes: ClassMap

    def results(self, *, corrected: bool = True, image_ids: Any = None) -> RunResults:  # pragma: no cover
        raise NotImplementedError

    def rule(self, threshold: Any | None = None) -> Thresholds:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------ saving
    def correct(self, corrections: Sequence[Mapping[str, Any]], *, threshold: Any | None = None,
                labels: Sequence[str] | None = None, image_ids: Any = None) -> list[str]:
        """Check corrections against the run and save them together, at once; returns their ids.

        Each correction is a mapping: ``kind`` (``reclassify``, ``delete``, ``add``, ``verify``,
        ``unverify``, ``undo``), ``image`` (a path as in the run, or an image id), ``detection_id``,
        ``class``, ``x1, y1, x2, y2`` (or ``box``), ``polygon``, ``target`` (the correction an undo
        cancels), ``note``, ``author`` (default: the OS user). ``threshold`` is what a ``verify``
        records as the thresholds its image was checked at (default: the thresholds in effect).
        ``image_ids``, when the caller knows which images the corrections concern (an editor), checks
        them against those images only (faster on large runs).

        Raises
        ------
        CorrectionError
            One or more corrections are not valid for the run (each named); none was saved.
        """
        res = self.results(image_ids=image_ids)
        known = frozenset(read_corrections(self.store)["correction_id"])
        ctx = RunContext(
            run_id=self.run_id, inference_key=self.meta["inference_key"], classes=res.classes, images=res.images,
            detections=res.detections, removed=res.removed, root=self.meta["collection"]["source"].get("root"),
            thresholds=json.dumps(self.rule(threshold).by_class(res.classes), sort_keys=True), known_ids=known,
        )
        rows = check_corrections(list(corrections), ctx, labels=labels)
        new = [r for r in rows if r["correction_id"] not in known]
        if new:
            write_corrections(self.store, new)
        return [r["correction_id"] for r in rows]

    def _one(self, kind: str, threshold: Any = None, **spec: Any) -> str:
        return self.correct([{"kind": kind, **spec}], threshold=threshold)[0]

    def reclassify(self, detection_id: str, to: str, *, note: str | None = None, author: str | None = None) -> str:
        """Give a detection another class (a class of the model, or a category); it keeps its confidence.
        Returns the correction's id."""
        return self._one("reclassify", detection_id=detection_id, class_name=to, note=note, author=author)

    def toggle_class(self, detection_id: str, *, note: str | None = None, author: str | None = None) -> str:
        """Reclassify a detection to the next category (live <-> dead with two); returns the correction's id."""
        res = self.results()
        row = res.detections.loc[res.detections["detection_id"] == detection_id]
        if row.empty:
            from .errors import CorrectionError

            raise CorrectionError(f"detection {detection_id!r} is not a detection of run {self.run_id} (deleted, or "
                                  "of another run) — take ids from run.detections()")
        to = next_category_class(row["class_name"].iat[0], res.classes)
        return self.reclassify(detection_id, to, note=note, author=author)

    def delete_detection(self, detection_id: str, *, note: str | None = None, author: str | None = None) -> str:
        """Delete a detection (it counts at no threshold); returns the correction's id."""
        return self._one("delete", detection_id=detection_id, note=note, author=author)

    def add_detection(self, image: str, box: Sequence[float], class_name: str, *,
                      polygon: Sequence[Sequence[float]] | None = None, note: str | None = None,
                      author: str | None = None) -> str:
        """Add a detection the model missed: ``box`` = (x1, y1, x2, y2) in pixels, a class or category.

        It counts at every threshold, in every run that contains the image. Its ``detection_id`` is
        ``add-<correction id>``; returns the correction's id.
        """
        return self._one("add", image=image, box=list(box), class_name=class_name, polygon=polygon, note=note,
                         author=author)

    def verify(self, image: str, *, threshold: Any | None = None, note: str | None = None,
               author: str | None = None) -> str:
        """Mark an image checked by hand: its corrected detections at ``threshold`` (default: the
        thresholds in effect) become its truth for evaluation, calibration and training data."""
        return self._one("verify", threshold=threshold, image=image, note=note, author=author)

    def unverify(self, image: str, *, note: str | None = None, author: str | None = None) -> str:
        """Take back an image's verified mark."""
        return self._one("unverify", image=image, note=note, author=author)

    def undo(self, correction_id: str, *, note: str | None = None, author: str | None = None) -> str:
        """Cancel an earlier correction (by a later one: nothing is erased); returns the undo's id."""
        known = read_corrections(self.store)
        row = known.loc[known["correction_id"] == correction_id]
        image = row["image_id"].iat[0] if len(row) else None
        return self._one("undo", image=image, target=correction_id, note=note, author=author)

    # ------------------------------------------------------------------ reading
    def corrections(self, *, active: bool = False) -> pd.DataFrame:
        """The corrections saved on this run's images, oldest first (``active=True``: those in effect,
        undos left out). Columns of :data:`musseltools.corrections.CORRECTIONS_SCHEMA`."""
        ids = set(self.store.read_collection(self.run_id)["image_id"])
        table = read_corrections(self.store)
        table = table[table["image_id"].isin(ids)].reset_index(drop=True)
        return active_corrections(table).reset_index(drop=True) if active else table

    def corrections_report(self) -> pd.DataFrame:
        """Corrections of this run's images that cannot be applied to it, with the ``reason`` (e.g. made
        on another model's detections). Empty when every correction applies."""
        return self.results().unapplied

    @property
    def corrections_applied(self) -> int:
        """How many corrections are in effect on this run."""
        return len(self.results().applied)

    def review_queue(self, n: int | None = 20, *, other: Run | None = None, threshold: Any | None = None,
                     window: float = 0.05, include_verified: bool = False) -> pd.DataFrame:
        """The images whose counts are least certain, most uncertain first (see
        :func:`musseltools.review.review_queue`)."""
        from .review import review_queue

        return review_queue(self, n=n, other=other, threshold=threshold, window=window,
                            include_verified=include_verified)

    def verified_images(self) -> pd.DataFrame:
        """The per-image table (corrected counts at the thresholds in effect) of the images marked verified."""
        table = self.per_image()  # type: ignore[attr-defined]
        return table[table["verified"]].reset_index(drop=True)
