"""Scales drawn by hand, recorded on a run (``run.set_scale``) and listed with the sheet's (``run.scales()``).

A drawn scale is a line of ``px_length`` pixels that is ``mm`` millimetres long (a ruler, a quadrat's side),
drawn on one image; it applies to that image or to every image of a sheet group (one camera set-up). It is
stored append-only with its author and time (:mod:`musseltools.store.scales_log`), and the sheet's scale comes
first (:func:`musseltools.results.sizes.image_scales`): a drawn scale that disagrees with the sheet by more than
10 % is saved and flagged.

Examples
--------
>>> run.set_scale("q01.jpg", px_length=812.4, mm=500, author="ana")          # doctest: +SKIP
>>> run.set_scale({"camera": "A"}, line=(10, 20, 810, 20), mm=500)            # doctest: +SKIP
>>> run.scales()[["path", "mm_per_px", "source", "flagged"]]                  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ..errors import MusselToolsError
from ..results.sizes import image_scales
from ..store import sheets as stored_sheets
from ..store.corrections_log import default_author
from ..store.scales_log import read_scales, write_scales
from ..store.store import utcnow
from .api import CorrectableRun

__all__ = ["set_scale", "scales", "ScaleError"]


class ScaleError(MusselToolsError):
    """A scale that cannot be recorded: what was wrong, what is expected and what to do."""


def _number(value: Any, name: str, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ScaleError(f"{name} is {value!r}, not a number — expected {what}") from None
    if not math.isfinite(out) or out <= 0:
        raise ScaleError(f"{name} is {value!r} — expected {what}: a scale of zero or negative length cannot be used; "
                         "draw the line again along the ruler or the quadrat's side and give its true length")
    return out


def _images_of(run: CorrectableRun, target: str | Mapping[str, Any]) -> tuple[pd.DataFrame, str | None]:
    """The images (``image_id, path``) a scale is for, and its group's label (None for one image)."""
    images = run.per_image(min_length_mm=0)[["image_id", "path"]].drop_duplicates("image_id")
    if isinstance(target, Mapping):
        sheet = stored_sheets.read_sheet(run.store, run.run_id)
        if sheet is None:
            raise ScaleError(f"a scale for the group {dict(target)!r} needs a sample sheet, and run {run.run_id} has "
                             "none — attach one (run.attach_sheet), or give one image")
        if not target:
            raise ScaleError("the group is empty — expected the sheet's columns and values, e.g. {'camera': 'A'}")
        keep = pd.Series(True, index=sheet.index)
        for col, value in target.items():
            if col not in sheet:
                raise ScaleError(f"the sheet has no column {col!r} — expected one of {', '.join(map(str, sheet.columns))}")
            keep &= sheet[col].astype(str) == str(value)
        ids = set(sheet.loc[keep, "image_id"])
        chosen = images[images["image_id"].isin(ids)]
        label = ", ".join(f"{k}={v}" for k, v in target.items())
        if chosen.empty:
            raise ScaleError(f"no image of run {run.run_id} is in the sheet group {label} — check the group's values "
                             "(run.sheet())")
        return chosen, label
    name = str(target)
    hit = images[(images["image_id"] == name) | (images["path"].astype(str) == name)
                 | (images["path"].astype(str).map(os.path.basename) == name)]
    if len(hit) != 1:
        why = "matches several images" if len(hit) else "is not an image of run " + run.run_id
        raise ScaleError(f"image {name!r} {why} — give its path as in the run, or its image id (run.per_image())")
    return hit, None


def set_scale(run: CorrectableRun, image: str | Mapping[str, Any], *, mm: float, px_length: float | None = None,
              line: Sequence[float] | None = None, drawn_on: str | None = None, author: str | None = None
              ) -> pd.DataFrame:
    """Record a scale drawn by hand: ``mm`` millimetres over ``px_length`` pixels (or the ``line`` x1, y1, x2,
    y2 in pixels), for ``image`` (a path as in the run, a file name, or an image id) or for every image of a
    sheet group (``{"camera": "A"}``). Returns the run's scales (:func:`scales`) after saving.

    A line of zero length, a length of zero or below, an unknown image or group are refused with the reason,
    and nothing is saved. A scale that disagrees with the sheet's by more than 10 % is saved and flagged.
    ``run.set_scale`` also recounts ``run.json``'s counts on a run with a minimum shell length."""
    mm = _number(mm, "mm", "the line's true length in millimetres, > 0")
    if line is not None:
        if len(line) != 4:
            raise ScaleError(f"line is {line!r} — expected its two ends in pixels: (x1, y1, x2, y2)")
        x1, y1, x2, y2 = (float(v) for v in line)
        drawn = math.hypot(x2 - x1, y2 - y1)
        if px_length is not None and abs(float(px_length) - drawn) > 1e-6 * max(1.0, drawn):
            raise ScaleError(f"px_length {px_length!r} differs from the line's length {drawn:.3f} — give one of them")
        px_length = drawn
    if px_length is None:
        raise ScaleError("a scale needs the line's length in pixels — give px_length= or line=(x1, y1, x2, y2)")
    px = _number(px_length, "the line's length in pixels", "a line longer than 0 px")
    chosen, group = _images_of(run, image)
    now, sid = utcnow(), uuid.uuid4().hex[:16]
    who = author or default_author()
    rows = [{"scale_id": sid, "image_id": iid, "path": path, "group": group, "drawn_on": drawn_on or
             (None if group else path), "px_length": px, "mm": mm, "mm_per_px": mm / px,
             "line": None if line is None else [float(v) for v in line], "author": who, "created_at": now}
            for iid, path in zip(chosen["image_id"], chosen["path"])]
    write_scales(run.store, rows)
    return scales(run)


def scales(run: CorrectableRun, images: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each image's scale (mm per pixel) and its source (see :func:`musseltools.results.sizes.image_scales`):
    ``source`` is ``sheet mm_per_px``, ``sheet quadrat_side_m``, ``drawn`` or None (lengths in pixels only);
    ``flagged`` marks a drawn scale more than 10 % off the sheet's. ``images``: the run's image table when the
    caller has it (``image_id, path, width, height``)."""
    images = run.per_image(min_length_mm=0) if images is None else images
    return image_scales(images, stored_sheets.read_sheet(run.store, run.run_id), read_scales(run.store))
