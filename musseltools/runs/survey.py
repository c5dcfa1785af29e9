"""The survey's design on a run: its sample sheet, and answers by group (:class:`SurveyMethods`, part of ``Run``).

The run assembles plain tables, one row per image (its counts at the thresholds in effect, the sheet's columns)
and the verified images' corrected and model-only counts, and hands them to the estimators of
:mod:`musseltools.survey`, which know nothing of runs or stores. Attaching a sheet never re-runs the model.

Examples
--------
>>> run = mt.run("survey/", model="mussels.pt", sheet="survey.csv")   # doctest: +SKIP
>>> run.by_group(["site", "date"])                                     # doctest: +SKIP
>>> run.compare_groups("treatment").differences                        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..errors import MusselToolsError
from ..results import views
from ..store import sheets as stored
from ..survey.sheet import MAX_LISTED, design_columns, load_sheet, validate_sheet, with_design_coords

if TYPE_CHECKING:  # pragma: no cover
    from .run import Run

__all__ = ["SurveyMethods", "attach_sheet"]

log = logging.getLogger(__name__)

#: The per-image columns that come before the sheet's in :meth:`SurveyMethods.survey_table`.
LEADING = ("image_id", "path", "sheet_image")


def attach_sheet(run: Run, sheet: str | os.PathLike | pd.DataFrame, images: pd.DataFrame | None = None
                 ) -> pd.DataFrame:
    """Validate a sheet (a file, or a table as read) against the run's images and store it as the current version.

    ``images`` (``image_id, path``): the run's images, when the store has no collection table of the run yet
    (the engine, before the first unit). Attaching the version that is current already writes nothing."""
    if images is None:
        images = run.store.read_collection(run.run_id)
    root = (run.meta.get("collection", {}).get("source") or {}).get("root")
    if isinstance(sheet, pd.DataFrame):
        table = validate_sheet(sheet, images, root=root, categories=run.categories, source="(a table)")
        sha256, source = hashlib.sha256(sheet.to_csv(index=False).encode()).hexdigest(), "(a table)"
    else:
        table, sha256 = load_sheet(sheet, images, root=root, categories=run.categories)
        source = str(sheet)
    current = run.meta.get("sheet") or {}
    if current.get("sha256") == sha256:
        log.info("[run %s] sheet %s is the current version already (%s…)", run.run_id, source, sha256[:12])
        return table
    stored.write_sheet(run.store, run.run_id, table, sha256=sha256, source=source)
    log.info("[run %s] sheet %s attached: %d rows, columns %s (version %s…)", run.run_id, source, len(table),
             ", ".join(design_columns(table)), sha256[:12])
    return table


def _as_list(by: str | Sequence[str]) -> list[str]:
    return [by] if isinstance(by, str) else list(by)


class SurveyMethods:
    """The sample sheet and grouped answers of a :class:`~musseltools.runs.run.Run` (mixed into it)."""

    def attach_sheet(self: Run, sheet: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
        """Attach a sample sheet (CSV or ``.xlsx``, or a table as read): one row per image with its site, date,
        treatment, ``area_m2``... (see :mod:`musseltools.survey.sheet`). Returns the stored table.

        Every bad row raises one :class:`~musseltools.survey.sheet.SheetError` listing them all, and nothing is
        attached. A valid sheet becomes the current version (earlier ones are kept: :meth:`sheet_versions`);
        the model is not run again. On a run with a minimum shell length, ``run.json``'s counts are recounted
        (the sheet's scales change which shells count)."""
        table = attach_sheet(self, sheet)
        if self.length_rule():
            self.refresh_counts()
        return table

    def sheet(self: Run, version: str | None = None) -> pd.DataFrame | None:
        """The run's sample sheet as stored (``image_id, sheet_row, sheet_image`` and the sheet's columns): the
        current version, or the one of SHA-256 ``version``; None when no sheet was attached."""
        return stored.read_sheet(self.store, self.run_id, version)

    def sheet_versions(self: Run) -> pd.DataFrame:
        """Every sheet attached to the run, oldest first: SHA-256, file, rows, columns, when, which is current."""
        return stored.sheet_versions(self.store, self.run_id)

    def with_design(self: Run, ds: Any) -> Any:
        """The count cube with the current sheet's columns as coordinates along ``image``."""
        return with_design_coords(ds, self.sheet())

    def survey_table(self: Run, threshold: Any | None = None, *, corrected: bool = True) -> pd.DataFrame:
        """One row per image of the run: ``image_id, path, sheet_image``, the sheet's columns (``area_m2`` last of
        them), one count column per category at the threshold (with hand corrections unless ``corrected=False``),
        then ``verified, error, width, height, n_detections, cap_hit, processed_at``. Needs a sheet."""
        sheet = self.sheet()
        if sheet is None:
            raise MusselToolsError(f"run {self.run_id} has no sample sheet — expected one row per image with its site, "
                                   "date, area_m2... — attach one: run.attach_sheet('survey.csv'), or "
                                   "`musseltools run ... --sheet survey.csv`")
        counts = self.per_image(threshold, corrected=corrected)
        design = [c for c in design_columns(sheet) if c != "area_m2"] + (["area_m2"] if "area_m2" in sheet else [])
        table = counts.merge(sheet[["image_id", "sheet_image", *design]], on="image_id", how="left")
        cats = list(self.categories)
        first = [*LEADING, *design, *cats]
        return table[first + [c for c in table.columns if c not in first]]

    def validated_table(self: Run, threshold: Any | None = None) -> pd.DataFrame:
        """The verified images: ``image_id`` and, per category ``c``, ``c`` (the corrected count: the truth) and
        ``c_model`` (the model's count alone), at the threshold."""
        t = self.rule(threshold)
        truth = self.per_image(t)
        truth = truth[truth["verified"]]
        model = self.per_image(t, corrected=False).drop_duplicates("image_id").set_index("image_id")
        out = pd.DataFrame({"image_id": truth["image_id"].to_numpy()})
        for c in self.categories:
            out[c] = truth[c].to_numpy()
            out[f"{c}_model"] = out["image_id"].map(model[c]).astype("int64").to_numpy()
        return out

    def table(self: Run, per: str = "image", threshold: Any | None = None, *, corrected: bool = True
              ) -> pd.DataFrame:
        """A tidy table for R or a spreadsheet: ``per="image"`` (:meth:`survey_table`; without a sheet, the
        per-image table) or ``per="detection"`` (:meth:`detections` with the image's sheet columns after
        ``image_id, path``)."""
        if per not in ("image", "detection"):
            raise MusselToolsError(f"per={per!r} — expected 'image' or 'detection'")
        sheet = self.sheet()
        if per == "image":
            return self.per_image(threshold, corrected=corrected) if sheet is None else \
                self.survey_table(threshold, corrected=corrected)
        dets = self.detections(threshold, corrected=corrected)
        if sheet is None:
            return dets
        design = ["sheet_image", *design_columns(sheet)]
        out = dets.merge(sheet[["image_id", *design]], on="image_id", how="left")
        first = ["image_id", "path", *design]
        return out[first + [c for c in out.columns if c not in first]]

    def export_table(self: Run, out: str | os.PathLike, per: str = "image", threshold: Any | None = None, *,
                     corrected: bool = True) -> Path:
        """Write :meth:`table` to ``out``: ``.csv`` (outlines as JSON text) or ``.parquet``, atomically."""
        import json

        from ..store.store import atomic_write_bytes

        path = Path(out)
        kind = path.suffix.lower()
        if kind not in (".csv", ".parquet"):
            raise MusselToolsError(f"cannot write a table to {str(out)!r} — expected a name ending in .csv or "
                                   ".parquet")
        table = self.table(per, threshold, corrected=corrected)
        if kind == ".csv":
            if "polygon" in table:
                table = table.assign(polygon=[None if p is None else json.dumps(
                    [[round(float(x), 2), round(float(y), 2)] for x, y in p]) for p in table["polygon"]])
            data = table.to_csv(index=False).encode()
        else:
            buffer = io.BytesIO()
            table.to_parquet(buffer, index=False)
            data = buffer.getvalue()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        return path

    def estimation_tables(self: Run, by: Sequence[str], threshold: Any | None = None, *, corrected: bool = True
                          ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """What :meth:`by_group` and :meth:`compare_groups` estimate from: the :meth:`survey_table` rows of the
        images with a result, and (``corrected``, with verified images) the :meth:`validated_table`.

        Raises when a column of ``by`` is not the sheet's or an image with a result has no row in the sheet (images
        added after the sheet was attached); images without a result (failed, not yet processed) are left out,
        with a warning naming how many."""
        t = self.rule(threshold)
        table = self.survey_table(t, corrected=corrected)
        unknown = [c for c in by if c not in table.columns or c in self.categories]
        if unknown:
            known = design_columns(self.sheet())
            raise MusselToolsError(f"{', '.join(map(repr, unknown))} is not a column of run {self.run_id}'s sheet — "
                                   f"expected one of {', '.join(known)} — attach a sheet with that column")
        ok = views.with_results(table)
        if len(ok) < len(table):
            log.warning("[run %s] %d images without a result (failed or not processed) are left out of the groups",
                        self.run_id, len(table) - len(ok))
        missing = ok[ok["sheet_image"].isna()]
        if len(missing):
            names = ", ".join(map(repr, missing["path"].head(MAX_LISTED)))
            more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
            raise MusselToolsError(f"{len(missing)} images of run {self.run_id} have no row in its sheet ({names}"
                                   f"{more}) — they were added after the sheet was attached — add their rows and "
                                   "attach the sheet again (run.attach_sheet(path))")
        validated = self.validated_table(t) if corrected else None
        if validated is not None:
            validated = validated[validated["image_id"].isin(ok["image_id"])].reset_index(drop=True)
        return ok.reset_index(drop=True), (validated if validated is not None and len(validated) else None)

    def by_group(self: Run, by: str | Sequence[str], threshold: Any | None = None, corrected: bool = True,
                 level: float = 0.95, seed: int = 0, n_boot: int = 2000) -> pd.DataFrame:
        """Density per m² and live/dead fractions by group of the sheet's columns (``"site"``, ``["site", "date"]``),
        with intervals: one row per group and category (:func:`musseltools.survey.estimate.group_estimates`).

        The image is the sampling unit; intervals resample images within groups (seeded). With ``corrected`` and
        verified images, the estimate is ratio-corrected by the detector's measured error on them (the ``corrected``
        and ``method`` columns say so); ``corrected=False``: the model's counts alone."""
        from ..survey.estimate import group_estimates

        by = _as_list(by)
        images, validated = self.estimation_tables(by, threshold, corrected=corrected)
        return group_estimates(images, by, list(self.categories), area="area_m2", validated=validated, level=level,
                               n_boot=n_boot, seed=seed)

    def compare_groups(self: Run, factor: str, threshold: Any | None = None, *, corrected: bool = True,
                       reference: Any | None = None, level: float = 0.95, seed: int = 0, n_boot: int = 2000) -> Any:
        """Differences between the groups of one sheet column (``"treatment"``) with intervals, and the GLMs an
        ecologist fits: counts with a ``log(area)`` offset, dead out of total
        (:func:`musseltools.survey.glm.compare_groups`; ``.formulas`` shows them for R)."""
        from ..survey.glm import compare_groups

        images, _ = self.estimation_tables([factor], threshold, corrected=corrected)
        return compare_groups(images, factor, list(self.categories), area="area_m2", reference=reference, level=level,
                              n_boot=n_boot, seed=seed)

    def sizes(self: Run, by: str | Sequence[str] | None = None, bins: Any = None, threshold: Any | None = None,
              corrected: bool = True, level: float = 0.95, seed: int = 0, n_boot: int = 2000) -> Any:
        """Size-frequency of the detections that count, per category (and per group of the sheet's columns in
        ``by``): histograms and the median, 10th and 90th percentiles of shell length with intervals that
        resample images (:func:`musseltools.survey.sizes.size_frequency`; ``bins``: edges, a number, or None).

        In mm when every image in scope (those with a result) has a scale (:meth:`scales`), else in px for all:
        ``.unit`` and ``.note`` say which and why. ``by`` needs a sheet, as :meth:`by_group`."""
        from ..survey.sizes import size_frequency

        t = self.rule(threshold)
        by = _as_list(by) if by else []
        images = self.estimation_tables(by, t, corrected=corrected)[0] if by else \
            views.with_results(self.per_image(t, corrected=corrected)).reset_index(drop=True)
        scales = self.scales().drop_duplicates("image_id").set_index("image_id")["mm_per_px"]
        images = images.assign(mm_per_px=images["image_id"].map(scales).astype(float))
        dets = self.detections(t, corrected=corrected)
        dets = dets.assign(category=self.classes.categories_of(dets["class_name"]))
        return size_frequency(dets[["image_id", "category", "length_px", "length_mm"]], images, by,
                              categories=list(self.categories), bins=bins, level=level, n_boot=n_boot, seed=seed)
