"""Matplotlib figures of a survey run: counts per image, confidences, count versus threshold, samples.

Every function returns a :class:`matplotlib.figure.Figure` (built without pyplot's global state, so
figures can be made in threads and in tests) sized to be legible at report width (about 10 inches).
Colours are fixed per class name (``live`` blue, ``dead`` orange, others from the same colour-blind-safe
Okabe-Ito palette, :data:`OKABE_ITO`), so one class has one colour in every figure and widget.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..core.thresholds import TOLERANCE, ClassMap, Thresholds

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr
    from matplotlib.figure import Figure

    from ..core.thresholds import ThresholdLike
    from ..evaluation import Evaluation

__all__ = [
    "OKABE_ITO",
    "SERIES",
    "LIVE_COLOUR",
    "DEAD_COLOUR",
    "class_colours",
    "colour_of",
    "read_image_rgb",
    "draw_detections",
    "counts_per_image",
    "confidence_histograms",
    "count_vs_threshold",
    "threshold_curves",
    "sample_grid",
    "pick_samples",
    "threshold_label",
    "plot_pr",
    "plot_count_error",
    "plot_pred_vs_true",
]

log = logging.getLogger(__name__)

#: Width of a report figure in inches: legible when the HTML page is ~1000 px wide.
REPORT_WIDTH = 10.0

#: The one palette of musseltools (Okabe-Ito, safe for the common colour-blindnesses): live blue,
#: dead orange, other classes in the palette's remaining colours. Widgets, figures, reports, the
#: correction editor and the README figure (``scripts/annotate_demo.py``) all take colours from here.
OKABE_ITO = {"blue": "#0072B2", "orange": "#E69F00", "bluish_green": "#009E73", "vermillion": "#D55E00",
             "reddish_purple": "#CC79A7", "sky_blue": "#56B4E9", "yellow": "#F0E442", "black": "#000000"}
LIVE_COLOUR, DEAD_COLOUR = OKABE_ITO["blue"], OKABE_ITO["orange"]
_FIXED = {"live": LIVE_COLOUR, "dead": DEAD_COLOUR}
_PALETTE = [OKABE_ITO[k] for k in ("bluish_green", "vermillion", "reddish_purple", "sky_blue", "yellow", "black")]
#: Other series (evaluation figures): Okabe-Ito but for live's and dead's colours, each its marker and style.
SERIES = {k: dict(color=OKABE_ITO[c], marker=m, ls=ls) for k, c, m, ls in (
    ("MAE", "reddish_purple", "o", "-"), ("bias", "sky_blue", "s", "-"), ("chosen", "black", "D", "-"),
    ("calibrated", "vermillion", "v", "--"), ("best F1", "bluish_green", "^", ":"), ("1:1", "black", None, "--"))}
#: The dark outline around drawn boxes (keeps thin coloured lines visible on sand and in colour-blind sight).
OUTLINE = (20, 20, 20)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def alt_text(fig: Figure) -> str:
    """A text alternative of a figure for readers who cannot see it: its title, and per panel the panel's
    title and what its axes show.

    Examples
    --------
    >>> fig = _figure(4, 3); ax = fig.add_subplot(); _ = ax.set(title="Counts", xlabel="image", ylabel="count")
    >>> alt_text(fig)
    'Figure: Counts (x: image; y: count)'
    """
    parts = []
    sup = fig.get_suptitle() if hasattr(fig, "get_suptitle") else ""
    panels = []
    for ax in fig.axes:
        axis = "; ".join(f"{k}: {v}" for k, v in (("x", ax.get_xlabel()), ("y", ax.get_ylabel())) if v)
        title = ax.get_title()
        text = " ".join(filter(None, [title, f"({axis})" if axis else ""]))
        if text:
            panels.append(text)
    if sup:
        parts.append(sup)
    parts.extend(panels)
    return "Figure: " + " — ".join(p.replace("\n", " ") for p in parts) if parts else "Figure"


def png_with_alt(fig: Figure) -> tuple[bytes, dict[str, str]]:
    """The figure as PNG bytes and ``{"alt": alt_text(fig)}``: an IPython ``image/png`` formatter, so a
    notebook's figures carry their text alternative into the HTML report (see :func:`show_alt_text`)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue(), {"alt": alt_text(fig)}


