"""A synthetic survey with a design: sites, dates and treatments with a known true density and
mortality per site, the per-image counts drawn from them, and the sample sheet that says which image is
which quadrat.

:func:`draw_survey` draws the design and the counts alone (no pixels: fast, for the coverage of the
survey estimators); :func:`generate_survey` also renders the frames with exactly those counts and writes
the sample sheet beside them.

The sampling model: each site has a true density (mussels per m²) and a true dead fraction. An image
shows ``area_m2`` of the bed, drawn uniformly from ``area``; its number of mussels is negative binomial
with mean ``density * area_m2`` and aggregation ``k`` (variance ``mu + mu²/k``: mussels live in
clumps); its own dead fraction is beta distributed around the site's (concentration ``phi``) and its dead
count binomial from it. So images vary more than Poisson counts would, as quadrats do.

Examples
--------
>>> from musseltools.synth.survey import draw_survey
>>> images, truth = draw_survey(sites=2, dates=2, images_per_group=3, seed=1)
>>> len(images), list(truth.columns)
(12, ['site', 'treatment', 'density_m2', 'dead_fraction'])
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .frames import FrameSpec, generate_frames

__all__ = ["draw_survey", "generate_survey"]

#: Treatments assigned to sites in turn.
TREATMENTS = ("control", "restored")


def draw_survey(
    sites: int = 4,
    dates: int = 2,
    images_per_group: int = 5,
    *,
    seed: int = 0,
    density: tuple[float, float] = (40.0, 160.0),
    dead_fraction: tuple[float, float] = (0.1, 0.5),
    area: tuple[float, float] = (0.1, 0.3),
    k: float = 2.0,
    phi: float = 10.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw a survey design and its per-image counts.

    Parameters
    ----------
    sites, dates, images_per_group : int
        Sites (each with a treatment from :data:`TREATMENTS`, in turn), survey dates (a week apart from
        2024-05-01), and images per site and date.
    seed : int
        Seed; the same arguments give the same tables.
    density, dead_fraction : (float, float)
        Ranges the sites' true density (per m²) and dead fraction are drawn from (uniform).
    area : (float, float)
        Range of the area an image shows, in m² (uniform).
    k, phi : float
        Aggregation of counts (negative binomial), and concentration of the images' dead fractions
        around the site's (beta); larger is closer to Poisson and binomial.

    Returns
    -------
    images : pandas.DataFrame
        One row per image: ``image_id, site, date, treatment, replicate, area_m2, live, dead``.
    truth : pandas.DataFrame
        One row per site: ``site, treatment, density_m2, dead_fraction`` (the true values).
    """
    for name, value in (("sites", sites), ("dates", dates), ("images_per_group", images_per_group)):
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not (0 < area[0] <= area[1] and 0 <= dead_fraction[0] <= dead_fraction[1] <= 1 and k > 0 and phi > 0):
        raise ValueError(f"invalid ranges: area {area} (positive), dead_fraction {dead_fraction} (within 0..1), "
                         f"k {k} and phi {phi} (positive)")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    names = [f"S{i + 1}" for i in range(sites)]
    truth = pd.DataFrame({"site": names, "treatment": [TREATMENTS[i % len(TREATMENTS)] for i in range(sites)],
                          "density_m2": rng.uniform(*density, sites), "dead_fraction": rng.uniform(*dead_fraction, sites)})
    days = pd.date_range("2024-05-01", periods=dates, freq="7D").strftime("%Y-%m-%d")
    rows = []
    for s in truth.itertuples(index=False):
        for day in days:
            for r in range(images_per_group):
                a = float(rng.uniform(*area))
                mu = s.density_m2 * a
                n = int(rng.negative_binomial(k, k / (k + mu)))
                p = rng.beta(s.dead_fraction * phi, (1 - s.dead_fraction) * phi) if 0 < s.dead_fraction < 1 \
                    else s.dead_fraction
                dead = int(rng.binomial(n, p))
                rows.append({"image_id": f"{s.site}_{day}_{r + 1}", "site": s.site, "date": day,
                             "treatment": s.treatment, "replicate": r + 1, "area_m2": round(a, 4),
                             "live": n - dead, "dead": dead})
    return pd.DataFrame(rows), truth


def generate_survey(
    out: str | os.PathLike,
    sites: int = 4,
    dates: int = 2,
    images_per_group: int = 5,
    *,
    seed: int = 0,
    size: tuple[int, int] = (416, 320),
    **design,
) -> pd.DataFrame:
    """Render a survey of :func:`draw_survey` and write its sample sheet.

    Writes the dataset of :func:`musseltools.synth.generate_frames` (``images/``, ``labels/``,
    ``counts.csv``, ...) plus ``sheet.csv`` (``path, site, date, treatment, replicate, area_m2``: one row
    per image, ``path`` relative to ``out``) and ``truth.csv`` (the sites' true density and dead fraction).
    The frames are drawn with the design's counts; a shell the frame has no room for is not labelled, so
    ``counts.csv`` holds the counts of the images (the sheet does not carry counts).

    Parameters
    ----------
    out : path-like
        Output folder.
    sites, dates, images_per_group, seed, design
        As in :func:`draw_survey`.
    size : (int, int)
        Width and height of every frame, in pixels.

    Returns
    -------
    pandas.DataFrame
        The sheet with the labelled counts: ``path, site, date, treatment, replicate, area_m2, live, dead``.

    Examples
    --------
    >>> import tempfile
    >>> sheet = generate_survey(tempfile.mkdtemp(), sites=1, dates=1, images_per_group=2, size=(128, 96))
    >>> list(sheet.columns)
    ['path', 'site', 'date', 'treatment', 'replicate', 'area_m2', 'live', 'dead']
    """
    out = Path(out)
    images, truth = draw_survey(sites, dates, images_per_group, seed=seed, **design)
    specs = [FrameSpec(row.image_id, int(size[0]), int(size[1]), live=int(row.live), dead=int(row.dead))
             for row in images.itertuples(index=False)]
    counts = generate_frames(out, specs, seed=seed)
    sheet = images.drop(columns=["live", "dead"]).rename(columns={"image_id": "path"})
    sheet["path"] = "images/" + counts["image"].to_numpy()
    sheet.to_csv(out / "sheet.csv", index=False, lineterminator="\n")
    truth.to_csv(out / "truth.csv", index=False, lineterminator="\n")
    return sheet.assign(live=counts["live"].to_numpy(), dead=counts["dead"].to_numpy())
