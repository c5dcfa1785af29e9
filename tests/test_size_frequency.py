"""Size-frequency: histograms and quantiles of shell length per category and group equal hand calculations; the
image is the sampling unit of the intervals; lengths are in mm only when every image in scope has a scale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_sizes import _run

from musseltools.survey.sizes import size_frequency


def _tables():
    # image a: 10 shells of 10..19 mm; image b: one of 40 mm; image c: none; all at 0.5 mm/px
    lengths = {"a": np.arange(10.0, 20.0), "b": np.array([40.0]), "c": np.zeros(0)}
    dets = pd.DataFrame([{"image_id": i, "category": "live", "length_mm": v, "length_px": 2 * v}
                         for i, vs in lengths.items() for v in vs])
    images = pd.DataFrame({"image_id": list(lengths), "site": ["N", "N", "S"], "mm_per_px": [0.5] * 3})
    return dets, images


def test_histogram_and_quantiles_equal_hand_calculations_per_group():
    dets, images = _tables()
    sf = size_frequency(dets, images, "site", categories=["live", "dead"], bins=[0, 15, 30, 45], n_boot=200)
    assert sf.unit == "mm" and sf.note == ""
    hist = sf.histogram.set_index(["site", "category", "bin_low"])["count"].sort_index()
    assert hist.loc[("N", "live")].tolist() == [5, 5, 1]  # 10..14, 15..19, 40
    assert hist.loc[("S", "live")].tolist() == [0, 0, 0] and hist.loc[("N", "dead")].tolist() == [0, 0, 0]
    q = sf.quantiles.set_index(["site", "category"])
    n = q.loc[("N", "live")]
    values = np.r_[np.arange(10.0, 20.0), 40.0]
    assert (n["images"], n["n"]) == (2, 11)
    assert [n["p10"], n["median"], n["p90"]] == pytest.approx(np.quantile(values, [0.1, 0.5, 0.9]).tolist())
    assert q.loc[("S", "live"), "images"] == 1 and np.isnan(q.loc[("S", "live"), "median"])


def test_intervals_resample_images_not_shells():
    dets, images = _tables()
    one = size_frequency(dets[dets["image_id"] == "a"], images[images["image_id"] == "a"],
                         categories=["live"], n_boot=300).quantiles.iloc[0]
    # one image: every resample of images is that image, so the interval is its median exactly
    # (resampling its ten shells instead would give a wide interval)
    assert one["median_low"] == one["median_high"] == one["median"] == pytest.approx(14.5)
    two = size_frequency(dets, images, categories=["live"], n_boot=400, seed=1).quantiles.iloc[0]
    # images a and b (and the empty c): draws hold a's shells, b's one, or both — the median's interval spans them
    assert two["median_low"] <= two["median"] <= two["median_high"]
    assert two["median_high"] == pytest.approx(40.0) and two["median_low"] == pytest.approx(14.5)
    again = size_frequency(dets, images, categories=["live"], n_boot=400, seed=1).quantiles.iloc[0]
    assert again["median_low"] == two["median_low"] and again["p90_high"] == two["p90_high"]  # seeded


def test_one_image_without_a_scale_puts_every_length_in_pixels_and_says_so():
    dets, images = _tables()
    images.loc[2, "mm_per_px"] = np.nan
    sf = size_frequency(dets, images, categories=["live"], bins=3)
    assert sf.unit == "px" and "1 of 3 images have no scale" in sf.note
    assert sf.quantiles.iloc[0]["median"] == pytest.approx(2 * np.median(np.r_[np.arange(10.0, 20.0), 40.0]))
    assert len(sf.edges) == 4 and sf.edges[0] == 20.0 and sf.edges[-1] == 80.0
    with pytest.raises(ValueError, match="not increasing edges"):
        size_frequency(dets, images, categories=["live"], bins=[5, 1])


def test_run_sizes_in_mm_once_every_image_has_a_scale_by_sheet_group(tmp_path):
    run = _run(tmp_path)
    run.attach_sheet(tmp_path / "survey.csv")
    px = run.sizes(bins=[0, 50, 100, 150])
    assert px.unit == "px" and "1 of 4 images have no scale" in px.note  # c has none
    assert px.histogram.query("category == 'live'")["count"].tolist() == [3, 1, 1]  # 30, 32, 40 | 50 | 100
    run.set_scale("c.jpg", px_length=40, mm=20)
    sf = run.sizes(by="site", bins=[0, 15.5, 30, 60])
    assert sf.unit == "mm" and sf.by == ["site"]
    q = sf.quantiles.set_index(["site", "category"])
    # N: a's 15 and ~15.99 mm, b's 50 mm; S: c's 20 mm, d's shell is outside its image: no length in mm
    assert q.loc[("N", "live"), "n"] == 3 and q.loc[("N", "live"), "median"] == pytest.approx(15.99, abs=0.01)
    assert (q.loc[("S", "live"), "n"], q.loc[("S", "live"), "unmeasured"]) == (1, 1)
    hist = sf.histogram.set_index(["site", "category", "bin_low"])["count"].sort_index()
    assert hist.loc[("N", "live")].tolist() == [1, 1, 1] and hist.loc[("S", "live")].tolist() == [0, 1, 0]


def test_size_figures_draw_one_bar_per_bin_and_category_one_ridge_per_group_in_the_palettes_colours():
    from matplotlib.colors import to_hex

    from musseltools.plots import sizes as plots
    from musseltools.plots.survey import DEAD_COLOUR, LIVE_COLOUR

    dets, images = _tables()
    dets = pd.concat([dets, dets.iloc[:3].assign(category="dead")])
    sf = size_frequency(dets, images, "site", categories=["live", "dead"], bins=[0, 15, 30, 45], n_boot=50)
    ax = plots.size_histogram(sf).axes[0]
    bars = ax.patches
    assert len(bars) == 6  # 3 bins x 2 categories
    assert [to_hex(b.get_facecolor()) for b in bars] == [LIVE_COLOUR.lower()] * 3 + [DEAD_COLOUR.lower()] * 3
    assert [b.get_height() for b in bars] == [5, 5, 1, 3, 0, 0]
    assert ax.get_xlabel() == "shell length (mm)" and ax.get_ylabel() == "shells (count)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["live (11)", "dead (3)"]
    assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 10

    ridge = plots.size_ridgeline(sf, "live").axes[0]
    ticks = sorted(zip(ridge.get_yticks(), (t.get_text() for t in ridge.get_yticklabels())))
    assert [t for _, t in ticks] == ["S (n=0)", "N (n=11)"]  # one ridge per group, N (the first) on top
    assert len(ridge.collections) == 2 and all(to_hex(c.get_facecolor()[0]) == LIVE_COLOUR.lower()
                                               for c in ridge.collections)

    one = plots.live_dead_sizes(sf, group={"site": "N"}).axes[0]
    lines = [ln for ln in one.get_lines() if ln.get_marker() == "o"]
    assert [to_hex(ln.get_color()) for ln in lines] == [LIVE_COLOUR.lower(), DEAD_COLOUR.lower()]
    assert lines[1].get_ydata().tolist() == [1.0, 0.0, 0.0]  # the dead shells (10, 11, 12 mm) all in the first bin
    assert [t.get_text() for t in one.get_legend().get_texts()] == ["live (n=11)", "dead (n=3)"]
    with pytest.raises(ValueError, match="not columns the sizes were grouped by"):
        plots.live_dead_sizes(sf, group={"date": "x"})
