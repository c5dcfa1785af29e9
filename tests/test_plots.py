"""Report figures: each returns a Figure whose drawn data matches the run's counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import IMGSZ, write_images
from matplotlib.figure import Figure

import musseltools as mt
from musseltools.plots import survey as plots


@pytest.fixture(scope="module")
def survey(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("plots")
    folder = root / "images"
    write_images(folder, 6, seed=3)
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    return mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=root / "store", quiet=True, batch_size=1)


def test_class_colours_are_fixed_per_name():
    c = plots.class_colours(["dead", "other", "live"])
    assert c["live"] == "#0072B2" and c["dead"] == "#E69F00"  # Okabe-Ito: colour-blind safe (issue 15)
    assert c["other"] not in (c["live"], c["dead"])
    assert plots.colour_of("live", c) == (0, 114, 178)


def test_counts_per_image_bars_are_the_counts(survey):
    t = 0.3
    table = survey.per_image(t)
    fig = plots.counts_per_image(table, survey.categories, threshold=t)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert "0.30" in ax.get_title()
    assert "count" in ax.get_ylabel()
    labels = [x.get_text() for x in ax.get_xticklabels()]
    assert labels == [p.rsplit("/", 1)[-1] for p in table["path"]]
    n = len(table)
    heights = [p.get_height() for p in ax.patches]
    for k, cat in enumerate(survey.categories):
        assert heights[k * n:(k + 1) * n] == table[cat].tolist()
    legend = [x.get_text() for x in ax.get_legend().get_texts()]
    assert sorted(legend) == sorted([*survey.categories, "error (no result)"])  # broken.jpg is marked


def test_confidence_histograms_hold_every_detection(survey):
    dets = survey.detections(survey.conf_floor)
    fig = plots.confidence_histograms(dets, survey.class_names, threshold={"live": 0.3, "dead": 0.6},
                                      conf_floor=survey.conf_floor)
    assert len(fig.axes) == len(survey.class_names)
    for ax, name, t in zip(fig.axes, survey.class_names, (0.3, 0.6)):
        n = int((dets["class_name"] == name).sum())
        assert sum(p.get_height() for p in ax.patches) == n
        assert ax.get_title() == f"{name} ({n} detections)"
        assert ax.get_xlabel().startswith("confidence") and "count" in ax.get_ylabel()
        vline = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert vline and vline[0].get_xdata()[0] == pytest.approx(t)
        kept = int(((dets["class_name"] == name) & (dets["confidence"] >= t)).sum())
        assert ax.get_legend().get_title().get_text() == f"{kept} of {n} kept"


def test_threshold_curves_equal_run_counts(survey):
    curves = plots.threshold_curves(survey.cube())
    assert list(curves.columns) == survey.categories
    for t in (survey.conf_floor, 0.25, 0.5, 0.9):
        row = curves.loc[curves.index[np.isclose(curves.index, t)][0]]
        assert row.to_dict() == survey.counts(t)


def test_count_vs_threshold_marks_the_threshold_on_each_curve(survey):
    thresholds = {"live": 0.3, "dead": 0.7}
    fig = plots.count_vs_threshold(survey.cube(), threshold=thresholds)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("confidence threshold") and "count" in ax.get_ylabel()
    assert ax.get_title()
    dots = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    assert len(dots) == 2
    expected = {survey.counts(t)[c] for c, t in thresholds.items()}
    assert {int(d.get_ydata()[0]) for d in dots} == expected
    assert sorted(float(d.get_xdata()[0]) for d in dots) == [0.3, 0.7]
    # without a threshold: curves only
    bare = plots.count_vs_threshold(survey.cube()).axes[0]
    assert not [ln for ln in bare.get_lines() if ln.get_marker() == "o"]


def test_draw_detections_outlines_in_class_colour():
    img = np.zeros((60, 80, 3), np.uint8)
    dets = pd.DataFrame({
        "class_name": ["live", "dead"], "x1": [10.0, 40.0], "y1": [10.0, 30.0], "x2": [30.0, 70.0],
        "y2": [25.0, 50.0],
        "polygon": [None, [[40.0, 30.0], [70.0, 30.0], [70.0, 50.0], [40.0, 50.0]]],
    })
    colours = plots.class_colours(["live", "dead"])
    out = plots.draw_detections(img, dets, colours, thickness=1)
    assert img.sum() == 0  # the input is untouched
    assert tuple(out[10, 20]) == (0, 114, 178)  # top edge of the live box
    assert tuple(out[40, 40]) == (230, 159, 0)  # left edge of the dead polygon
    assert out[17, 20].sum() == 0  # inside: not filled
    half = plots.draw_detections(np.zeros((30, 40, 3), np.uint8), dets.iloc[:1], colours, scale=0.5, thickness=1)
    assert tuple(half[5, 10]) == (0, 114, 178)  # coordinates scaled to a shrunk preview


def test_read_image_rgb_shrinks_large_images(tmp_path):
    import cv2

    big = np.zeros((300, 1200, 3), np.uint8)
    big[:, :, 2] = 255  # red in BGR
    cv2.imwrite(str(tmp_path / "big.png"), big)
    rgb, scale = plots.read_image_rgb(tmp_path / "big.png", max_side=600)
    assert rgb.shape == (150, 600, 3) and scale == pytest.approx(0.5)
    assert tuple(rgb[10, 10]) == (255, 0, 0)


def test_sample_grid_draws_processed_images_with_legend(survey):
    t = 0.3
    table, dets = survey.per_image(t), survey.detections(t)
    fig = plots.sample_grid(table, dets, n=4, categories=survey.categories, threshold=t)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 4
    titles = [ax.get_title() for ax in shown]
    assert not any("broken" in s for s in titles)  # errored images are not sampled
    picked = plots.pick_samples(table, 4)
    for ax, row in zip(shown, picked.itertuples()):
        assert ax.get_title() == f"{row.path.rsplit('/', 1)[-1]}\nlive {row.live}, dead {row.dead}"
    assert [x.get_text() for x in fig.legends[0].get_texts()] == survey.categories
    assert "0.30" in fig.get_suptitle()
    # asking for more samples than there are processed images shows each once
    many = plots.sample_grid(table, dets, n=20, categories=survey.categories)
    assert len([ax for ax in many.axes if ax.images]) == int(table["error"].isna().sum()) == 6
