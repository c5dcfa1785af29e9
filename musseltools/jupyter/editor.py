"""The correction editor: check a run's images by hand in JupyterLab, one at a time.

:class:`CorrectionEditor` shows an image with its detections at the thresholds in use (corrections
applied) and saves every edit at once, as one correction (:mod:`musseltools.store.corrections_log`): atomic, so a
killed kernel loses at most the edit being saved. It walks the review queue
(:func:`musseltools.corrections.review.review_queue`): the least certain images first, then those already verified.

Mouse and keys (while the pointer is over the image)

- click a box: toggle its class (live <-> dead; the next category with more);
- ``d``, Delete or Backspace: delete the box under the pointer (else the last one clicked);
- drag on the image: add a box of the chosen category (``1``-``9`` choose it);
- ``v``: mark the image verified (again: take the mark back);
- right arrow or ``n``: next image; left arrow or ``p``: previous;
- ``u`` or Ctrl+Z: undo this editor's last edit (a later correction: nothing is erased);
- mode **scale**: drag a line along a ruler or the quadrat's side, type its true length in mm, choose this
  image or a sheet group (one camera set-up) and save: ``run.set_scale``, stored in the store, so it outlives
  the kernel. The image's scale (mm per pixel, where it came from, a flag when it disagrees with the sheet) is
  shown above the image;
- mode **length**: click a box: its length line shows with a handle at each end; drag an end and drop it:
  a ``length`` correction (``run.set_length``), undoable like every edit;
- ``+``/``-`` or Ctrl+wheel: zoom (``0``: the whole image); Shift+arrows, Shift-drag or a middle-button
  drag: pan. An image opens zoomed so that its median box is at least 20 screen pixels (a 4000x3000
  quadrat of 600 mussels opens at 4x or 8x, from its top-left corner); every key and click works the
  same at any zoom.

The front end is an `anywidget <https://anywidget.dev>`_ module (``musseltools/static/editor.js``):
an SVG image with one rectangle per detection, in the image's own pixel coordinates.

Examples
--------
>>> from musseltools.jupyter.editor import CorrectionEditor                 # doctest: +SKIP
>>> ed = CorrectionEditor(mt.open_run("e16894b5c394"))               # doctest: +SKIP
>>> ed                                     # displays the editor     # doctest: +SKIP
>>> ed.survey_counts, ed.last_save_s                                 # doctest: +SKIP
({'live': 1190, 'dead': 205}, 0.012)
"""

from __future__ import annotations

import html
import logging
import time
from pathlib import Path
from typing import Any

import anywidget
import ipywidgets as widgets
import numpy as np
import traitlets

from ..errors import MusselToolsError
from ..plots import survey as plots
from ..results import sizes, views
from ..results.corrected import next_category_class
from ..runs.run import Run
from . import editor_sizes

__all__ = ["CorrectionEditor", "EditorCanvas"]

log = logging.getLogger(__name__)

HELP = ("click a box: live &harr; dead &nbsp;·&nbsp; <b>d</b>/Del: delete the box under the pointer &nbsp;·&nbsp; "
        "drag: add a box (<b>1</b>-<b>9</b>: its class) &nbsp;·&nbsp; <b>v</b>: verified &nbsp;·&nbsp; "
        "&rarr;/<b>n</b>, &larr;/<b>p</b>: next, previous &nbsp;·&nbsp; <b>u</b>/Ctrl+Z: undo &nbsp;·&nbsp; "
        "<b>+</b>/<b>-</b>/Ctrl+wheel: zoom, <b>0</b>: whole image, Shift+arrows/Shift-drag: pan")


class EditorCanvas(anywidget.AnyWidget):
    """The image and its boxes in the browser (``static/editor.js``); it sends edits to Python."""

    _esm = Path(__file__).with_name("static") / "editor.js"
    image = traitlets.Bytes(b"").tag(sync=True)
    width = traitlets.Int(1).tag(sync=True)
    height = traitlets.Int(1).tag(sync=True)
    boxes = traitlets.List().tag(sync=True)
    colours = traitlets.Dict().tag(sync=True)
    categories = traitlets.List().tag(sync=True)
    add_label = traitlets.Unicode("").tag(sync=True)
    mode = traitlets.Unicode("boxes").tag(sync=True)  # boxes | scale | length
    scale_line = traitlets.List().tag(sync=True)  # the scale line being drawn: [x1, y1, x2, y2], or []


