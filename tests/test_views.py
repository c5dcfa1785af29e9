"""Threshold views and the count-versus-threshold cube, checked against direct filtering."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
