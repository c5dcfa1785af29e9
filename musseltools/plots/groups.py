"""Figures of grouped survey answers (:meth:`musseltools.Run.by_group`): densities and dead fractions with their
intervals per group, over time, and a map of the sites.

Every function takes the tidy table of :meth:`~musseltools.Run.by_group` (one row per group and category:
``density``, ``density_low``, ``density_high``, ``fraction``...), returns a :class:`matplotlib.figure.Figure`
at report width, and keeps live blue and dead orange (:data:`~musseltools.plots.survey.LIVE_COLOUR`,
:data:`~musseltools.plots.survey.DEAD_COLOUR`). An interval that is not estimable (NaN bounds) is drawn as a
hollow dot without whiskers, never as a zero-width interval. The map draws positions only (degrees, no tiles:
nothing is fetched from the network).

>>> est = run.by_group(["site", "date"])          # doctest: +SKIP
>>> fig = group_intervals(est, ["site", "date"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .survey import DEAD_COLOUR, OKABE_ITO, REPORT_WIDTH, class_colours

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["group_labels", "interval_table", "group_intervals", "density_over_time", "site_map"]

#: Smallest font of a label in these figures (points): legible at report width.
LABEL_POINTS = 9
#: Markers telling sites apart in the time series (their names are also written at the line ends).
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _text(value) -> str:
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d") if value == value.normalize() else value.strftime("%Y-%m-%d %H:%M")
    return "(none)" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def group_labels(estimates: pd.DataFrame, by: Sequence[str]) -> pd.Series:
    """One label per row of ``estimates``: its values of ``by``, joined (``North, 2025-05-12``)."""
    return estimates[list(by)].apply(lambda row: ", ".join(_text(v) for v in row), axis=1)


def _with_interval(x: float, low: float, high: float, fmt: str) -> str:
    if not np.isfinite(x):
        return "not defined"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{x:{fmt}} (no interval)"
    return f"{x:{fmt}} ({low:{fmt}} to {high:{fmt}})"


def interval_table(estimates: pd.DataFrame, by: Sequence[str], *, level: float = 0.95) -> pd.DataFrame:
    """``estimates`` as a reader reads it: per group and category the images, the count, the density per m² and
    the fraction, each as ``estimate (low to high)``, ``no interval`` where not estimable, ``not defined``
    where there is no estimate; then whether it is corrected and the note. Indexed by ``by`` and category."""
    pct = f"{level:.0%}"
    rows = estimates.apply(lambda r: pd.Series({
        "images": int(r["images"]), "count": round(float(r["count"]), 1),
        f"per m² ({pct} interval)": _with_interval(r["density"], r["density_low"], r["density_high"], ".1f"),
        f"fraction ({pct} interval)": _with_interval(r["fraction"], r["fraction_low"], r["fraction_high"], ".1%"),
        "corrected": "yes" if r["corrected"] else "no", "note": r["note"] or ""}), axis=1)
    index = pd.MultiIndex.from_frame(estimates[[*by, "category"]].map(_text))
    return rows.set_axis(index)


def _whiskers(ax: Axes, y: np.ndarray, est: pd.DataFrame, value: str, colour: str, label: str) -> None:
    """Dots at ``est[value]`` with whiskers to ``value_low``/``value_high``; hollow dots where not estimable."""
    x = est[value].to_numpy(np.float64)
    low, high = est[f"{value}_low"].to_numpy(np.float64), est[f"{value}_high"].to_numpy(np.float64)
    ok = np.isfinite(low) & np.isfinite(high) & np.isfinite(x)
    ax.errorbar(x[ok], y[ok], xerr=[x[ok] - low[ok], high[ok] - x[ok]], fmt="o", color=colour, ecolor=colour,
                elinewidth=1.6, capsize=3, markersize=6, label=label)
    bare = ~ok & np.isfinite(x)
    if bare.any():
        ax.plot(x[bare], y[bare], "o", markerfacecolor="white", markeredgecolor=colour, markersize=6,
                label=f"{label}: no interval (not estimable)")


def group_intervals(estimates: pd.DataFrame, by: Sequence[str], *, title: str | None = None,
                    level: float = 0.95) -> Figure:
    """Dot-and-whisker plot per group: density per m² of each category (left) and the dead fraction (right),
    each with its interval. Groups run down the page in the table's order."""
    by = list(by)
    cats = [c for c in estimates["category"].unique() if c != "all"]
    groups = estimates.drop_duplicates(by)[by].reset_index(drop=True)
    labels = group_labels(groups, by).tolist()
    n = len(groups)
    fig = _new_figure(REPORT_WIDTH, max(2.6, 0.42 * n + 1.6))
    left, right = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    colours = class_colours(cats)
    key = groups.assign(_row=np.arange(n))
    offsets = np.linspace(-0.15, 0.15, len(cats)) if len(cats) > 1 else [0.0]
    for c, off in zip(cats, offsets):
        est = estimates[estimates["category"] == c].merge(key, on=by)
        _whiskers(left, est["_row"].to_numpy(np.float64) + off, est, "density", colours[c], c)
    dead = estimates[estimates["category"] == "dead"].merge(key, on=by) if "dead" in cats else None
    if dead is not None:
        _whiskers(right, dead["_row"].to_numpy(np.float64), dead, "fraction", DEAD_COLOUR, "dead")
        right.set_xlim(0, 1)
    pct = f"{level:.0%}"
    left.set(xlabel=f"density per m² ({pct} interval)", title="Density by group")
    right.set(xlabel=f"dead fraction, mortality ({pct} interval)", title="Mortality by group")
    left.set_yticks(np.arange(n), labels, fontsize=max(LABEL_POINTS, 10 if n <= 12 else LABEL_POINTS))
    left.set_ylim(n - 0.5, -0.5)
    left.set_xlim(left=0)
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    left.legend(loc="lower right", fontsize=LABEL_POINTS, frameon=True)
    fig.suptitle(title or f"Density and mortality by {', '.join(by)}")
    return fig


