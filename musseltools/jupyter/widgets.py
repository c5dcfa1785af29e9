"""Jupyter widgets: tune thresholds by eye (:class:`ThresholdTuner`), follow a run (:class:`RunMonitor`,
from :mod:`musseltools.jupyter.monitor`).

Both read the store only: the tuner loads a run's stored detections once (down to the confidence
floor) and filters them in memory, so moving a slider never runs the model; its image view
(:mod:`musseltools.jupyter.quadrats`) steps, sorts and zooms through the images. The monitor polls the
run's ``run.json``, so it follows a run executing in a background thread or in another process.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd

from ..core.thresholds import Thresholds
from ..errors import MusselToolsError
from ..plots import survey as plots
from ..runs.run import Run
from .monitor import RunMonitor
from .quadrats import SORTS, QuadratNavigator, label_note, render_quadrat_labelled

__all__ = ["ThresholdTuner", "RunMonitor"]

log = logging.getLogger(__name__)


def _png(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - cv2 encodes any uint8 RGB array
        raise MusselToolsError("could not encode the plot as PNG")
    return buf.tobytes()


def _jpeg(rgb: np.ndarray, quality: int = 88) -> bytes:
    """Photographs as JPEG: ~10x faster to encode than PNG for a 1024 px survey photo."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover
        raise MusselToolsError("could not encode the preview image as JPEG")
    return buf.tobytes()


def _counts_text(counts: Mapping[str, int]) -> str:
    text = ", ".join(f"{html.escape(str(k))} <b>{int(v)}</b>" for k, v in counts.items())
    if "live" in counts and "dead" in counts:
        n = counts["live"] + counts["dead"]
        text += f" &nbsp;(live fraction {counts['live'] / n:.1%})" if n else " &nbsp;(live fraction n/a)"
    return text


