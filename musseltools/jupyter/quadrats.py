"""Check a quadrat by eye: step through a run's images, sort them, zoom, show confidences and a legend.

:class:`QuadratNavigator` holds the controls (previous/next with the neighbours' counts, a jump list,
the sort order, zoom and pan, confidence labels); :func:`render_quadrat` draws an image's kept
detections on the part of the image in view, with a legend. :class:`~musseltools.jupyter.widgets.ThresholdTuner`
puts both beside its sliders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd

from ..plots import survey as plots
from ..plots.labels import Label, draw_labels, place_labels

__all__ = ["QuadratNavigator", "label_note", "render_quadrat", "render_quadrat_labelled", "SORTS", "ZOOMS"]

#: Sort orders of the images: label -> key (see :meth:`QuadratNavigator.sort_order`).
SORTS = {"file name": "name", "most mussels first": "most", "fewest mussels first": "fewest",
         "failures first": "failures", "disagreement with the truth": "truth"}
#: Zoom factors offered (1: the whole image).
ZOOMS = (1, 2, 4, 8)


def _counts_short(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {int(v)}" for k, v in counts.items())


def _visible(rows: pd.DataFrame, window: tuple[float, float, float, float]) -> pd.DataFrame:
    """The rows whose box meets ``window`` (x0, y0, x1, y1 in detection coordinates), shifted to it."""
    x0, y0, x1, y1 = window
    keep = (rows["x2"] >= x0) & (rows["x1"] <= x1) & (rows["y2"] >= y0) & (rows["y1"] <= y1)
    rows = rows[keep].copy()
    rows[["x1", "x2"]] -= x0
    rows[["y1", "y2"]] -= y0
    if "polygon" in rows:
        rows["polygon"] = [None if p is None or len(p) < 3 else [(px - x0, py - y0) for px, py in p]
                           for p in rows["polygon"]]
    return rows


def _window(shape: tuple[int, ...], scale: float, zoom: int, pan: tuple[float, float]) -> tuple[int, int, int, int]:
    """The crop (pixels of the scaled image) in view at ``zoom``, centred at ``pan`` (fractions), clamped."""
    h, w = shape[:2]
    cw, ch = max(1, round(w / zoom)), max(1, round(h / zoom))
    x0 = int(min(max(pan[0] * w - cw / 2, 0), w - cw))
    y0 = int(min(max(pan[1] * h - ch / 2, 0), h - ch))
    return x0, y0, x0 + cw, y0 + ch


def _confidence_labels(rows: pd.DataFrame, colours: Mapping[str, str], scale: float, shape: tuple[int, ...],
                       min_height: int, avoid: Sequence[tuple[int, int, int, int]]) -> tuple[list[Label], int]:
    """Labels with each box's confidence, highest first, placed so none overlaps another nor ``avoid``."""
    names = rows["category"] if "category" in rows else rows["class_name"]
    order = np.argsort(-rows["confidence"].to_numpy(np.float64), kind="stable")
    boxes = (rows[["x1", "y1", "x2", "y2"]].to_numpy(np.float64) * scale)[order]
    texts = [f"{c:.2f}" for c in rows["confidence"].to_numpy()[order]]
    cols = [plots.colour_of(str(n), colours) for n in names.to_numpy()[order]]
    return place_labels([tuple(b) for b in boxes], texts, shape, min_height=min_height, colours=cols, avoid=avoid)


def _legend_layout(shape: tuple[int, ...], counts: Mapping[str, int], note: str) -> tuple[float, int, list[str], int]:
    """The legend's font size, line height, lines and width (pixels) on an image of ``shape``."""
    size = max(0.45, shape[1] / 1600)
    line = int(24 * size / 0.45)
    texts = [f"{k} {int(v)}" for k, v in counts.items()] + ([note] if note else [])
    return size, line, texts, int(max(len(t) for t in texts) * 11 * size / 0.45) + line + 12


def _draw_legend(out: np.ndarray, counts: Mapping[str, int], colours: Mapping[str, str], note: str) -> None:
    import cv2

    size, line, texts, width = _legend_layout(out.shape, counts, note)
    cv2.rectangle(out, (4, 4), (4 + width, 8 + line * len(texts)), (255, 255, 255), -1)
    for j, (k, text) in enumerate(zip([*counts, None], texts)):
        y = 6 + line * j
        if k is not None:
            cv2.rectangle(out, (10, y + 4), (10 + line - 8, y + line - 4), plots.colour_of(k, colours), -1)
        cv2.putText(out, text, (14 + line - 8 if k is not None else 10, y + line - 7), cv2.FONT_HERSHEY_SIMPLEX,
                    size, (20, 20, 20), 1, cv2.LINE_AA)