def density_over_time(estimates: pd.DataFrame, *, date: str = "date", site: str | None = "site",
                      level: float = 0.95) -> Figure:
    """Density of live and of dead mussels per m², and the dead fraction, against ``date``: one line per
    ``site`` (marker and name at the line's end), each point with its interval."""
    cats = [c for c in estimates["category"].unique() if c != "all"]
    colours = class_colours(cats)
    panels = [(c, "density", f"{c} per m²", colours[c]) for c in cats]
    if "dead" in cats:
        panels.append(("dead", "fraction", "dead fraction", DEAD_COLOUR))
    fig = _new_figure(REPORT_WIDTH, 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True))
    sites = sorted(estimates[site].dropna().astype(str).unique()) if site and site in estimates else [None]
    dates = pd.to_datetime(estimates[date]).dropna().sort_values().unique()
    span = (dates[-1] - dates[0]) if len(dates) > 1 else pd.Timedelta(days=1)
    for ax, (cat, value, name, colour) in zip(axes, panels):
        ends = []
        for i, s in enumerate(sites):
            est = estimates[estimates["category"] == cat]
            if s is not None:
                est = est[est[site].astype(str) == s]
            est = est.sort_values(date)
            dodge = span * 0.03 * (i - (len(sites) - 1) / 2)  # sites side by side: whiskers do not hide each other
            x = (pd.to_datetime(est[date]) + dodge).to_numpy()
            y = est[value].to_numpy(np.float64)
            low, high = est[f"{value}_low"].to_numpy(np.float64), est[f"{value}_high"].to_numpy(np.float64)
            ok = np.isfinite(low) & np.isfinite(high)
            ax.plot(x, y, marker=MARKERS[i % len(MARKERS)], color=colour, linestyle=("-", "--", ":", "-.")[i % 4],
                    markersize=6, label=s)
            ax.vlines(x[ok], low[ok], high[ok], color=colour, linewidth=1.4, alpha=0.7)
            if s is not None and len(x) and np.isfinite(y[-1]):
                ends.append((y[-1], x[-1], s))
        ax.set(title=name, ylabel=f"{name} ({level:.0%} interval)", xlabel=date)
        ax.set_ylim(bottom=0, top=1 if value == "fraction" else None)
        _end_labels(ax, ends, span * 0.06)
        ax.grid(alpha=0.3)
        ax.set_xticks(dates, [pd.Timestamp(d).strftime("%Y-%m-%d") for d in dates], fontsize=LABEL_POINTS)
        ax.margins(x=0.25)
    fig.suptitle(f"Density and mortality over time{' by ' + site if site in estimates else ''}")
    return fig


