"""Size-frequency figures from ``run.sizes()`` (:class:`musseltools.survey.sizes.SizeFrequency`): a histogram,
a ridgeline by group, and live against dead; colours from the one palette (:func:`~musseltools.plots.survey.
class_colours`: live blue, dead orange), the unit of the lengths on every axis.

>>> sf = run.sizes(by="site", bins=range(0, 80, 5))                     # doctest: +SKIP
>>> size_histogram(sf); size_ridgeline(sf, "live"); live_dead_sizes(sf)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .survey import REPORT_WIDTH, class_colours

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from ..survey.sizes import SizeFrequency

__all__ = ["size_histogram", "size_ridgeline", "live_dead_sizes"]

#: Font size of tick labels and legends: readable when a report figure is shown 1000 px wide.
FONT = 11


def _figure(height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(REPORT_WIDTH, height), layout="constrained")


def _axis(sf: SizeFrequency) -> str:
    return f"shell length ({sf.unit})" + ("" if sf.unit == "mm" else " — no scale on some images")


def _select(table: pd.DataFrame, by: Sequence[str], group: Mapping[str, Any] | None) -> pd.DataFrame:
    if not group:
        return table
    unknown = [k for k in group if k not in by]
    if unknown:
        raise ValueError(f"group {dict(group)!r} names {unknown}, not columns the sizes were grouped by ({by}) — "
                         "use run.sizes(by=...) with them")
    keep = np.ones(len(table), bool)
    for k, v in group.items():
        keep &= (table[k] == v).to_numpy()
    return table[keep]


def _counts(sf: SizeFrequency, category: str, group: Mapping[str, Any] | None = None) -> np.ndarray:
    """Counts per bin of one category, summed over the groups (or of one ``group``)."""
    rows = _select(sf.histogram, sf.by, group)
    rows = rows[rows["category"] == category]
    return rows.groupby("bin_low", sort=True)["count"].sum().reindex(sf.edges[:-1], fill_value=0).to_numpy(float)


def size_histogram(sf: SizeFrequency, categories: Sequence[str] | None = None, *,
                   group: Mapping[str, Any] | None = None, title: str | None = None) -> Figure:
    """Bars of the number of shells per length bin, one colour per category, side by side within each bin;
    all groups together, or one ``group`` (``{"site": "N"}``)."""
    cats = list(categories or dict.fromkeys(sf.histogram["category"]))
    colours = class_colours(cats)
    fig = _figure(4.2)
    ax = fig.add_subplot()
    lows, widths = sf.edges[:-1], np.diff(sf.edges)
    share = widths / max(len(cats), 1)
    for k, c in enumerate(cats):
        n = _counts(sf, c, group)
        ax.bar(lows + k * share, n, width=share, align="edge", color=colours[c], label=f"{c} ({int(n.sum())})")
    where = "" if not group else " — " + ", ".join(f"{k} {v}" for k, v in group.items())
    ax.set_title(title or f"Shell length{where}", fontsize=FONT + 2)
    return _labelled(fig, ax, sf, "shells (count)")


def _labelled(fig: Figure, ax: Any, sf: SizeFrequency, ylabel: str) -> Figure:
    """Axis labels, legend and grid of a figure with length on x."""
    ax.set_xlabel(_axis(sf), fontsize=FONT + 1)
    ax.set_ylabel(ylabel, fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.legend(frameon=False, fontsize=FONT)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _group_label(row: pd.Series, by: Sequence[str]) -> str:
    return ", ".join(str(row[c]) for c in by)


def size_ridgeline(sf: SizeFrequency, category: str = "live", *, title: str | None = None) -> Figure:
    """One filled curve per group (its share of the category's shells per bin), stacked top to bottom in the
    groups' order, labelled by group; the median marked on each. Needs ``run.sizes(by=...)``."""
    if not sf.by:
        raise ValueError("a ridgeline needs groups — use run.sizes(by=['site', ...])")
    colour = class_colours([category])[category]
    groups = sf.quantiles[sf.quantiles["category"] == category].reset_index(drop=True)
    fig = _figure(1.0 + 0.6 * max(len(groups), 1))
    ax = fig.add_subplot()
    mids = (sf.edges[:-1] + sf.edges[1:]) / 2
    labels = []
    for i, row in groups.iterrows():
        base = len(groups) - 1 - i
        n = _counts(sf, category, {c: row[c] for c in sf.by})
        share = n / n.sum() if n.sum() else n
        height = 0.9 * share / share.max() if share.max() > 0 else share
        ax.fill_between(mids, base, base + height, color=colour, alpha=0.55, linewidth=0)
        ax.plot(mids, base + height, color=colour, linewidth=1.5)
        if np.isfinite(row["median"]):
            ax.plot([row["median"]] * 2, [base, base + 0.9], color="black", linewidth=1.2)
        labels.append((base, f"{_group_label(row, sf.by)} (n={int(row['n'])})"))
    ax.set_yticks([b + 0.3 for b, _ in labels], [t for _, t in labels], fontsize=FONT)
    ax.set_title(title or f"Shell length of {category} by {', '.join(sf.by)} (black: median)", fontsize=FONT + 2)
    ax.set_xlabel(_axis(sf), fontsize=FONT + 1)
    ax.set_ylabel(", ".join(sf.by), fontsize=FONT + 1)
    ax.tick_params(axis="x", labelsize=FONT)
    return fig


def live_dead_sizes(sf: SizeFrequency, categories: Sequence[str] = ("live", "dead"), *,
                    group: Mapping[str, Any] | None = None, title: str | None = None) -> Figure:
    """Live against dead: each category's share of its shells per length bin as a line, and its median with
    its interval (the bootstrap over images) as a bar below — where size-selective die-off shows."""
    colours = class_colours(list(categories))
    fig = _figure(4.2)
    ax = fig.add_subplot()
    mids = (sf.edges[:-1] + sf.edges[1:]) / 2
    q = _select(sf.quantiles, sf.by, group)
    for k, c in enumerate(categories):
        n = _counts(sf, c, group)
        share = n / n.sum() if n.sum() else n
        ax.plot(mids, share, color=colours[c], linewidth=2, marker="o", markersize=4,
                label=f"{c} (n={int(n.sum())})")
        rows = q[q["category"] == c]
        if len(rows) == 1 and np.isfinite(rows["median"].iloc[0]):
            r = rows.iloc[0]
            y = -0.04 * (k + 1)
            ax.errorbar([r["median"]], [y], xerr=[[r["median"] - r["median_low"]], [r["median_high"] - r["median"]]],
                        color=colours[c], marker="D", capsize=4)
    ax.set_title(title or f"Live against dead: shell length (diamonds: median, {sf.level:.0%} interval)",
                 fontsize=FONT + 2)
    return _labelled(fig, ax, sf, "share of the category's shells")