def label_note(placed: Sequence[Label], hidden: int, shape: tuple[int, ...]) -> str:
    """A line under the image: how many confidences are shown, how many were left out and what to do.

    Its ``data-*`` attributes give the drawn image's width and each label's plate and digit height (pixels
    of the drawn image), so a page can check the labels' size on screen against the image's."""
    import json

    boxes = [[p.x0, p.y0, p.x1, p.y1] for p in placed]
    heights = sorted({p.text_height for p in placed})
    text = f"confidence shown on {len(placed)} of {len(placed) + hidden} boxes"
    if hidden:
        text += f"; {hidden} left out where labels would overlap: zoom in to read them"
    return (f"<span class='mt-labels' data-width='{shape[1]}' data-height='{shape[0]}' "
            f"data-text-height='{min(heights) if heights else 0}' data-boxes='{json.dumps(boxes)}'>{text}</span>")


def render_quadrat(rgb: np.ndarray, scale: float, rows: pd.DataFrame, colours: Mapping[str, str], *,
                   counts: Mapping[str, int], zoom: int = 1, pan: tuple[float, float] = (0.5, 0.5),
                   confidences: bool = False, out_side: int = 1024) -> np.ndarray:
    """The part of an image in view with its detections, their confidences on demand, and a legend.

    ``rgb`` is the image at ``scale`` of the detections' coordinates; ``zoom`` shows ``1/zoom`` of it
    around ``pan`` (fractions of width and height), drawn with its longer side ``out_side`` pixels:
    show it at that size (see :func:`render_quadrat_labelled`). The legend names each colour with ``counts``.
    """
    return render_quadrat_labelled(rgb, scale, rows, colours, counts=counts, zoom=zoom, pan=pan,
                                   confidences=confidences, out_side=out_side)[0]


def render_quadrat_labelled(rgb: np.ndarray, scale: float, rows: pd.DataFrame, colours: Mapping[str, str], *,
                            counts: Mapping[str, int], zoom: int = 1, pan: tuple[float, float] = (0.5, 0.5),
                            confidences: bool = False, out_side: int = 1024,
                            label_height: int = 12) -> tuple[np.ndarray, list[Label], int]:
    """:func:`render_quadrat`, and its confidence labels: those drawn and how many were left out.

    Labels are ``label_height`` pixels tall (digits) and never overlap: a label that would is left out,
    highest confidences first in, so zooming in shows the rest. The image is drawn at ``out_side`` (its
    longer side) whatever the image's size, so shown at that size a label is ``label_height`` px tall.
    """
    import cv2

    x0, y0, x1, y1 = _window(rgb.shape, scale, zoom, pan)
    crop = rgb[y0:y1, x0:x1]
    rows = _visible(rows, (x0 / scale, y0 / scale, x1 / scale, y1 / scale))
    factor = out_side / max(crop.shape[:2])  # drawn at the size it is shown, smaller or larger
    if factor != 1.0:
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * factor)), max(1, round(crop.shape[0] * factor))),
                          interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    out = plots.draw_detections(crop, rows, colours, scale=scale * factor)
    placed: list[Label] = []
    hidden = 0
    note = f"zoom {zoom}x" if zoom > 1 else ""
    if confidences and len(rows):
        _, line, texts, width = _legend_layout(out.shape, counts, note)
        legend = (0, 0, 4 + width + 2, 8 + line * len(texts) + 2)
        placed, hidden = _confidence_labels(rows, colours, scale * factor, out.shape, label_height, [legend])
        draw_labels(out, placed)
    _draw_legend(out, counts, colours, note)
    return out, placed, hidden