def _end_labels(ax: Axes, ends: list[tuple[float, object, str]], shift: pd.Timedelta) -> None:
    """Name each line right of its last point (``shift`` later), moved apart vertically so that no two overlap."""
    low, high = ax.get_ylim()
    gap = (high - low) * 0.075
    placed: list[float] = []
    for y, x, text in sorted(ends, key=lambda e: e[0]):
        y_text = max(y, placed[-1] + gap) if placed else y
        placed.append(y_text)
        ax.annotate(text, (x, y), xytext=(pd.Timestamp(x) + shift, y_text), textcoords="data", va="center", fontsize=LABEL_POINTS,
                    xycoords="data", bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))


def site_map(sheet: pd.DataFrame, estimates: pd.DataFrame | None = None, *, site: str = "site") -> Figure:
    """The sites at their mean ``lat``/``lon`` (the sheet's), drawn in degrees with the longitude scaled by
    the cosine of the latitude (distances read alike in both directions). With ``estimates`` of
    ``by_group(site)``, each dot's area follows the site's density of all mussels (its categories' summed) and its label gives the
    density and the dead fraction."""
    where = sheet.dropna(subset=["lat", "lon"])
    key = site if site in where else None
    pos = (where.groupby(key)[["lat", "lon"]].mean().reset_index() if key else
           where[["lat", "lon"]].mean().to_frame().T.assign(**{site: "images"}))
    fig = _new_figure(REPORT_WIDTH * 0.7, REPORT_WIDTH * 0.55)
    ax = fig.add_subplot()
    sizes = np.full(len(pos), 90.0)
    texts = pos[site].astype(str).tolist()
    if estimates is not None and key and site in estimates:
        names = pos[site].astype(str)
        keyed = estimates.assign(**{site: estimates[site].astype(str)})
        dens = names.map(keyed.groupby(site)["density"].sum(min_count=1))  # all mussels: the categories' sum
        dead = keyed[keyed["category"] == "dead"].set_index(site)["fraction"]
        if dens.notna().any() and dens.max() > 0:
            sizes = 60 + 540 * (dens.fillna(0).to_numpy() / dens.max())
        texts = [s + (f"\n{d:.0f} per m²" if np.isfinite(d) else "")
                 + (f", {dead[s]:.0%} dead" if s in dead and np.isfinite(dead[s]) else "") for s, d in zip(names, dens)]
    ax.scatter(pos["lon"], pos["lat"], s=sizes, color=OKABE_ITO["bluish_green"], edgecolor="black", alpha=0.85,
               zorder=3)
    middle = float(pos["lon"].mean())
    for (lon, lat), text in zip(pos[["lon", "lat"]].to_numpy(), texts):
        east = len(pos) > 1 and lon > middle  # eastern labels to the left of their dot: inside the frame
        ax.annotate(text, (lon, lat), xytext=(-12 if east else 12, 6), textcoords="offset points",
                    ha="right" if east else "left", fontsize=LABEL_POINTS + 1,
                    zorder=4, bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.6", alpha=0.9))
    lat0 = float(pos["lat"].mean())
    ax.set_aspect(1 / max(np.cos(np.radians(lat0)), 0.05), adjustable="datalim")
    ax.margins(0.35)
    ax.set(xlabel="longitude (°E)", ylabel="latitude (°N)", title=f"Sites ({len(pos)}) from the sheet's lat/lon")
    ax.grid(alpha=0.3)
    ax.ticklabel_format(useOffset=False, style="plain")
    return fig
