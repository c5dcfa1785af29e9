"""Threshold views and the count-versus-threshold cube, checked against direct filtering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import musseltools as mt
from musseltools.core.thresholds import ClassMap, Thresholds
from musseltools.results import views


def test_cube_equals_counts_at_every_threshold(images, tiny_model):
    r = mt.run(images, model=tiny_model, imgsz=128, quiet=True, threshold=0.37)
    cube = r.cube()
    assert cube["count"].dims == ("image", "class", "threshold")
    assert 0.37 in cube["threshold"].values  # the run's own threshold is on the grid
    dets = r.detections(0.01)
    for t in (0.01, 0.05, 0.37, 0.5, 0.99):
        expect = dets[dets["confidence"] >= t - 1e-9].groupby(["image_id", "class_name"]).size()
        got = cube["count"].sel(threshold=t, method="nearest").to_series()
        got = got[got > 0]
        assert got.sort_index().to_dict() == expect.sort_index().to_dict()
    # written to Zarr, openable with plain xarray
    on_disk = xr.open_zarr(r.store.run_dir(r.run_id) / "cube.zarr")
    np.testing.assert_array_equal(on_disk["count"].values, cube["count"].values)
    assert list(on_disk["path"].values) == list(r.per_image()["path"])


def test_cube_is_rebuilt_when_results_change(images, tiny_model):
    from conftest import write_images

    r = mt.run(images, model=tiny_model, imgsz=128, quiet=True)
    assert r.cube().sizes["image"] == 6
    write_images(images, 2, seed=4, start=10)
    r2 = mt.run(images, model=tiny_model, imgsz=128, quiet=True)
    assert r2.cube().sizes["image"] == 8


def test_per_image_counts_with_class_map():
    images = pd.DataFrame({"image_id": ["a", "b"], "path": ["a.jpg", "b.jpg"]})
    dets = pd.DataFrame({"image_id": ["a", "a", "a", "b"], "class_name": ["live", "dead", "gaping", "live"],
                         "confidence": [0.9, 0.6, 0.7, 0.2]})
    classes = ClassMap(["live", "dead", "gaping"], {"gaping": "dead"})
    out = views.per_image_counts(images, dets, Thresholds.parse(0.5, classes=classes), classes)
    assert out[["live", "dead"]].values.tolist() == [[1, 2], [0, 0]]


# ------------------------------------------------------------------------------------------------------
# Hand-built tables (no model): what each view decides, row by row and at the threshold's edge. These are
# the tests that judge results/views.py in mutation testing (`-k "hand_built or class_map"`, docs/testing.md).
def _hb_classes():
    return ClassMap(["mussel", "gaping", "shell"], {"mussel": "live", "gaping": "dead", "shell": "dead"})


def _hb_images():
    return pd.DataFrame({"image_id": ["a", "b", "c"], "path": ["a.jpg", "b.jpg", "c.jpg"],
                         "width": [640, np.nan, 320], "height": [480, np.nan, 200],
                         "error": [None, None, "unreadable"]})


def _hb_dets():
    rows = [  # image, class, confidence; the thresholds below are mussel 0.5, the other classes 0.3
        ("a", "mussel", 0.5 - 5e-10),  # counts: within the tolerance of its threshold
        ("a", "mussel", 0.4999),       # does not count
        ("a", "gaping", 0.3),          # counts: exactly at its threshold
        ("a", "shell", 0.8),
        ("a", "shell", 0.29),
        ("b", "mussel", 0.95),
        ("b", "mussel", 0.6),
        ("b", "gaping", 0.1),
        ("z", "mussel", 0.9),          # an image the images table does not hold
    ]
    dets = pd.DataFrame(rows, columns=["image_id", "class_name", "confidence"])
    dets["detection_id"] = [f"d{i}" for i in range(len(dets))]
    return dets


def _hb_thresholds():
    return Thresholds.parse({"mussel": 0.5}, default=0.3, classes=_hb_classes())


def test_hand_built_counts_per_image_and_survey_totals_follow_the_threshold_rule():
    cm, th, dets = _hb_classes(), _hb_thresholds(), _hb_dets()
    assert views.above_threshold(dets, th)["detection_id"].tolist() == ["d0", "d2", "d3", "d5", "d6", "d8"]
    out = views.per_image_counts(_hb_images(), dets, th, cm)
    assert list(out.columns) == list(_hb_images().columns) + ["live", "dead"]
    assert out[["image_id", "live", "dead"]].values.tolist() == [["a", 1, 2], ["b", 2, 0], ["c", 0, 0]]
    assert out["live"].dtype == np.int64 and out["dead"].dtype == np.int64
    assert views.totals(out, ["live", "dead", "crab"]) == {"live": 3, "dead": 2, "crab": 0}
    none = views.per_image_counts(_hb_images(), dets[dets["confidence"] < 0.2], th, cm)  # nothing counts
    assert none[["live", "dead"]].values.tolist() == [[0, 0]] * 3 and none["dead"].dtype == np.int64
    live_only = views.per_image_counts(_hb_images(), dets[dets["class_name"] == "mussel"], th, cm)
    assert live_only[["live", "dead"]].values.tolist() == [[1, 0], [2, 0], [0, 0]]  # no dead counted: 0, not missing

    conf = views.class_confidences(dets.assign(confidence=dets["confidence"].astype(np.float32)))
    assert list(conf) == ["mussel", "gaping", "shell"]  # in order of first appearance
    assert conf["mussel"].dtype == np.float64 and conf["mussel"].tolist() == sorted(conf["mussel"].tolist())
    assert len(conf["mussel"]) == 5 and conf["shell"].tolist() == pytest.approx([0.29, 0.8])
    assert views.class_confidences(dets[:0]) == {}
    exact = views.class_confidences(dets)  # float64: the binary search sees the tolerance edge
    assert views.totals_at(exact, th, cm) == {"live": 4, "dead": 2}  # z's mussel counts in the survey
    assert views.totals_at(exact, Thresholds.parse(0.5), cm) == {"live": 4, "dead": 1}
    assert views.totals_at({"mussel": exact["mussel"]}, th, cm) == {"live": 4, "dead": 0}
    assert views.totals_at(exact, Thresholds.parse(0.3), ClassMap(["mussel", "gaping", "shell"])) == {
        "mussel": 5, "gaping": 1, "shell": 1}


def test_hand_built_count_disagreement_sums_differences_over_shared_categories_of_images_with_results():
    mine = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "live": [3, 1, 5, 2], "dead": [0, 4, 1, 1],
                         "crab": [9, 9, 9, 9]}, index=[10, 11, 12, 13])
    theirs = pd.DataFrame({
        "image_id": ["a", "a", "b", "c", "d"], "live": [1, 7, 1, 0, 0], "dead": [2, 7, 1, 0, 0],
        "error": [None, None, None, "unreadable", None],
        "processed_at": pd.to_datetime(["2026-01-01", "2026-01-01", "2026-01-01", "2026-01-01", None], utc=True)})
    got = views.count_disagreement(mine, theirs, ["live", "dead", "crab"])
    # a: |3-1| + |0-2| (its first row); b: |4-1|; c errored, d never processed: 0; crab is not in theirs
    assert got.to_dict() == {10: 4, 11: 3, 12: 0, 13: 0} and got.dtype == np.int64
    ok = views.with_results(theirs)
    assert ok["image_id"].tolist() == ["a", "b"] and ok["live"].tolist() == [1, 1]


def test_hand_built_threshold_grid_starts_at_the_floor_and_holds_the_extra_thresholds():
    grid = views.threshold_grid(0.035, [0.375, 0.001, 0.3700000001, 0.3700004])
    assert grid[0] == 0.035 and grid[1] == 0.04 and grid[-1] == 0.99
    assert 0.375 in grid and 0.001 not in grid and 0.03 not in grid
    assert len(grid) == 98 and (np.diff(grid) > 0).all()  # 0.37 once: extras are rounded to 6 decimals
    assert views.threshold_grid(0.03).tolist() == [round(0.01 * i, 2) for i in range(3, 100)]
    assert views.threshold_grid(0.01)[:3].tolist() == [0.01, 0.02, 0.03]


def test_hand_built_cube_counts_every_image_category_and_threshold_like_direct_filtering():
    cm, images = _hb_classes(), _hb_images()
    dets = pd.concat([_hb_dets(), pd.DataFrame({
        "image_id": ["b", "b", "a"], "class_name": ["mussel", "crab", "shell"],
        "confidence": [0.37 - 5e-10, 0.9, 0.02]})], ignore_index=True)  # crab: no class; 0.02: below the floor
    edge = pd.DataFrame({"image_id": ["c", "c"], "class_name": ["shell", "mussel"], "confidence": [0.055, 0.37 - 1e-9]})
    dets = pd.concat([dets, edge], ignore_index=True)  # in the floor's step; exactly at 0.37's tolerance
    cube = views.build_cube(images, dets, cm, 0.05, extra_thresholds=[0.375], attrs={"run_id": "r1"})
    assert cube["count"].dims == ("image", "class", "threshold") and cube["count"].dtype == np.int32
    assert dict(cube.sizes) == {"image": 3, "class": 2, "threshold": 96}  # the per-image values share "image"
    assert cube["image"].values.tolist() == ["a", "b", "c"] and cube["class"].values.tolist() == ["live", "dead"]
    grid = views.threshold_grid(0.05, [0.375])
    np.testing.assert_array_equal(cube["threshold"].values, grid)
    cats = pd.Series(cm.categories_of(dets["class_name"]))
    for t in grid:
        for image in "abc":
            for cat in ("live", "dead"):
                expect = ((dets["image_id"] == image) & (cats == cat) & (dets["confidence"] >= t - 1e-9)).sum()
                assert cube["count"].sel(image=image, threshold=t).sel({"class": cat}).item() == expect, (t, image, cat)
    assert cube["count"].sel(image="b", threshold=0.37).values.tolist() == [3, 0]  # the 0.37 - 5e-10 mussel counts
    assert cube["count"].sel(image="b", threshold=0.38).values.tolist() == [2, 0]
    assert cube["count"].sel(image="c", threshold=0.05).values.tolist() == [1, 1]
    assert cube["count"].sel(image="c", threshold=0.37).values.tolist() == [1, 0]
    assert cube["path"].values.tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert cube["width"].values.tolist() == [640, -1, 320] and cube["height"].values.tolist() == [480, -1, 200]
    assert cube["width"].dtype == np.int64 and cube["height"].dtype == np.int64 and cube["failed"].values.tolist() == [False, False, True]
    assert cube.attrs == {"run_id": "r1"}
    assert cube["count"].attrs == {"long_name": "detections with confidence >= threshold", "units": "count",
                                   "conf_floor": 0.05}
    assert cube["threshold"].attrs == {"long_name": "confidence threshold", "units": "1"}
    bare = views.build_cube(images.drop(columns="error"), dets[:0], cm, 0.5)
    assert bare["failed"].values.tolist() == [False] * 3 and int(bare["count"].sum()) == 0 and bare.attrs == {}


def test_hand_built_polygon_document_holds_the_counted_outlines_counts_threshold_and_size():
    cm, th = _hb_classes(), _hb_thresholds()
    dets = pd.DataFrame({"class_name": ["mussel", "shell", "gaping", "mussel"],
                         "confidence": [0.912345678, 0.31, 0.2, 0.7],
                         "polygon": [[[1.234, 5.678], [9.0, 1.0], [3.0, 3.0]], [[0, 0], [1, 0], [1, 1]],
                                     [[5, 5], [6, 5], [6, 6]], np.array([[2.0, 2.0], [4.005, 2.0], [4.0, 4.0]])]})
    doc = views.polygon_document(dets, thresholds=th, classes=cm, width=640, height=np.float64(480))
    assert doc["polygons"] == [
        {"coords": [[1.23, 5.68], [9.0, 1.0], [3.0, 3.0]], "confidence": 0.91235, "class": "live"},
        {"coords": [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]], "confidence": 0.31, "class": "dead"},
        {"coords": [[2.0, 2.0], [4.0, 2.0], [4.0, 4.0]], "confidence": 0.7, "class": "live"}]
    assert (doc["live_count"], doc["dead_count"]) == (2, 1)
    assert doc["threshold"] == {"mussel": 0.5, "gaping": 0.3, "shell": 0.3}
    assert (doc["image_width"], doc["image_height"]) == (640, 480) and type(doc["image_height"]) is int
    blank = views.polygon_document(dets[:0], thresholds=Thresholds.parse(0.4), classes=cm, width=np.nan, height=np.nan)
    assert blank == {"polygons": [], "live_count": 0, "dead_count": 0, "threshold": 0.4, "image_width": None,
                     "image_height": None}
    unknown = views.polygon_document(dets[:0], thresholds=th, classes=cm, width=None, height=None)
    assert (unknown["image_width"], unknown["image_height"]) == (None, None)
