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


def _colour(c) -> str:
    from matplotlib.colors import to_hex

    return to_hex(c).upper()


def test_report_figures_keep_one_palette(survey, tmp_path):
    """Issue 22, point 8: live is blue and dead orange in every figure; other series take other Okabe-Ito
    colours, and no two series differ by colour alone."""
    from test_evaluate import write_labels, yolo_line

    t = 0.3
    dets = survey.detections(t)
    table = survey.per_image(t).dropna(subset=["processed_at"])
    labels = {}
    for row in table.itertuples():
        d = dets[(dets["image_id"] == row.image_id) & (dets["confidence"] >= 0.5)]
        labels[row.path.rsplit("/", 1)[-1].rsplit(".", 1)[0]] = [
            yolo_line(int(r.class_id), (r.x1, r.y1, r.x2, r.y2), row.width, row.height) for r in d.itertuples()]
    ev = mt.evaluate(survey, write_labels(tmp_path / "labels", labels), threshold=t)
    palette = plots.class_colours(survey.categories)
    classes = {palette["live"], palette["dead"]}
    okabe_ito = {v.upper() for v in plots.OKABE_ITO.values()}

    pr = plots.plot_pr(ev).axes[0]
    curves = [ln for ln in pr.lines if not ln.get_label().startswith("_")]
    assert len(curves) == len(ev.classes)
    for line in curves:  # "live (AP50 …)" in live's colour; the threshold points in the classes' colours
        assert _colour(line.get_color()) == palette[line.get_label().split(" ")[0]], line.get_label()
    assert {_colour(ln.get_color()) for ln in pr.lines} == {palette[c] for c in ev.classes}
    for ax in plots.plot_count_error(ev, chosen=t).axes:
        series = [ln for ln in ax.lines if not ln.get_label().startswith("_")]
        names = [ln.get_label().split(" ")[0] for ln in series]
        assert names == ["MAE", "bias", "chosen", "calibrated", "best"], names
        colours = [_colour(ln.get_color()) for ln in series]
        assert set(colours) <= okabe_ito - classes, colours  # blue and orange mean live and dead only
        assert len(set(colours)) == len(series), colours
        assert all(ln.get_marker() not in (None, "None", "") for ln in series), "a series without a marker"
        assert len({(ln.get_marker(), ln.get_linestyle()) for ln in series}) == len(series)  # not colour alone
    pvt = plots.plot_pred_vs_true(ev)
    for ax, c in zip(pvt.axes, ev.classes):
        assert {_colour(f) for f in ax.collections[0].get_facecolors()} == {palette[c]}
        assert all(_colour(ln.get_color()) in okabe_ito for ln in ax.lines)


def test_sample_grid_boxes_are_two_pixels_wide_with_a_dark_outline(tmp_path):
    """Issue 22, point 8: in the saved figure a box is a 2-pixel coloured line between dark ones, so it
    stays visible on sand (and under deuteranopia), and the image is not shrunk further when saved."""
    import cv2
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    big = tmp_path / "quadrat.jpg"  # a 4000x3000 quadrat, as in the survey
    cv2.imwrite(str(big), np.full((3000, 4000, 3), (128, 178, 194), np.uint8))
    per_image = pd.DataFrame({"image_id": list("abc"), "path": [str(big)] * 3, "error": [None] * 3,
                              "live": [0] * 3, "dead": [1] * 3})
    dets = pd.DataFrame({"image_id": list("abc"), "class_name": ["dead"] * 3, "x1": [1000.0] * 3,
                         "y1": [1000.0] * 3, "x2": [1060.0] * 3, "y2": [1050.0] * 3, "polygon": [None] * 3})
    fig = plots.sample_grid(per_image, dets, n=3, categories=["live", "dead"], ncols=3)
    FigureCanvasAgg(fig).draw()
    shown = [a for a in fig.axes if a.images]
    assert len(shown) == 3
    for ax in shown:
        arr = np.asarray(ax.images[0].get_array())
        box = ax.get_window_extent()  # pixels at the figure's dpi (as saved)
        assert arr.shape[1] <= box.width * 1.1 and arr.shape[0] <= box.height * 1.1, (arr.shape, box)
    sand = np.full((40, 60, 3), (194, 178, 128), np.uint8)
    box = pd.DataFrame({"class_name": ["dead"], "x1": [10.0], "y1": [10.0], "x2": [50.0], "y2": [30.0],
                        "polygon": [None]})
    out = plots.draw_detections(sand, box, plots.class_colours(["live", "dead"]), thickness=2, outline=True)
    column = out[5:16, 30].astype(int)  # across the top edge, from sand to inside
    orange = [i for i, px in enumerate(column) if tuple(px) == (230, 159, 0)]
    assert len(orange) >= 2, column.tolist()
    dark = [i for i, px in enumerate(column) if px.sum() < 120]
    assert dark and min(dark) < min(orange) and max(dark) > max(orange), column.tolist()  # dark on both sides
