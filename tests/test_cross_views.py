"""Every view of one store agrees with every other, whatever the thresholds, mapping and class map.

The views: ``Run.counts``, ``Run.per_image``, ``Run.detections``, the count cube, the polygon export,
``musseltools counts --json``, the ThresholdTuner, and the counts ``run.json`` holds after the
thresholds are saved. The reference is computed here from the raw stored Parquet parts with the rule
the documentation states (a class a mapping leaves out keeps the run's threshold; ``confidence >= T``
up to the one tolerance; with a minimum shell length saved on the run, a box's longer side times its image's
scale ``>= min_length_mm`` up to the tolerance, and every box of an image without a scale), independently of
musseltools' views.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import IMGSZ, write_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import musseltools as mt
from musseltools import cli
from musseltools.jupyter.widgets import ThresholdTuner

#: starts processes, kernels or models: left out of `make test-fast`
pytestmark = pytest.mark.slow

RUN_THRESHOLD = 0.4
CLASS_MAPS = [None, {"live": "mussel", "dead": "mussel"}, {"dead": "shell"}]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("crossviews")
    folder = root / "images"
    write_images(folder, 5, seed=11)
    out = {}
    for i, cmap in enumerate(CLASS_MAPS):
        r = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=root / "store", quiet=True, batch_size=1,
                   threshold=RUN_THRESHOLD, class_map=cmap)
        out[i] = r
    results = root / "store" / "results" / out[0].meta["inference_key"]
    raw = pd.read_parquet(results / "detections")
    assert len(raw) > 50  # enough detections for thresholds to matter
    # drawn scales (kept by image, so every run has them) on three images; the other two have none
    images = pd.read_parquet(results / "images").drop_duplicates("image_id").sort_values("path")
    scale = dict(zip(images["image_id"][:3], SCALES))
    for path, mm in zip(images["path"][:3], SCALES):
        out[0].set_scale(str(path), px_length=10, mm=mm * 10)
    box = raw[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
    raw["length_mm"] = np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) * raw["image_id"].map(scale)
    return out, raw


#: mm per px of the images that have a scale
SCALES = (0.5, 1.0, 2.0)


def _reference(raw: pd.DataFrame, threshold, cmap, min_length_mm: float = 0.0) -> dict[str, int]:
    if isinstance(threshold, dict):
        per = {}
        for key, t in threshold.items():  # categories first, class names win
            if key not in ("live", "dead"):
                per.update({n: t for n in ("live", "dead") if (cmap or {}).get(n, n) == key})
        per.update({k: t for k, t in threshold.items() if k in ("live", "dead")})
        thr = raw["class_name"].map(lambda n: per.get(n, RUN_THRESHOLD))
    else:
        thr = pd.Series(float(threshold), index=raw.index)
    kept = raw[raw["confidence"].astype(np.float64) >= thr.astype(np.float64) - 1e-9]
    if min_length_mm:
        kept = kept[kept["length_mm"].isna() | (kept["length_mm"] >= min_length_mm - 1e-9)]
    cats = list(dict.fromkeys((cmap or {}).get(n, n) for n in ("live", "dead")))
    got = kept["class_name"].map(lambda n: (cmap or {}).get(n, n)).value_counts()
    return {c: int(got.get(c, 0)) for c in cats}


grid = st.integers(1, 99).map(lambda k: round(k / 100, 2))


@st.composite
def thresholds(draw, cmap_index):
    cmap = CLASS_MAPS[cmap_index]
    if draw(st.booleans()):
        return draw(grid)
    keys = ["live", "dead"] + sorted(set((cmap or {}).values()) - {"live", "dead"})
    chosen = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=len(keys), unique=True))
    return {k: draw(grid) for k in chosen}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_view_agrees_with_the_stored_results(runs, data, capsys, tmp_path):
    by_map, raw = runs
    i = data.draw(st.sampled_from(sorted(by_map)), label="class map")
    run, cmap = by_map[i], CLASS_MAPS[i]
    t = data.draw(thresholds(i), label="thresholds")
    measured = raw["length_mm"].dropna()
    mm = data.draw(st.sampled_from([0.0, *np.quantile(measured, [0.25, 0.5, 0.9]).round(2)]), label="min_length_mm")
    expect = _reference(raw, t, cmap, mm)
    run.save_min_length_mm(mm)
    try:
        assert run.meta["counts"] == _reference(raw, RUN_THRESHOLD, cmap, mm)  # recounted at the minimum
        _views_agree(run, i, t, expect, capsys, tmp_path)
    finally:
        run.save_min_length_mm(0)


def _views_agree(run, i, t, expect, capsys, tmp_path):
    cmap = CLASS_MAPS[i]

    assert run.counts(t) == expect
    table = run.per_image(t)
    assert {c: int(table[c].sum()) for c in expect} == expect
    dets = run.detections(t)
    col = "category" if cmap else "class_name"
    assert {c: int((dets[col] == c).sum()) for c in expect} == expect

    capsys.readouterr()
    arg = ",".join(f"{k}={v}" for k, v in t.items()) if isinstance(t, dict) else str(t)
    assert cli.main(["counts", run.run_id, "--store", str(run.store.root), "--json", "--threshold", arg]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == expect

    files = run.export_polygons(tmp_path / f"export-{i}", threshold=t)
    exported = [json.loads(f.read_text()) for f in files]
    polys = pd.Series([p["class"] for doc in exported for p in doc["polygons"]], dtype=object)
    assert {c: int((polys == c).sum()) for c in expect} == expect

    rule = run.rule(t)
    if rule.uniform is not None:  # the cube is a count per threshold, one threshold for all classes
        cube = run.cube()["count"].sel(threshold=rule.uniform, method="nearest")
        assert float(cube["threshold"]) == pytest.approx(rule.uniform)
        assert {c: int(cube.sel({"class": c}).sum()) for c in expect} == expect

    tuner = ThresholdTuner(run)
    for name, s in tuner.sliders.items():
        s.value = rule.of(name)
    assert tuner.survey_counts == expect


@pytest.mark.parametrize("i", range(len(CLASS_MAPS)))
def test_saved_thresholds_keep_the_run_threshold_for_classes_left_out(runs, i):
    by_map, raw = runs
    run, cmap = by_map[i], CLASS_MAPS[i]
    before = run.counts()
    run.save_thresholds({"live": 0.45})
    try:
        expect = _reference(raw, {"live": 0.45}, cmap)
        assert run.meta["counts"] == run.counts() == expect  # run.json and the views agree
        assert run.thresholds == {"live": 0.45, "dead": RUN_THRESHOLD}
        if cmap is None:  # dead still counts at the run's threshold, not down to the floor
            assert run.counts()["dead"] == before["dead"]
        assert f"live 0.45, dead {RUN_THRESHOLD:.2f}" in repr(run)
    finally:
        run.save_thresholds(RUN_THRESHOLD)
