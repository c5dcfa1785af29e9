"""Figures of a comparison of two runs (:mod:`musseltools.evaluation.compare`): Bland-Altman plots and count scatters.

Kept beside :mod:`musseltools.plots.survey` (same rules: a :class:`matplotlib.figure.Figure` built without
pyplot's global state, report width, one colour per category from :func:`musseltools.plots.survey.class_colours`,
titles and axis labels that :func:`musseltools.plots.survey.alt_text` turns into a text alternative), in a
module of its own so that ``plots`` stays within the 600-line rule.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .survey import REPORT_WIDTH, class_colours

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from ..evaluation.compare import Comparison

__all__ = ["bland_altman", "count_scatter"]


def _panels(cmp: Comparison, height: float) -> tuple[Figure, list]:
    from matplotlib.figure import Figure

    k = len(cmp.categories)
    fig = Figure(figsize=(REPORT_WIDTH, height), layout="constrained")
    return fig, list(np.atleast_1d(fig.subplots(1, k, squeeze=False)[0]))


def _heading(cmp: Comparison, what: str) -> str:
    """A figure's title: what it shows, then both runs with their thresholds, then what else differs."""
    return f"{what}\n" + "\n".join(cmp.describe().splitlines())


def bland_altman(cmp: Comparison) -> Figure:
    """A Bland-Altman plot per category: each image's difference of counts (B − A) against their mean, with
    the mean difference (solid) and the limits of agreement (dashed).

    Examples
    --------
    >>> fig = bland_altman(mt.compare(run_a, run_b))                                 # doctest: +SKIP
    """
    fig, axes = _panels(cmp, 4.6)
    colours = class_colours(cmp.categories)
    rng = np.random.default_rng(0)
    for ax, c in zip(axes, cmp.categories):
        a, b = cmp.images[f"{c}_a"].to_numpy(float), cmp.images[f"{c}_b"].to_numpy(float)
        jitter = rng.uniform(-0.15, 0.15, len(a))  # counts are integers: spread coinciding points a little
        ax.scatter((a + b) / 2 + jitter, b - a, s=14, alpha=0.6, color=colours[c], edgecolor="none")
        row = cmp.agreement.loc[c]
        ax.axhline(row["mean_difference"], color="black", lw=1.2,
                   label=f"mean difference {row['mean_difference']:+.2f}")
        for key in ("loa_low", "loa_high"):
            if math.isfinite(row[key]):
                ax.axhline(row[key], color="black", lw=1, ls="--",
                           label=f"{cmp.level:.0%} limits of agreement" if key == "loa_low" else None)
        ax.axhline(0, color="grey", lw=0.6, ls=":")
        ax.set(title=f"{c}: B minus A", xlabel="mean of the two counts per image",
               ylabel="difference of counts (B − A)")
        ax.legend(fontsize="small", loc="best")
    n = len(cmp.images)
    fig.suptitle(_heading(cmp, f"Agreement per image, {n} image{'' if n == 1 else 's'}"), fontsize="medium")
    return fig


def count_scatter(cmp: Comparison) -> Figure:
    """Per category, each image's count by B against its count by A, with the line of equal counts.

    Examples
    --------
    >>> fig = count_scatter(mt.compare(run_a, run_b))                                # doctest: +SKIP
    """
    fig, axes = _panels(cmp, 4.6)
    colours = class_colours(cmp.categories)
    label_a, label_b = cmp.labels
    for ax, c in zip(axes, cmp.categories):
        a, b = cmp.images[f"{c}_a"].to_numpy(float), cmp.images[f"{c}_b"].to_numpy(float)
        ax.scatter(a, b, s=14, alpha=0.6, color=colours[c], edgecolor="none")
        top = max(1.0, float(np.max(a, initial=0)), float(np.max(b, initial=0)))
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls=":")
        ax.set(title=f"{c} per image", xlabel=f"count by {label_a}", ylabel=f"count by {label_b}")
    fig.suptitle(_heading(cmp, "Counts per image by the two runs"), fontsize="medium")
    return fig