class QuadratNavigator(widgets.VBox):
    """Controls to step through a run's images: previous/next (each with that image's counts), a jump
    list, the sort order, zoom and pan, and confidence labels. ``picker.value`` is the shown image (a
    row of the run's per-image table); ``order`` is the sequence previous/next walk through."""

    def __init__(self, labels: Sequence[str], first: int | None, *, truth: bool) -> None:
        self.labels = list(labels)
        self.order = list(range(len(self.labels)))
        self.picker = widgets.Dropdown(options=self._options(), value=first, description="image",
                                       layout=widgets.Layout(width="26em"))
        self.prev_button = widgets.Button(description="◀ previous", layout=widgets.Layout(width="13em"))
        self.next_button = widgets.Button(description="next ▶", layout=widgets.Layout(width="13em"))
        self.prev_button.add_class("mt-prev")
        self.next_button.add_class("mt-next")
        self.prev_button.on_click(lambda _b: self.step(-1))
        self.next_button.on_click(lambda _b: self.step(1))
        sorts = [k for k, v in SORTS.items() if truth or v != "truth"]
        self.sort = widgets.Dropdown(options=sorts, value="file name", description="sort",
                                     layout=widgets.Layout(width="26em"))
        self.zoom = widgets.ToggleButtons(options=[(f"{z}x" if z > 1 else "fit", z) for z in ZOOMS], value=1,
                                          description="zoom", style={"button_width": "3.5em"})
        self.pan_x = widgets.FloatSlider(value=0.5, min=0, max=1, step=0.05, description="pan →",
                                         continuous_update=False, readout=False, layout=widgets.Layout(width="13em"))
        self.pan_y = widgets.FloatSlider(value=0.5, min=0, max=1, step=0.05, description="pan ↓",
                                         continuous_update=False, readout=False, layout=widgets.Layout(width="13em"))
        self.confidences = widgets.Checkbox(value=False, description="confidence per box", indent=False)
        self.position_html = widgets.HTML()
        self.position_html.add_class("mt-position")
        super().__init__([
            widgets.HBox([self.prev_button, self.next_button]), self.position_html, self.picker, self.sort,
            self.zoom, widgets.HBox([self.pan_x, self.pan_y]), self.confidences,
        ])
        self.add_class("mt-quadrat-nav")

    def _options(self) -> list[tuple[str, int]]:
        return [(self.labels[i], i) for i in self.order]

    def view_changed(self, callback: Any) -> None:
        """Call ``callback(change)`` when the image or how it is shown changes."""
        for w in (self.picker, self.zoom, self.pan_x, self.pan_y, self.confidences):
            w.observe(callback, names="value")

    def neighbours(self) -> tuple[int | None, int | None]:
        """The images before and after the shown one in :attr:`order` (None at either end)."""
        if self.picker.value is None or self.picker.value not in self.order:
            return None, None
        k = self.order.index(self.picker.value)
        return (self.order[k - 1] if k > 0 else None), (self.order[k + 1] if k + 1 < len(self.order) else None)

    def step(self, delta: int) -> None:
        """Show the previous (-1) or next (+1) image in the sort order."""
        target = self.neighbours()[0 if delta < 0 else 1]
        if target is not None:
            self.picker.value = target

    def set_order(self, order: Sequence[int]) -> None:
        """Walk the images in ``order``; the shown image stays."""
        shown = self.picker.value
        self.order = list(order)
        self.picker.options = self._options()  # (a Dropdown then shows its first option)
        self.picker.value = shown

    def describe(self, counts: np.ndarray, categories: Sequence[str]) -> None:
        """Label the buttons with the neighbours' counts and say where the shown image is in the order."""
        before, after = self.neighbours()

        def label(i: int | None) -> str:
            return "" if i is None else _counts_short(dict(zip(categories, counts[i].tolist())))

        self.prev_button.description = f"◀ {label(before)}" if before is not None else "◀ (first)"
        self.next_button.description = f"{label(after)} ▶" if after is not None else "(last) ▶"
        self.prev_button.tooltip = "" if before is None else f"previous: {self.labels[before]}"
        self.next_button.tooltip = "" if after is None else f"next: {self.labels[after]}"
        k = self.order.index(self.picker.value) + 1 if self.picker.value in self.order else 0
        self.position_html.value = f"image {k} of {len(self.order)} ({self.sort.value})"

    @staticmethod
    def sort_order(key: str, counts: np.ndarray, failed: np.ndarray, names: Sequence[str],
                   disagreement: np.ndarray | None = None) -> list[int]:
        """Row indices in the order ``key`` of :data:`SORTS` (ties by file name)."""
        by_name = np.argsort(np.asarray(names, dtype=object), kind="stable")
        total = counts.sum(axis=1) if counts.size else np.zeros(len(names))
        primary = {"most": -total, "fewest": total, "failures": ~failed.astype(bool),
                   "truth": -(disagreement if disagreement is not None else np.zeros(len(names)))}.get(key)
        if primary is None:
            return [int(i) for i in by_name]
        return [int(i) for i in by_name[np.argsort(np.asarray(primary)[by_name], kind="stable")]]