class CorrectionEditor(widgets.VBox):
    """Correct a run's detections image by image; every edit is saved at once.

    Parameters
    ----------
    run : Run
    threshold : optional
        The thresholds the boxes are shown (and images verified) at; default: those in effect.
    order : {"queue", "path"}
        Walk the review queue (least certain first, verified images last), or the images by path.
    other : Run, optional
        A second run: where the two disagree counts in the review queue.
    author : str, optional
        Recorded with each edit (default: the OS user).
    max_side : int
        Longer side in pixels of the image sent to the browser (boxes keep full-resolution coordinates).

    Attributes
    ----------
    last_save_s : float
        Seconds the last edit took to check and save (atomic Parquet write, fsync included).
    last_edit_s : float
        Seconds from receiving the last edit to the refreshed view.
    """

    def __init__(self, run: Run, *, threshold: Any | None = None, order: str = "queue", other: Run | None = None,
                 author: str | None = None, max_side: int = 1280) -> None:
        if order not in ("queue", "path"):
            raise ValueError(f"order {order!r} is not one of ('queue', 'path')")
        self.run = run
        self.rule = run.rule(threshold)
        self.classes = run.classes
        self.author = author
        self.max_side = max_side
        table = run.per_image(self.rule)
        self.table = table.set_index("image_id")
        self.order = self._order(order, other)
        self.position = 0
        self.history: list[str] = []
        self.last_save_s = 0.0
        self.last_edit_s = 0.0
        self._preview: tuple[str, bytes] | None = None
        cats = self.classes.categories
        self.canvas = EditorCanvas(colours=plots.class_colours(cats), categories=cats, add_label=cats[0])
        self.canvas.on_msg(self._on_msg)
        self.canvas.layout = widgets.Layout(width="100%", max_width="900px")
        self.title_html = widgets.HTML()
        self.title_html.add_class("mt-editor-title")
        self.counts_html = widgets.HTML()
        self.counts_html.add_class("mt-editor-counts")
        self.status_html = widgets.HTML()
        self.status_html.add_class("mt-editor-status")
        self.add_choice = widgets.ToggleButtons(options=cats, value=cats[0], description="add as",
                                                style={"button_width": "6em"})
        widgets.link((self.add_choice, "value"), (self.canvas, "add_label"))
        buttons = []
        for text, icon, action in (("previous", "arrow-left", self.previous), ("next", "arrow-right", self.next),
                                   ("verified", "check", self.toggle_verified), ("undo", "undo", self.undo)):
            b = widgets.Button(description=text, icon=icon, layout=widgets.Layout(width="8em"))
            b.on_click(lambda _b, act=action: self._safely(act))
            buttons.append(b)
        self.verify_button = buttons[2]
        self.selected: str | None = None
        self.scale: dict[str, Any] = {}
        self.task = run.meta["model"].get("task")
        self._sized: str | None = None
        sizes_row = self._sizes_widgets()
        super().__init__([self.title_html, self.counts_html, widgets.HBox([*buttons, self.add_choice]), sizes_row,
                          self.scale_html, self.canvas, widgets.HTML(f"<small>{HELP}</small>"), self.status_html])
        self.add_class("mt-correction-editor")
        self._show()

    def _sizes_widgets(self) -> widgets.Widget:
        """The mode switch, the scale form (shown in scale mode) and the lines about the scale and a length."""
        self.mode_choice = widgets.ToggleButtons(options=[("boxes", "boxes"), ("scale", "scale"), ("length", "length")],
                                                 value="boxes", description="mode", style={"button_width": "6em"})
        self.mode_choice.add_class("mt-editor-mode")
        widgets.link((self.mode_choice, "value"), (self.canvas, "mode"))
        self.scale_mm = widgets.Text(placeholder="true length in mm", description="line is (mm)",
                                     layout=widgets.Layout(width="16em"))
        self.scale_mm.add_class("mt-editor-scale-mm")
        self.scale_target = widgets.Dropdown(options=[("this image", "")], value="", description="for",
                                             layout=widgets.Layout(width="28em"))
        self.scale_target.add_class("mt-editor-scale-target")
        save = widgets.Button(description="save scale", icon="check", layout=widgets.Layout(width="9em"))
        save.add_class("mt-editor-scale-save")
        save.on_click(lambda _b: self._safely(self.save_scale))
        self.scale_form = widgets.HBox([self.scale_mm, self.scale_target, save],
                                       layout=widgets.Layout(display="none"))
        self.scale_form.add_class("mt-editor-scale-form")
        self.scale_html = widgets.HTML()
        self.scale_html.add_class("mt-editor-scale")
        self.length_html = widgets.HTML()
        self.length_html.add_class("mt-editor-length")
        self.canvas.observe(self._mode_changed, names="mode")
        return widgets.VBox([self.mode_choice, self.scale_form, self.length_html])

    def _mode_changed(self, change: Any) -> None:
        self.scale_form.layout.display = "flex" if change["new"] == "scale" else "none"
        self.length_html.value = (editor_sizes.length_text(self._box(self.selected), self.scale.get("mm_per_px"))
                                  if change["new"] == "length" else "")

    # ------------------------------------------------------------------ state
    def _order(self, order: str, other: Run | None) -> list[str]:
        ok = self.table[self.table["error"].isna() & self.table["processed_at"].notna()]
        if order == "path":
            return ok.sort_values("path").index.tolist()
        queue = self.run.review_queue(n=None, other=other, threshold=self.rule)["image_id"].tolist()
        done = ok[ok["verified"]].sort_values("path").index.tolist()
        return queue + [i for i in done if i not in set(queue)]

    @property
    def image_id(self) -> str | None:
        """The image shown."""
        return self.order[self.position] if self.order else None

    @property
    def survey_counts(self) -> dict[str, int]:
        """Corrected survey totals at the editor's thresholds (equal to ``run.counts(threshold)``)."""
        return {c: int(self.table[c].sum()) for c in self.classes.categories}

    @property
    def image_counts(self) -> dict[str, int]:
        """Corrected counts of the image shown."""
        if self.image_id is None:
            return dict.fromkeys(self.classes.categories, 0)
        return {c: int(self.table.at[self.image_id, c]) for c in self.classes.categories}

    @property
    def boxes(self) -> list[dict[str, Any]]:
        """The boxes shown: ``id, x1, y1, x2, y2, label`` (category), ``source``, ``confidence``, and the length:
        ``line`` (its ends), ``length_px``, ``length_method``."""
        return list(self.canvas.boxes)

    def _box(self, detection_id: str | None) -> dict[str, Any] | None:
        return next((b for b in self.canvas.boxes if b["id"] == detection_id), None)

    # ------------------------------------------------------------------ edits
    def _save(self, kind: str, **spec: Any) -> str:
        t0 = time.perf_counter()
        cid = self.run.correct([{"kind": kind, "author": self.author, **spec}], threshold=self.rule,
                               image_ids=[self.image_id])[0]
        self.last_save_s = time.perf_counter() - t0
        self.history.append(cid)
        return cid

    def toggle(self, detection_id: str) -> str:
        """Give a detection the next category (live <-> dead); saved at once. Returns the correction id."""
        box = next((b for b in self.canvas.boxes if b["id"] == detection_id), None)
        if box is None:
            raise MusselToolsError(f"detection {detection_id!r} is not shown — pick a box of the image shown")
        to = next_category_class(box["class_name"], self.classes)
        cid = self._save("reclassify", detection_id=detection_id, class_name=to)
        self._show(f"{box['label']} box set to {self.classes.category(to)}")
        return cid

    def delete(self, detection_id: str) -> str:
        """Delete a detection; saved at once."""
        cid = self._save("delete", detection_id=detection_id)
        self._show("box deleted")
        return cid

    def add(self, box: Any, label: str | None = None) -> str:
        """Add a box ``(x1, y1, x2, y2)`` in image pixels, of a category (default: the chosen one)."""
        label = label or self.canvas.add_label
        cid = self._save("add", image=self.image_id, box=[float(v) for v in box], class_name=label)
        self._show(f"{label} box added")
        return cid

    def set_length(self, detection_id: str, line: Any) -> str:
        """Measure a detection's length by hand: ``line`` = its two ends (x1, y1, x2, y2) in image pixels;
        saved at once as a ``length`` correction (undoable). Returns the correction id."""
        if self._box(detection_id) is None:
            raise MusselToolsError(f"detection {detection_id!r} is not shown — pick a box of the image shown")
        self.selected = detection_id
        x1, y1, x2, y2 = (float(v) for v in line)
        cid = self._save("length", detection_id=detection_id, line=[x1, y1, x2, y2])
        self._show(f"length set to {np.hypot(x2 - x1, y2 - y1):.1f} px")
        return cid

    def select(self, detection_id: str) -> None:
        """Select a detection: its length is shown (length mode draws its line with a handle at each end)."""
        self.selected = detection_id if self._box(detection_id) is not None else None
        self.length_html.value = editor_sizes.length_text(self._box(self.selected), self.scale.get("mm_per_px"))

    def draw_scale_line(self, line: Any) -> None:
        """The scale line drawn on the image shown (x1, y1, x2, y2 in image pixels), to save with :meth:`save_scale`."""
        x1, y1, x2, y2 = (float(v) for v in line)
        self.canvas.scale_line = [x1, y1, x2, y2]
        self.status_html.value = (f"scale line of {np.hypot(x2 - x1, y2 - y1):.1f} px drawn — type its true length "
                                  "in mm, choose what it applies to and save")

    def save_scale(self, mm: Any = None, target: str | dict[str, Any] | None = None) -> Any:
        """Save the scale line drawn (:meth:`draw_scale_line`) as ``mm`` millimetres (default: the typed value)
        for this image, or a sheet group (``target``: the dropdown's choice by default) with ``run.set_scale``;
        returns ``run.scales()``. A zero-length line or a length of zero or below is refused with the reason."""
        line = list(self.canvas.scale_line)
        if len(line) != 4:
            raise MusselToolsError("no scale line drawn — choose mode 'scale' and drag along a ruler or the "
                                   "quadrat's side, then save")
        mm = self.scale_mm.value if mm is None else mm
        target = self.scale_target.value if target is None else target
        group = editor_sizes.group_of(target) if isinstance(target, str) else target
        t0 = time.perf_counter()
        out = self.run.set_scale(group or self.image_id, mm=mm, line=line,
                                 drawn_on=str(self.table.at[self.image_id, "path"]), author=self.author)
        self.last_save_s = time.perf_counter() - t0
        where = ", ".join(f"{k} = {v}" for k, v in group.items()) if group else "this image"
        self._show(f"scale saved for {where}: {float(mm):g} mm over {np.hypot(line[2] - line[0], line[3] - line[1]):.1f} px")
        return out

    def toggle_verified(self) -> str:
        """Mark the image verified, or take the mark back; saved at once."""
        verified = bool(self.table.at[self.image_id, "verified"])
        cid = self._save("unverify" if verified else "verify", image=self.image_id)
        self._show("verified mark taken back" if verified else "image marked verified")
        return cid

    def undo(self) -> str | None:
        """Undo this editor's last edit (saved as an ``undo`` correction); None when there is none."""
        if not self.history:
            self._show("nothing to undo")
            return None
        target = self.history.pop()
        t0 = time.perf_counter()
        cid = self.run.undo(target, author=self.author)
        self.last_save_s = time.perf_counter() - t0
        self._show("last edit undone")
        return cid

    def go(self, position: int) -> None:
        """Show the image at a position of :attr:`order`."""
        if self.order:
            self.position = int(np.clip(position, 0, len(self.order) - 1))
        self._show()

    def next(self) -> None:
        """The next image."""
        self.go(self.position + 1)

    def previous(self) -> None:
        """The previous image."""
        self.go(self.position - 1)

    # ------------------------------------------------------------------ events
    def _safely(self, action: Any, *args: Any) -> None:
        t0 = time.perf_counter()
        try:
            action(*args)
        except MusselToolsError as exc:
            self.status_html.value = f"<span style='color:#b00'>not saved: {html.escape(str(exc))}</span>"
            log.warning("editor: %s", exc)
        self.last_edit_s = time.perf_counter() - t0

    def _on_msg(self, _widget: Any, content: dict[str, Any], _buffers: Any) -> None:
        kind = content.get("type")
        if kind == "toggle":
            self._safely(self.toggle, str(content["id"]))
        elif kind == "delete":
            self._safely(self.delete, str(content["id"]))
        elif kind == "add":
            self._safely(self.add, content["box"], content.get("label"))
        elif kind == "verify":
            self._safely(self.toggle_verified)
        elif kind == "undo":
            self._safely(self.undo)
        elif kind == "nav":
            self._safely(self.go, self.position + int(content.get("step", 1)))
        elif kind == "select":
            self._safely(self.select, str(content["id"]))
        elif kind == "length":
            self._safely(self.set_length, str(content["id"]), content["line"])
        elif kind == "scale_line":
            self._safely(self.draw_scale_line, content["line"])

    # ------------------------------------------------------------------ view
    def _box_dicts(self, dets: Any, applied: Any) -> list[dict[str, Any]]:
        """The boxes sent to the browser, with their length lines (a hand-measured one where there is one)."""
        hand = applied[applied["kind"] == "length"] if "kind" in applied else applied.iloc[:0]
        hand = hand.drop_duplicates("detection_id", keep="last").set_index("detection_id") if len(hand) else None
        lines = sizes.length_lines(dets, self.task, hand)
        return [
            {"id": d, "x1": float(a), "y1": float(b), "x2": float(c), "y2": float(e), "class_name": n,
             "label": self.classes.category(n), "source": s, "confidence": float(f),
             "line": [round(float(v), 2) for v in ln], "length_px": float(lp), "length_method": lm}
            for d, a, b, c, e, n, s, f, ln, lp, lm in zip(
                dets["detection_id"], dets["x1"], dets["y1"], dets["x2"], dets["y2"], dets["class_name"],
                dets["source"], dets["confidence"], lines, dets["length_px"], dets["length_method"])
        ]

    def _show_sizes(self, image_id: str, table: Any) -> None:
        """The image's scale, what a scale drawn on it can apply to, and the selected detection's length."""
        if self._sized != image_id:  # another image: its own groups, no scale line drawn yet, nothing selected
            self._sized = image_id
            self.canvas.scale_line = []
            self.selected = None
            self.scale_target.options = editor_sizes.scale_groups(self.run.sheet(), image_id)
        self.scale = editor_sizes.scale_of_image(self.run, table)
        self.scale_html.value = editor_sizes.scale_text(self.scale)
        if self.canvas.mode == "length":
            self.length_html.value = editor_sizes.length_text(self._box(self.selected), self.scale.get("mm_per_px"))

    def _image_bytes(self, image_id: str, path: str) -> bytes:
        import cv2

        if self._preview is None or self._preview[0] != image_id:
            rgb, _scale = plots.read_image_rgb(path, self.max_side)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
            self._preview = (image_id, buf.tobytes() if ok else b"")
        return self._preview[1]

    def _show(self, message: str | None = None) -> None:
        iid = self.image_id
        if iid is None:
            self.title_html.value = "<b>No image with results to correct</b>"
            return
        res = self.run.results(image_ids=[iid])
        counted = self.run.at_length(res)  # what counts: shells under the run's minimum length left out
        table = views.per_image_counts(counted.images, counted.detections, self.rule, res.classes)
        counts = table.iloc[0]
        for c in self.classes.categories:
            self.table.at[iid, c] = int(counts[c])
        self.table.at[iid, "verified"] = bool(counts["verified"])
        self.canvas.width, self.canvas.height = int(counts["width"]), int(counts["height"])
        dets = views.above_threshold(res.detections, self.rule)
        # every box is shown, so that it can be corrected; those under the minimum length are said not to count
        short = len(dets) - len(views.above_threshold(counted.detections, self.rule))
        self.canvas.boxes = self._box_dicts(dets, res.applied)
        self._show_sizes(iid, table)
        path = str(counts["path"])
        try:
            self.canvas.image = self._image_bytes(iid, path)
        except (OSError, ValueError) as exc:
            self.canvas.image = b""
            message = f"cannot read {path}: {exc}"
        verified = bool(counts["verified"])
        self.verify_button.button_style = "success" if verified else ""
        tick = plots.OKABE_ITO["bluish_green"]
        mark = f" &nbsp;<span class='mt-editor-verified' style='color:{tick}'>&#10003; verified</span>" if verified else ""
        self.title_html.value = (f"<b>{html.escape(Path(path).name)}</b> — image {self.position + 1} of "
                                 f"{len(self.order)} (review queue), threshold "
                                 f"{html.escape(self.rule.label(self.classes))}{mark}")
        fmt = ", ".join
        self.counts_html.value = (
            f"<span class='mt-editor-image-counts'>This image: {fmt(f'{c} <b>{v}</b>' for c, v in self.image_counts.items())}</span>"
            f" &nbsp;|&nbsp; <span class='mt-editor-survey-counts'>Survey: "
            f"{fmt(f'{c} <b>{v}</b>' for c, v in self.survey_counts.items())}</span>"
            + (f" &nbsp;|&nbsp; <span class='mt-editor-short'>{short} boxes under {self.run.min_length_mm:g} mm shown, "
               "not counted</span>" if short else ""))
        if message:
            self.status_html.value = f"{html.escape(message)} — saved in {self.last_save_s * 1000:.0f} ms"
