"""Figures for notebooks and reports: survey figures (:mod:`~musseltools.plots.survey`) and model comparisons
(:mod:`~musseltools.plots.compare`), all in one colour-blind-safe palette (live and dead keep their colours).

>>> from musseltools import plots                                                # doctest: +SKIP
>>> fig = plots.counts_per_image(run.per_image())                                # doctest: +SKIP
"""

from __future__ import annotations

from .sizes import live_dead_sizes, size_histogram, size_ridgeline
from .survey import (
    DEAD_COLOUR,
    LIVE_COLOUR,
    OKABE_ITO,
    REPORT_WIDTH,
    alt_text,
    class_colours,
    colour_of,
    confidence_histograms,
    count_vs_threshold,
    counts_per_image,
    draw_detections,
    pick_samples,
    plot_count_error,
    plot_pr,
    plot_pred_vs_true,
    png_with_alt,
    read_image_rgb,
    sample_grid,
    show_alt_text,
    threshold_curves,
    threshold_label,
)

__all__ = [
    "REPORT_WIDTH",
    "alt_text",
    "png_with_alt",
    "show_alt_text",
    "OKABE_ITO",
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
    "size_histogram",
    "size_ridgeline",
    "live_dead_sizes",
]
