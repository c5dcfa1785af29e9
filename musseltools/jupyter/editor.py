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
from ..results import views
from ..results.corrected import next_category_class
from ..runs.run import Run

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
        super().__init__([self.title_html, self.counts_html, widgets.HBox([*buttons, self.add_choice]), self.canvas,
                          widgets.HTML(f"<small>{HELP}</small>"), self.status_html])
        self.add_class("mt-correction-editor")
        self._show()

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
        """The boxes shown: ``id, x1, y1, x2, y2, label`` (category), ``source``, ``confidence``."""
        return list(self.canvas.boxes)

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

    # ------------------------------------------------------------------ view
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
        counts = views.per_image_counts(counted.images, counted.detections, self.rule, res.classes).iloc[0]
        for c in self.classes.categories:
            self.table.at[iid, c] = int(counts[c])
        self.table.at[iid, "verified"] = bool(counts["verified"])
        self.canvas.width, self.canvas.height = int(counts["width"]), int(counts["height"])
        dets = views.above_threshold(res.detections, self.rule)
        # every box is shown, so that it can be corrected; those under the minimum length are said not to count
        short = len(dets) - len(views.above_threshold(counted.detections, self.rule))
        self.canvas.boxes = [
            {"id": d, "x1": float(a), "y1": float(b), "x2": float(c), "y2": float(e), "class_name": n,
             "label": self.classes.category(n), "source": s, "confidence": float(f)}
            for d, a, b, c, e, n, s, f in zip(dets["detection_id"], dets["x1"], dets["y1"], dets["x2"], dets["y2"],
                                              dets["class_name"], dets["source"], dets["confidence"])
        ]
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