def show_alt_text() -> None:
    """In a notebook: show matplotlib figures as PNG images that carry :func:`alt_text` (the HTML report
    writes it as the image's ``alt``)."""
    from IPython import get_ipython
    from matplotlib.figure import Figure as _Fig

    ip = get_ipython()
    if ip is not None:
        ip.display_formatter.formatters["image/png"].for_type(_Fig, png_with_alt)


def class_colours(names: Sequence[str]) -> dict[str, str]:
    """A fixed hex colour per class or category name (``live`` blue, ``dead`` orange: :data:`OKABE_ITO`).

    Examples
    --------
    >>> class_colours(["live", "dead", "byssus"])
    {'live': '#0072B2', 'dead': '#E69F00', 'byssus': '#009E73'}
    """
    out: dict[str, str] = {}
    free = iter(_PALETTE * (1 + len(names) // len(_PALETTE)))
    for n in names:
        out[n] = _FIXED[n] if n in _FIXED else next(free)
    return out


def colour_of(name: str, colours: Mapping[str, str]) -> tuple[int, int, int]:
    """The colour of a class as an ``(r, g, b)`` tuple of 0-255 ints."""
    h = colours.get(name, "#7f7f7f").lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def read_image_rgb(path: str | os.PathLike, max_side: int | None = 1024) -> tuple[np.ndarray, float]:
    """Read an image as RGB uint8, shrunk so its longer side is at most ``max_side``.

    Returns the array and the scale applied (1.0 when not shrunk), so that detection coordinates can
    be scaled to it. EXIF orientation is applied as in :func:`musseltools.images.decode.decode_image`.
    """
    import cv2

    from ..images.decode import decode_image

    bgr = decode_image(Path(path).read_bytes())
    scale = 1.0
    if max_side and max(bgr.shape[:2]) > max_side:
        scale = max_side / max(bgr.shape[:2])
        bgr = cv2.resize(bgr, (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), scale


def _label_column(detections: pd.DataFrame) -> pd.Series:
    """The name a detection is coloured and counted by: its category when mapped, else its class."""
    if "category" in detections:
        return detections["category"].fillna(detections["class_name"])
    return detections["class_name"]


def draw_detections(
    image_rgb: np.ndarray,
    detections: pd.DataFrame,
    colours: Mapping[str, str],
    *,
    scale: float = 1.0,
    thickness: int | None = None,
    outline: bool = False,
) -> np.ndarray:
    """Draw detection outlines (polygons, else boxes) on a copy of an RGB image.

    Parameters
    ----------
    image_rgb : array (H, W, 3)
        The image, possibly shrunk by ``scale`` from the size the detections refer to.
    detections : DataFrame
        Rows of :meth:`musseltools.Run.detections` for this image.
    colours : mapping
        Colour per class (or category) name, e.g. from :func:`class_colours`.
    scale : float
        Factor from detection coordinates to ``image_rgb`` pixels.
    outline : bool
        Draw a dark line (:data:`OUTLINE`) one pixel wide on either side of each coloured one.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> img = np.zeros((50, 50, 3), np.uint8)
    >>> d = pd.DataFrame({"class_name": ["live"], "x1": [5.0], "y1": [5.0], "x2": [20.0], "y2": [20.0],
    ...                   "polygon": [None]})
    >>> draw_detections(img, d, {"live": "#2ca02c"})[5, 10].tolist()
    [44, 160, 44]
    """
    import cv2

    out = np.ascontiguousarray(image_rgb.copy())
    if not len(detections):
        return out
    t = thickness or max(1, round(max(out.shape[:2]) / 400))
    labels = _label_column(detections).to_numpy()
    polys = detections["polygon"].to_numpy() if "polygon" in detections else [None] * len(detections)
    boxes = detections[["x1", "y1", "x2", "y2"]].to_numpy(np.float64) * scale
    for label, poly, box in zip(labels, polys, boxes):
        colour = colour_of(str(label), colours)
        pts = None
        if poly is not None and len(poly) >= 3:
            pts = np.round(np.asarray([list(p) for p in poly], np.float64) * scale).astype(np.int32)
        if pts is None:
            x1, y1, x2, y2 = np.round(box).astype(int)
            pts = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.int32)
        if outline:
            cv2.polylines(out, [pts.reshape(-1, 1, 2)], True, OUTLINE, t + 2, lineType=cv2.LINE_8)
        cv2.polylines(out, [pts.reshape(-1, 1, 2)], True, colour, t, lineType=cv2.LINE_8)
    return out


def _short_names(paths: Sequence[str]) -> list[str]:
    return [Path(p).name for p in paths]


def counts_per_image(
    per_image: pd.DataFrame,
    categories: Sequence[str],
    *,
    title: str | None = None,
    threshold: Any = None,
    max_labels: int = 60,
) -> Figure:
    """Stacked bars: detections of each category in each image (errored images marked).

    Parameters
    ----------
    per_image : DataFrame
        :meth:`musseltools.Run.per_image` (``path``, ``error`` and one column per category).
    categories : sequence of str
        The count columns to stack, e.g. ``run.categories``.
    threshold : float or mapping, optional
        Shown in the title.

    Examples
    --------
    >>> fig = counts_per_image(run.per_image(), run.categories)  # doctest: +SKIP
    """
    colours = class_colours(categories)
    n = len(per_image)
    fig = _figure(REPORT_WIDTH, 4.2)
    ax = fig.add_subplot()
    x = np.arange(n)
    bottom = np.zeros(n)
    for c in categories:
        vals = per_image[c].to_numpy(np.float64) if c in per_image else np.zeros(n)
        ax.bar(x, vals, bottom=bottom, color=colours[c], label=c, width=0.8)
        bottom += vals
    errored = per_image["error"].notna().to_numpy() if "error" in per_image else np.zeros(n, bool)
    if errored.any():
        ax.scatter(x[errored], np.zeros(errored.sum()), marker="x", color="black", zorder=3, label="error (no result)")
    ax.set_xlabel("image")
    ax.set_ylabel("detections per image (count)")
    t = "" if threshold is None else f" at threshold {threshold_label(threshold)}"
    ax.set_title(title or f"Detections per image{t}")
    if n <= max_labels:
        ax.set_xticks(x, _short_names(per_image["path"].astype(str).tolist()), rotation=90,
                      fontsize=8 if n > 20 else 9)
    else:
        ax.set_xlabel(f"image (index, {n} images)")
    ax.set_xlim(-0.6, n - 0.4 if n else 0.6)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def threshold_label(threshold: Any) -> str:
    """A threshold as shown in titles: ``0.50``, or ``live 0.45, dead 0.60``."""
    return Thresholds.parse(threshold).label()


def _threshold_line(rule: Thresholds | None, name: str) -> float | None:
    """The threshold to draw for a class (none when the thresholds do not name it and have no default)."""
    if rule is None or (name not in rule.per_class and rule.default is None):
        return None
    return rule.of(name)


def confidence_histograms(
    detections: pd.DataFrame,
    classes: Sequence[str],
    *,
    threshold: Any = None,
    conf_floor: float = 0.0,
    bins: int = 50,
    title: str | None = None,
) -> Figure:
    """One histogram of detection confidence per class, with the threshold marked.

    Parameters
    ----------
    detections : DataFrame
        All stored detections, e.g. ``run.detections(run.conf_floor)``.
    classes : sequence of str
        Class names (one panel each), e.g. ``run.class_names``.
    threshold : float or mapping of class name to float, optional
        Drawn as a dashed vertical line.

    Examples
    --------
    >>> fig = confidence_histograms(run.detections(run.conf_floor), run.class_names, threshold=0.5)  # doctest: +SKIP
    """
    colours = class_colours(classes)
    k = max(1, len(classes))
    fig = _figure(REPORT_WIDTH, 3.4)
    axes = fig.subplots(1, k, squeeze=False)[0]
    edges = np.linspace(max(0.0, conf_floor), 1.0, bins + 1)
    rule = None if threshold is None else Thresholds.parse(threshold)
    for ax, c in zip(axes, classes):
        conf = detections.loc[detections["class_name"] == c, "confidence"].to_numpy(np.float64)
        ax.hist(conf, bins=edges, color=colours[c], alpha=0.85)
        t = _threshold_line(rule, c)
        if t is not None:
            ax.axvline(t, color="black", linestyle="--", linewidth=1.2, label=f"threshold {t:.2f}")
            kept = int(Thresholds.parse(t).keep(conf, [c] * len(conf)).sum())
            ax.legend(loc="upper right", frameon=False, title=f"{kept} of {len(conf)} kept")
        ax.set_title(f"{c} ({len(conf)} detections)")
        ax.set_xlabel("confidence (0-1)")
        ax.set_ylabel("detections (count)")
        ax.set_yscale("log" if len(conf) and np.bincount(np.digitize(conf, edges)).max() > 200 else "linear")
        ax.set_xlim(edges[0], 1.0)
    fig.suptitle(title or "Confidence of stored detections per class")
    return fig


def threshold_curves(cube: xr.Dataset) -> pd.DataFrame:
    """Survey totals against threshold from a cube: one column per category, index ``threshold``.

    Images that errored have no detections and add nothing.
    """
    total = cube["count"].sum("image")
    return pd.DataFrame(
        total.transpose("threshold", "class").to_numpy(),
        index=pd.Index(cube["threshold"].to_numpy(), name="threshold"),
        columns=[str(c) for c in cube["class"].to_numpy()],
    )


def count_vs_threshold(
    cube: xr.Dataset,
    *,
    threshold: Any = None,
    class_map: Mapping[str, str] | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (REPORT_WIDTH, 4.2),
) -> Figure:
    """Survey total per category against confidence threshold, from the count cube, threshold marked.

    Parameters
    ----------
    cube : xarray.Dataset
        :meth:`musseltools.Run.cube` (variable ``count[image, class, threshold]``).
    threshold : float or mapping of class name to float, optional
        The chosen threshold(s): a dashed line and a dot on each curve at its value.
    class_map : mapping, optional
        Class name -> category, to place per-class thresholds on category curves.

    Examples
    --------
    >>> fig = count_vs_threshold(run.cube(), threshold=run.thresholds)  # doctest: +SKIP
    """
    curves = threshold_curves(cube)
    colours = class_colours(list(curves.columns))
    fig = _figure(*figsize)
    ax = fig.add_subplot()
    grid = curves.index.to_numpy()
    for c in curves.columns:
        ax.plot(grid, curves[c].to_numpy(), color=colours[c], label=c, linewidth=2)
    marks = _marks(threshold, list(curves.columns), class_map)
    for cat, t in marks:
        y = float(np.interp(t, grid, curves[cat].to_numpy())) if len(grid) else 0.0
        # exact value: counts are a step function, take the grid point at or below t
        i = int(np.searchsorted(grid, t + TOLERANCE, side="right") - 1)
        if 0 <= i < len(grid):
            y = float(curves[cat].to_numpy()[i])
        ax.axvline(t, color=colours[cat], linestyle="--", linewidth=1)
        ax.plot([t], [y], "o", color=colours[cat], markersize=7, markeredgecolor="black")
        ax.annotate(f"{cat}: {int(y)} at {t:.2f}", (t, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xlabel("confidence threshold (0-1)")
    ax.set_ylabel("survey total (count of detections)")
    ax.set_title(title or "Survey count versus confidence threshold")
    ax.set_xlim(float(grid[0]) if len(grid) else 0.0, 1.0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", frameon=False)
    return fig


def _marks(threshold: Any, categories: Sequence[str], class_map: Mapping[str, str] | None) -> list[tuple[str, float]]:
    """(category, threshold) pairs to mark on count-versus-threshold curves (a category whose classes
    have different thresholds is marked at its first class's)."""
    if threshold is None:
        return []
    rule = Thresholds.parse(threshold)
    names = list(dict.fromkeys([*(class_map or {}), *rule.per_class]))
    cmap = ClassMap(names, {k: v for k, v in (class_map or {}).items()})
    out: dict[str, float] = {}
    for name in rule.per_class:
        out.setdefault(cmap.category(name), rule.of(name))
    if rule.default is not None:
        for c in categories:
            out.setdefault(c, rule.default)
    return [(c, t) for c, t in out.items() if c in categories]


def pick_samples(per_image: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` processed images spread evenly over the collection, in path order (deterministic)."""
    ok = per_image[per_image["error"].isna()] if "error" in per_image else per_image
    ok = ok.sort_values("path", kind="stable")
    if n <= 0 or ok.empty:
        return ok.iloc[:0]
    idx = np.unique(np.linspace(0, len(ok) - 1, min(n, len(ok))).round().astype(int))
    return ok.iloc[idx]


def sample_grid(
    per_image: pd.DataFrame,
    detections: pd.DataFrame,
    *,
    n: int = 6,
    categories: Sequence[str] | None = None,
    threshold: Any = None,
    ncols: int = 3,
    max_side: int = 900,
    title: str | None = None,
) -> Figure:
    """A grid of sample images with their detections drawn, coloured by class, with a legend. Images are
    drawn at the size shown, so a box keeps its 2-pixel line and dark outline in the saved figure.

    Parameters
    ----------
    per_image : DataFrame
        :meth:`musseltools.Run.per_image` at the threshold (gives the paths and the counts shown).
    detections : DataFrame
        :meth:`musseltools.Run.detections` at the same threshold.
    n : int
        Number of images, picked by :func:`pick_samples`.
    categories : sequence of str, optional
        Names in the legend (default: those found in ``detections``).

    Examples
    --------
    >>> t = run.thresholds                                                              # doctest: +SKIP
    >>> fig = sample_grid(run.per_image(t), run.detections(t), n=6, categories=run.categories)  # doctest: +SKIP
    """
    import cv2
    from matplotlib.patches import Patch

    samples = pick_samples(per_image, n)
    cats = list(categories) if categories is not None else sorted(_label_column(detections).unique())
    colours = class_colours(cats)
    k = max(1, len(samples))
    ncols = max(1, min(ncols, k))
    nrows = math.ceil(k / ncols)
    fig = _figure(REPORT_WIDTH, 0.5 + nrows * REPORT_WIDTH / ncols * 0.78)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    by_image = dict(tuple(detections.groupby("image_id"))) if len(detections) else {}
    for ax, row in zip(axes, samples.itertuples(index=False)):
        counts = ", ".join(f"{c} {int(getattr(row, c, 0))}" for c in cats if c in samples.columns)
        ax.set_title(f"{Path(row.path).name}\n{counts}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    if samples.empty:
        axes[0].text(0.5, 0.5, "no processed image to show", ha="center", va="center", transform=axes[0].transAxes)
    handles = [Patch(facecolor="none", edgecolor=colours[c], linewidth=2, label=c) for c in cats]
    t = "" if threshold is None else f" (threshold {threshold_label(threshold)})"
    fig.suptitle(title or f"Sample images with detections{t}")
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.draw_without_rendering()  # the layout: each panel's size in pixels
    for ax, row in zip(axes, samples.itertuples(index=False)):
        try:
            img, scale = read_image_rgb(row.path, max_side)
        except (OSError, ValueError) as exc:
            ax.text(0.5, 0.5, f"cannot read image:\n{exc}", ha="center", va="center", transform=ax.transAxes)
            continue
        (h, w), panel = img.shape[:2], ax.get_window_extent()
        fit = min(1.0, panel.width / w, panel.height / h)  # drawn at the size shown: 2 px stay 2 px
        img = cv2.resize(img, (max(1, int(w * fit)), max(1, int(h * fit))), interpolation=cv2.INTER_AREA)
        dets = by_image.get(row.image_id, detections.iloc[:0])
        ax.imshow(draw_detections(img, dets, colours, scale=scale * img.shape[1] / w, thickness=2, outline=True))
    return fig


# ========================================================================================= evaluation
def plot_pr(ev: Evaluation, *, ax: Any = None) -> Figure:
    """Precision-recall curves per class of an evaluation (AP50 in the legend), the threshold's point marked.

    Examples
    --------
    >>> fig = plot_pr(ev); fig.savefig("pr.png")                                # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=(5, 4.5))
        ax = fig.subplots()
    else:
        fig = ax.figure
    at = ev.at()
    ap50 = ev.metrics.set_index("class")["ap50"]
    colours = class_colours(list(ev.classes))
    for c in ev.classes:
        pr = ev.precision_recall(c)
        if pr is None:
            continue
        ax.plot(pr["recall"].to_numpy(), pr["precision"].to_numpy(), color=colours[c], label=f"{c} (AP50 {ap50[c]:.3f})")
        ax.plot(at[c]["recall"], at[c]["precision"], "o", color=colours[c], markersize=6, markeredgecolor="black")
    if not ev.has_boxes:
        ax.text(0.5, 0.5, "no boxes in the truth:\nprecision and recall need boxes", ha="center", va="center",
                transform=ax.transAxes)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
           title=f"Precision-recall at IoU {ev.iou:g} (dots: threshold)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_count_error(ev: Evaluation, chosen: ThresholdLike | None = None) -> Figure:
    """Per-image count MAE and bias versus threshold, per class of an evaluation, with the chosen threshold
    (solid), the count-calibrated one (dashed) and the F1-optimal one (dotted) marked.

    Examples
    --------
    >>> fig = plot_count_error(ev, chosen=0.5)                                    # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    th = ev.class_thresholds(chosen)
    cal = ev.calibration.set_index("class")
    n = len(ev.classes)
    fig = Figure(figsize=(4.5 * n, 3.8))
    axes = fig.subplots(1, n, squeeze=False)
    curves = ev.curves
    for ax, c in zip(axes[0], ev.classes):
        cv = curves[curves["class"] == c]
        every = max(1, len(cv) // 12)
        ax.plot(cv["threshold"], cv["count_mae"], label="MAE per image", markevery=every, **SERIES["MAE"])
        ax.plot(cv["threshold"], cv["count_bias"], label="bias per image", markevery=every, **SERIES["bias"])
        ax.axhline(0, color="0.6", lw=0.8)
        ax.axvline(th[c], lw=1.2, label=f"chosen {th[c]:.3f}", **SERIES["chosen"])
        bc = cal.at[c, "best_threshold_count"]
        if pd.notna(bc):
            ax.axvline(bc, lw=1.5, label=f"calibrated ({ev.objective}) {bc:.3f}", **SERIES["calibrated"])
        bf = cal.at[c, "best_threshold_f1"]
        if pd.notna(bf):
            ax.axvline(bf, lw=1.5, label=f"best F1 {bf:.3f}", **SERIES["best F1"])
        ax.set(title=c, xlabel="confidence threshold", ylabel="count error (detections per image)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_pred_vs_true(ev: Evaluation, threshold: ThresholdLike | None = None) -> Figure:
    """Predicted versus true counts per image of an evaluation, one panel per class, with the 1:1 line.

    Examples
    --------
    >>> fig = plot_pred_vs_true(ev)                                               # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    th = ev.class_thresholds(threshold)
    pred = ev.predicted_counts(th)
    true = ev.true_counts.loc[pred.index]
    n = len(ev.classes)
    fig = Figure(figsize=(4.2 * n, 4))
    axes = fig.subplots(1, n, squeeze=False)
    for ax, c in zip(axes[0], ev.classes):
        t = true[c].to_numpy()
        p = pred[c].to_numpy()
        hi = max(1, int(max(t.max(initial=0), p.max(initial=0)) * 1.05) + 1)
        ax.plot([0, hi], [0, hi], lw=1, label="1:1", **SERIES["1:1"])
        ax.scatter(t, p, s=18, alpha=0.75, color=class_colours(list(ev.classes))[c], edgecolors="black",
                   linewidths=0.4)
        mae = float(np.mean(np.abs(p - t))) if len(t) else float("nan")
        ax.set(title=f"{c} at {th[c]:.3f} (MAE {mae:.2f})", xlabel="true count", ylabel="predicted count",
               xlim=(0, hi), ylim=(0, hi), aspect="equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
