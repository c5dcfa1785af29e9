"""What the correction editor shows about sizes: the image's scale, the groups a drawn scale can apply to, and
the selected detection's length (:class:`musseltools.jupyter.editor.CorrectionEditor`'s scale and length modes).

A scale drawn in the editor is saved by ``run.set_scale`` (:mod:`musseltools.corrections.scales`) in the store,
so a new editor on the same store, after a kernel restart too, shows it; a length is a ``length`` correction
(``run.set_length``).
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

import pandas as pd

from ..results.sizes import image_scales
from ..store.scales_log import read_scales

__all__ = ["IDENTIFIERS", "scale_groups", "scale_of_image", "scale_text", "length_text", "group_of"]

#: Sheet columns that name one image or hold a per-image number: no group to apply a scale to.
IDENTIFIERS = ("image_id", "sheet_row", "sheet_image", "image", "path", "area_m2", "mm_per_px", "quadrat_side_m")


def scale_groups(sheet: pd.DataFrame | None, image_id: str) -> list[tuple[str, str]]:
    """Dropdown options (label, value) of what a scale drawn on ``image_id`` can apply to: the image itself
    (value ``""``), and each sheet group that holds the image (value: the group as JSON, ``{"camera": "A"}``).

    >>> sheet = pd.DataFrame({"image_id": ["a", "b", "c"], "camera": ["A", "A", "B"]})
    >>> scale_groups(sheet, "a")
    [('this image', ''), ('every image with camera = A (2 images)', '{"camera": "A"}')]
    """
    options = [("this image", "")]
    if sheet is None or "image_id" not in sheet:
        return options
    rows = sheet[sheet["image_id"] == image_id]
    if rows.empty:
        return options
    row = rows.iloc[0]
    for col in sheet.columns:
        value = row[col]
        if col in IDENTIFIERS or value is None or (not isinstance(value, str) and pd.isna(value)):
            continue
        n = int((sheet[col].astype(str) == str(value)).sum())
        options.append((f"every image with {col} = {value} ({n} images)", json.dumps({str(col): str(value)})))
    return options


def group_of(value: str) -> dict[str, str] | None:
    """The sheet group a dropdown value names (None: this image)."""
    return json.loads(value) if value else None


def scale_of_image(run: Any, image: pd.DataFrame) -> dict[str, Any]:
    """The scale row (:data:`musseltools.results.sizes.SCALE_COLUMNS`) of one image (``image``: its per-image
    row, with ``image_id, path, width, height``), read from the store (the sheet and the drawn scales)."""
    sheet = run.sheet()
    table = image_scales(image, sheet, read_scales(run.store))
    return table.iloc[0].to_dict()


def scale_text(scale: dict[str, Any]) -> str:
    """HTML: the image's scale and where it came from, or that it has none (lengths in pixels only)."""
    mm = scale.get("mm_per_px")
    if mm is None or not math.isfinite(float(mm)):
        return "<span class='mt-editor-scale-none'>no scale: lengths in pixels only — choose <b>scale</b>, drag " \
               "along a ruler or the quadrat's side and type its length</span>"
    source = str(scale["source"])
    if source == "drawn":
        who = html.escape(str(scale.get("drawn_by") or ""))
        when = pd.Timestamp(scale["drawn_at"]).strftime("%Y-%m-%d %H:%M") if pd.notna(scale.get("drawn_at")) else ""
        source = f"drawn by {who} {when} UTC"
    text = f"scale <b>{float(mm):.4g} mm/px</b> ({html.escape(source)})"
    if scale.get("flagged"):
        text += (f" <span class='mt-editor-scale-flag' style='color:#b00'>&#9888; the drawn scale "
                 f"{float(scale['drawn_mm_per_px']):.4g} mm/px differs from the sheet's by "
                 f"{100 * float(scale['disagreement']):.0f} % (the sheet's applies)</span>")
    return text


def length_text(box: dict[str, Any] | None, mm_per_px: Any) -> str:
    """HTML: the selected detection's length in pixels (and mm with a scale), and how it was measured."""
    if box is None:
        return "length mode: click a box, then drag either end of its line"
    text = f"{html.escape(str(box['label']))} box: length <b>{box['length_px']:.1f} px</b>"
    if mm_per_px is not None and math.isfinite(float(mm_per_px)):
        text += f" = <b>{box['length_px'] * float(mm_per_px):.1f} mm</b>"
    return text + f" ({html.escape(str(box['length_method']))})"