class ThresholdTuner(widgets.VBox):
    """Tune per-class confidence thresholds of a run by eye, with live counts, and save them.

    A first line naming the run, its store and settings; one slider per class; the image with the
    detections kept at the current thresholds and a legend of its counts, browsed with :attr:`nav`
    (previous/next buttons showing the neighbours' counts, a jump list, sorting by count, failures or
    disagreement with ``truth``, zoom 2x-8x with pan, confidence per box on demand); the image's and
    the survey's counts; and the survey count-versus-threshold curves with markers that follow the
    sliders. *Save* records the thresholds on the run
    (:meth:`musseltools.Run.save_thresholds`), so ``musseltools counts``, exports and reports use them.

    Parameters
    ----------
    run : Run
        A run with results (completed, or partly done: the tuner shows what is stored).
    truth : path or Truth or Evaluation, optional
        Labels to score against (see :func:`musseltools.evaluation.evaluate`): precision, recall and
        count error are shown live.
    max_side : int
        Longer side in pixels of the image read for the preview (large quadrats are shrunk once, when
        picked); zoomed in, ``zoom`` times that.
    display_side : int
        Longer side in pixels of the image as drawn and shown: the widget shows it at that size (no
        smaller unless the page is narrower), so confidence labels are as tall on screen as drawn
        (:attr:`label_height`, at least 10 px) and never overlap; :attr:`labels_html` says how many
        were left out where they would have, and that zooming in shows them.

    Examples
    --------
    >>> from musseltools.jupyter.widgets import ThresholdTuner                 # doctest: +SKIP
    >>> tuner = ThresholdTuner(mt.open_run("0339242875d9"))              # doctest: +SKIP
    >>> tuner                                       # displays the widget  # doctest: +SKIP
    >>> tuner.sliders["live"].value = 0.6; tuner.survey_counts           # doctest: +SKIP
    {'live': 1190, 'dead': 205}
    """

    #: Height in pixels of the digits of a confidence label, drawn and shown.
    label_height = 12

    def __init__(self, run: Run, truth: Any = None, *, max_side: int = 1024, display_side: int = 560) -> None:
        t0 = time.perf_counter()
        self.run = run
        self.max_side = max_side
        self.display_side = display_side
        self.class_names = run.class_names
        self.categories = run.categories
        self.classes = run.classes
        floor = run.conf_floor
        self.conf_floor = floor
        table = run.per_image(floor).reset_index(drop=True)
        self.table = table
        dets = run.detections(floor)
        index = pd.Series(np.arange(len(table)), index=table["image_id"].to_numpy())
        index = index[~index.index.duplicated()]
        cls_index = {n: i for i, n in enumerate(self.class_names)}
        cat_index = {c: i for i, c in enumerate(self.categories)}
        self._class_cat = np.array([cat_index[self.classes.category(n)] for n in self.class_names], np.int64)
        img = dets["image_id"].map(index).to_numpy(np.float64)
        keep = ~np.isnan(img)
        dets = dets[keep].reset_index(drop=True)
        self._img = img[keep].astype(np.int64)
        self._cls = dets["class_name"].map(cls_index).to_numpy(np.int64)
        self._conf = dets["confidence"].to_numpy(np.float64)
        order = np.argsort(self._img, kind="stable")
        self._dets = dets.iloc[order].reset_index(drop=True)
        self._img, self._cls, self._conf = self._img[order], self._cls[order], self._conf[order]
        bounds = np.searchsorted(self._img, np.arange(len(table) + 1))
        self._slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self._colours = plots.class_colours(self.categories)
        self._preview_cache: dict[tuple[int, int], tuple[np.ndarray, float] | str] = {}
        self.evaluation = self._evaluation(truth)
        self.metrics: dict[str, dict[str, float]] | None = None
        self.last_update_s = 0.0

        start = run.rule()
        self.sliders: dict[str, widgets.FloatSlider] = {}
        for n in self.class_names:
            v = start.of(n)
            s = widgets.FloatSlider(
                value=float(v), min=floor, max=1.0, step=0.01, description=n, readout_format=".2f",
                continuous_update=False, style={"description_width": "4em"}, layout=widgets.Layout(width="26em"),
            )
            s.observe(self._on_change, names="value")
            self.sliders[n] = s

        self.nav = self._navigator()
        self.picker = self.nav.picker
        self.image, self.labels_html = self._image_widgets(display_side)
        self.image_counts_html = widgets.HTML()
        self.image_counts_html.add_class("mt-image-counts")
        self.survey_counts_html = widgets.HTML()
        self.survey_counts_html.add_class("mt-survey-counts")
        self.metrics_html = widgets.HTML()
        self.metrics_html.add_class("mt-metrics")
        self.plot = widgets.Image(format="png", layout=widgets.Layout(  # whole, never cropped: keeps the "1.0" tick
            width="100%", max_width="480px", height="auto", object_fit="contain", align_self="flex-start"))
        self.plot.add_class("mt-curve")
        self.save_button = widgets.Button(description="Save thresholds", icon="save", button_style="primary",
                                          tooltip="record these thresholds on the run (counts, exports, reports)")
        self.save_button.on_click(lambda _b: self.save())
        self.status_html = widgets.HTML()
        self.status_html.add_class("mt-status")
        self._build_plot()

        controls = widgets.VBox([*self.sliders.values(), self.save_button, self.status_html])
        counts = widgets.VBox([self.survey_counts_html, self.image_counts_html, self.metrics_html])
        self.source_html = widgets.HTML(self._source_text())
        self.source_html.add_class("mt-tuner-source")
        super().__init__([
            self.source_html,
            widgets.HBox([controls, counts]),
            widgets.HBox([widgets.VBox([self.image, self.labels_html]),
                          widgets.VBox([self.nav, self.plot], layout=widgets.Layout(flex="1 1 0", min_width="0"))]),
        ])
        self.add_class("mt-threshold-tuner")
        self._update()
        log.debug("ThresholdTuner for run %s ready in %.2f s", run.run_id, time.perf_counter() - t0)

    @staticmethod
    def _image_widgets(side: int) -> tuple[widgets.Image, widgets.HTML]:
        """The image (its CSS width the drawn one's, set per image) and the note on its labels under it."""
        image = widgets.Image(format="jpeg", layout=widgets.Layout(width=f"{side}px", max_width="100%", height="auto",
                              object_fit="contain", align_self="flex-start", flex="0 0 auto"))
        image.add_class("mt-quadrat-image")
        note = widgets.HTML()
        note.add_class("mt-label-note")
        return image, note

    # ------------------------------------------------------------------ state
    def _evaluation(self, truth: Any) -> Any:
        if truth is None:
            return None
        if hasattr(truth, "at") and hasattr(truth, "metrics"):
            return truth  # an Evaluation already
        from ..evaluation import evaluate

        return evaluate(self.run, truth)

    def _navigator(self) -> QuadratNavigator:
        """Previous/next, sort, zoom; it starts on the first image (by name) that has results."""
        table = self.table
        ok = np.flatnonzero(table["error"].isna().to_numpy()) if len(table) else np.array([], int)
        first = int(ok[0]) if len(ok) else (0 if len(table) else None)
        nav = QuadratNavigator([self._image_label(i) for i in range(len(table))], first,
                               truth=self.evaluation is not None)
        nav.set_order(nav.sort_order("name", np.zeros((len(table), 0)), table["error"].notna().to_numpy(),
                                     [Path(str(p)).name for p in table["path"]]))
        nav.view_changed(self._on_change)
        nav.sort.observe(lambda _c: self.resort(), names="value")
        return nav

    def _source_text(self) -> str:
        """Which run, store and inference settings the tuner shows."""
        run, meta = self.run, self.run.meta
        st = meta.get("settings") or {}
        shown = ", ".join(f"{k} {st[k]}" for k in ("tile", "tile_overlap", "iou", "imgsz") if k in st)
        return (f"<b>Threshold tuning</b> — run <code>{html.escape(run.run_id)}</code> in store "
                f"<code>{html.escape(str(run.store.root.resolve()))}</code>: {len(self.table)} images "
                f"({html.escape(str((meta.get('collection') or {}).get('source', {}).get('root', '')))}), "
                f"{len(self._conf)} stored detections (floor {self.conf_floor:g}); settings: {html.escape(shown)}; "
                f"model <code>{html.escape(Path(str((meta.get('model') or {}).get('path', ''))).name)}</code>")

    def _disagreement(self, counts: np.ndarray) -> np.ndarray | None:
        """Per image, the absolute difference of the counts from the truth (summed over categories)."""
        if self.evaluation is None:
            return None
        truth = self.evaluation.per_image().pivot_table(index="image_id", columns="class", values="true",
                                                        aggfunc="sum")
        true = truth.reindex(index=self.table["image_id"], columns=self.categories).to_numpy(np.float64)
        diff = np.abs(counts - np.nan_to_num(true, nan=0.0)).sum(axis=1)
        return np.where(np.isnan(true).all(axis=1), -1.0, diff)  # images without truth last

    def resort(self) -> list[int]:
        """Order previous/next by the navigator's sort (counts at the sliders' values); returns the order."""
        counts = self.counts_table()
        names = [Path(str(p)).name for p in self.table["path"]]
        key = SORTS[self.nav.sort.value]
        order = self.nav.sort_order(key, counts, self.table["error"].notna().to_numpy(), names,
                                    self._disagreement(counts) if key == "truth" else None)
        self.nav.set_order(order)
        self._update()
        return order

    def _image_label(self, i: int) -> str:
        row = self.table.iloc[i]
        name = Path(str(row["path"])).name
        return f"{name} (error)" if isinstance(row["error"], str) else name

    @property
    def thresholds(self) -> dict[str, float]:
        """The slider values: class name -> threshold (rounded to 4 decimals)."""
        return {n: round(float(s.value), 4) for n, s in self.sliders.items()}

    @property
    def rule(self) -> Thresholds:
        """The sliders' values as :class:`~musseltools.core.thresholds.Thresholds` (the one counting rule)."""
        return Thresholds.parse(self.thresholds, floor=self.conf_floor, classes=self.classes)

    def _kept(self) -> np.ndarray:
        return self.rule.keep_codes(self._conf, self._cls, self.class_names)

    def counts_table(self) -> np.ndarray:
        """Counts per image (rows, in :attr:`table` order) and category (columns) at the sliders' values."""
        kept = self._kept()
        ncat = len(self.categories)
        flat = self._img[kept] * ncat + self._class_cat[self._cls[kept]]
        return np.bincount(flat, minlength=len(self.table) * ncat).reshape(len(self.table), ncat)

    @property
    def survey_counts(self) -> dict[str, int]:
        """Survey totals per category at the sliders' values (equal to ``run.counts(tuner.thresholds)``)."""
        return dict(zip(self.categories, (int(v) for v in self.counts_table().sum(axis=0))))

    @property
    def image_counts(self) -> dict[str, int]:
        """Counts per category of the picked image at the sliders' values."""
        if self.picker.value is None:
            return dict.fromkeys(self.categories, 0)
        return dict(zip(self.categories, (int(v) for v in self.counts_table()[self.picker.value])))

    # ------------------------------------------------------------------ views
    def _build_plot(self) -> None:
        """Draw the curves once into a raster; markers are then drawn on a copy of it (fast)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        try:
            cube = self.run.cube()
        except Exception as exc:  # noqa: BLE001 - a missing curve must not break tuning
            log.warning("[run %s] no count-versus-threshold cube (%s); the curve is not shown", self.run.run_id, exc)
            self._plot_bg = None
            return
        self._curves = plots.threshold_curves(cube)
        fig = plots.count_vs_threshold(cube, figsize=(6.0, 3.6), title="Survey count versus threshold")
        fig.set_dpi(80)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        self._plot_bg = np.asarray(canvas.buffer_rgba())[..., :3].copy()
        ax = fig.axes[0]
        self._plot_transform = ax.transData.frozen()
        x0, y0, x1, y1 = ax.bbox.extents
        h = self._plot_bg.shape[0]
        self._plot_box = (int(x0), int(h - y1), int(x1), int(h - y0))  # left, top, right, bottom in pixels

    def _render_plot(self, survey: Mapping[str, int]) -> None:
        import cv2

        if self._plot_bg is None:
            return
        img = self._plot_bg.copy()
        h = img.shape[0]
        left, top, right, bottom = self._plot_box
        for n, s in self.sliders.items():
            cat = self.classes.category(n)
            colour = plots.colour_of(cat, self._colours)
            t = float(s.value)
            px, py = self._plot_transform.transform((t, survey.get(cat, 0)))
            x, y = int(round(px)), int(round(h - py))
            if not left <= x <= right:
                continue
            for y_start in range(top, bottom, 10):  # dashed vertical line
                cv2.line(img, (x, y_start), (x, min(y_start + 5, bottom)), colour, 1, cv2.LINE_AA)
            y = min(max(y, top), bottom)
            cv2.circle(img, (x, y), 6, colour, -1, cv2.LINE_AA)
            cv2.circle(img, (x, y), 6, (0, 0, 0), 1, cv2.LINE_AA)
        self.plot.value = _png(img)

    def _preview(self, i: int, zoom: int = 1) -> tuple[np.ndarray, float] | str:
        """The image shrunk for ``zoom`` (its side ``max_side * zoom`` at most); the last one is kept."""
        if (i, zoom) not in self._preview_cache:
            row = self.table.iloc[i]
            try:
                self._preview_cache = {(i, zoom): plots.read_image_rgb(row["path"], self.max_side * zoom)}
            except (OSError, ValueError) as exc:
                self._preview_cache = {(i, zoom): f"cannot read {row['path']}: {exc}"}
        return self._preview_cache[(i, zoom)]

    def _render_image(self, kept: np.ndarray) -> None:
        i = self.picker.value
        if i is None:
            return
        prev = self._preview(i)
        if isinstance(prev, str):
            self.image.value = b""
            return
        rgb, scale = prev
        sl = self._slices[i]
        rows = self._dets.iloc[sl][kept[sl]]
        if self.classes.mapping:
            rows = rows.assign(category=self.classes.categories_of(rows["class_name"]))
        zoom = int(self.nav.zoom.value)
        if zoom > 1:
            prev = self._preview(i, zoom)
            rgb, scale = prev if not isinstance(prev, str) else (rgb, scale)
        out, placed, hidden = render_quadrat_labelled(
            rgb, scale, rows, self._colours, counts=self.image_counts, zoom=zoom,
            pan=(float(self.nav.pan_x.value), float(self.nav.pan_y.value)),
            confidences=bool(self.nav.confidences.value), out_side=self.display_side, label_height=self.label_height)
        self.image.layout.width = f"{out.shape[1]}px"  # shown at the size drawn: 1 image pixel, 1 CSS pixel
        self.image.value = _jpeg(out)
        self.labels_html.value = label_note(placed, hidden, out.shape) if self.nav.confidences.value else ""

    def _on_change(self, _change: Any = None) -> None:
        self._update()

    def _update(self) -> None:
        t0 = time.perf_counter()
        kept = self._kept()
        table = self.counts_table()
        survey = dict(zip(self.categories, (int(v) for v in table.sum(axis=0))))
        self.survey_counts_html.value = f"<b>Survey</b>: {_counts_text(survey)}"
        i = self.picker.value
        if i is not None:
            row = self.table.iloc[i]
            per = dict(zip(self.categories, (int(v) for v in table[i])))
            err = f" — <i>error: {html.escape(row['error'])}</i>" if isinstance(row["error"], str) else ""
            self.image_counts_html.value = (f"<b>{html.escape(Path(str(row['path'])).name)}</b>: "
                                            f"{_counts_text(per)}{err}")
        if self.evaluation is not None:
            self._metrics_update()
        self.nav.describe(table, self.categories)
        self._render_image(kept)
        self._render_plot(survey)
        self.last_update_s = time.perf_counter() - t0

    @staticmethod
    def _metrics_text(metrics: Mapping[str, Mapping[str, float]]) -> str:
        def f(v: Any, digits: int) -> str:
            return "—" if v is None or v != v else f"{float(v):.{digits}f}"  # v != v: NaN (no boxes)

        rows = "".join(
            f"<tr><td>{html.escape(str(c))}</td><td>{f(m.get('precision'), 3)}</td><td>{f(m.get('recall'), 3)}</td>"
            f"<td>{f(m.get('f1'), 3)}</td><td>{f(m.get('count_mae'), 2)}</td></tr>"
            for c, m in metrics.items()
        )
        return ("<b>Against the labels</b><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
                f"<th>count error (MAE per image)</th></tr>{rows}</table>")

    def _metrics_update(self) -> None:
        try:
            self.metrics = self.evaluation.at(self.thresholds)
        except MusselToolsError as exc:  # e.g. two classes of one category at different thresholds
            self.metrics = None
            self.metrics_html.value = f"<i>no metrics: {html.escape(str(exc))}</i>"
            return
        self.metrics_html.value = self._metrics_text(self.metrics)

    # ------------------------------------------------------------------ actions
    def save(self) -> dict[str, float]:
        """Record the sliders' thresholds on the run; returns them."""
        t = self.thresholds
        try:
            self.run.save_thresholds(t)
        except MusselToolsError as exc:
            self.status_html.value = f"<span style='color:#b00'>not saved: {html.escape(str(exc))}</span>"
            raise
        when = time.strftime("%H:%M:%S")
        self.status_html.value = f"saved {html.escape(self.rule.label(self.class_names))} at {when}"
        return t
