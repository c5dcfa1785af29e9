"""Threshold views and the count-versus-threshold cube, checked against direct filtering."""

from __future__ import annotations

import uuid

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


# The results view over a hand-built store (no model): results/view.py's joins, reasons, corrections and caches.
def _hb_store(tmp_path, status="completed"):
    from hand_built_store import commit, detections_part, images_part, write_run

    from musseltools.store.store import Store

    store = Store(tmp_path / "store")
    coll = pd.DataFrame({"image_id": ["a", "b", "c", "a"], "path": ["/s/a.jpg", "/s/b.jpg", "/s/c.jpg", "/s/a2.jpg"],
                         "width": [64, 30, 20, 64], "height": [48, 40, None, 48],
                         "error": [None, None, "unreadable", None]})
    meta = write_run(store, "r1", "k1", coll, status=status)
    commit(store, "k1", "u1", images_part(["a"], n=[2]),
           detections_part([("a", 0, "mussel", 0.9, 1.0), ("a", 1, "gaping", 0.3, 10.0)]))
    commit(store, "k1", "u2", images_part(["z"], n=[1]), detections_part([("z", 0, "mussel", 0.9, 1.0)]))
    return store, meta


def test_hand_built_results_view_joins_the_collection_says_why_images_lack_results_and_applies_corrections(tmp_path):
    from hand_built_store import commit, detections_part, images_part

    from musseltools.core.detections import detection_ids
    from musseltools.results import view
    from musseltools.store.corrections_log import correction_row, write_corrections

    store, meta = _hb_store(tmp_path)
    res = view.load_results(store, "r1")
    im = res.images
    assert im["image_id"].tolist() == ["a", "b", "c"]  # the collection's images, each once, in its order
    assert im["path"].tolist() == ["/s/a.jpg", "/s/b.jpg", "/s/c.jpg"]  # paths as last scanned
    assert im["width"].tolist() == [64, 30, 20] and im["height"].tolist()[:2] == [48, 40] and pd.isna(im.loc[2, "height"])
    assert str(im["width"].dtype) == "Int64" and str(im["height"].dtype) == "Int64"
    assert pd.isna(im.loc[1, "error"]) and im.loc[2, "error"] == "unreadable"  # b: not processed yet, no error
    assert im["verified"].tolist() == [False] * 3 and res.corrected and res.conf_floor == 0.05
    d = res.detections
    assert list(d.columns[:2]) == ["image_id", "path"] and d["path"].tolist() == ["/s/a.jpg"] * 2  # z is no image of it
    assert d["detection_id"].tolist() == list(detection_ids(["a", "a"], "k1", ["mussel", "gaping"],
                                                            np.array([[1, 1, 6, 6], [10, 1, 15, 6]]), [0.9, 0.3]))
    assert res.classes.categories == ["live", "dead"] and view.load_results(store, "r1") is res  # cached
    assert view.load_counting(store, "r1") is res  # the whole results, held already

    gone = d["detection_id"].iat[1]
    write_corrections(store, [correction_row("delete", image_id="a", detection_id=gone, inference_key="k1"),
                              correction_row("verify", image_id="a", inference_key="k1", thresholds="0.5")])
    res = view.load_results(store, "r1")
    assert res.detections["detection_id"].tolist() == [d["detection_id"].iat[0]] and res.removed["detection_id"].tolist() == [gone]
    assert res.images["n_detections"].tolist()[0] == 1 and res.images["verified"].tolist() == [True, False, False]
    assert len(res.applied) == 2 and res.unapplied.empty and res.verified["image_id"].tolist() == ["a"]
    model = view.load_results(store, "r1", corrected=False)
    assert not model.corrected and model.detections["detection_id"].tolist() == d["detection_id"].tolist()
    assert model.detections["source"].eq("model").all() and model.images["verified"].tolist() == [True, False, False]
    assert model.removed.empty and model.applied.empty and model.verified["image_id"].tolist() == ["a"]
    assert view.load_counting(store, "r1") is view.load_results(store, "r1")  # corrections need the whole results
    one = view.load_results(store, "r1", image_ids=["a"])
    assert one.images["image_id"].tolist() == ["a"] and len(one.detections) == 1

    commit(store, "k1", "u3", images_part(["b"], n=[1]), detections_part([("b", 2, "shell", 0.7, 3.0)]))
    again = view.load_results(store, "r1")
    assert again.images["n_detections"].tolist()[:2] == [1, 1]  # a new part is read, corrections still applied
    assert again.detections["image_id"].tolist() == ["a", "b"] and again.detections["path"].tolist()[1] == "/s/b.jpg"


def test_hand_built_counting_tables_hold_three_detection_columns_without_corrections(tmp_path):
    from musseltools.results import view
    from musseltools.store.corrections_log import correction_row, write_corrections

    store, meta = _hb_store(tmp_path)
    images, dets = view.counting_tables(store, "r1")
    assert list(dets.columns) == ["image_id", "class_name", "confidence"] and dets["image_id"].tolist() == ["a", "a"]
    assert images["image_id"].tolist() == ["a", "b", "c"] and not images["verified"].any()
    lean = view.load_counting(store, "r1", meta)
    assert list(lean.detections.columns) == ["image_id", "class_name", "confidence"] and lean.corrected
    assert lean.conf_floor == 0.05 and list(lean.classes.names) == ["mussel", "gaping", "shell"]
    assert view.load_counting(store, "r1") is lean
    write_corrections(store, [correction_row("undo", image_id="a", target="x")])
    assert view.counting_tables(store, "r1") is None
    assert "detection_id" in view.load_counting(store, "r1").detections


def test_hand_built_results_signature_changes_with_parts_collection_and_corrections(tmp_path):
    from hand_built_store import commit, detections_part, images_part

    from musseltools.results import view
    from musseltools.store.corrections_log import correction_row, write_corrections

    store, meta = _hb_store(tmp_path)
    first = view.results_signature(store, "r1", meta)
    assert first == view.results_signature(store, "r1", meta) and len(first) == 16
    commit(store, "k1", "u3", images_part(["b"]), detections_part([]))
    second = view.results_signature(store, "r1", meta)
    store.write_collection("r1", pd.DataFrame({"image_id": ["a"], "path": ["/t/a.jpg"]}))
    third = view.results_signature(store, "r1", meta)
    write_corrections(store, [correction_row("undo", image_id="a", target="x")])
    fourth = view.results_signature(store, "r1", meta)
    none = view.results_signature(store, "r1", {**meta, "inference_key": "never-run"})
    assert len({first, second, third, fourth, none}) == 5


def test_hand_built_results_view_names_images_lost_to_a_quarantined_part(tmp_path, caplog):
    from musseltools.results import view

    store, meta = _hb_store(tmp_path)
    q = store.results_dir("k1") / "quarantine"
    q.mkdir()
    (q / "part-u9.parquet").write_bytes(b"damaged")
    with caplog.at_level("WARNING", logger=view.__name__):
        im = view.load_results(store, "r1").images
    assert im.loc[1, "error"] == (f"no stored result: it was in a damaged results part, moved to {str(q)!r} — run "
                                  "the same run again to process this image again")
    assert im.loc[2, "error"] == "unreadable" and pd.isna(im.loc[0, "error"])  # the scan's reason stays
    assert "images lost their results to damaged parts (quarantined in " + str(q) + "); run again" in caplog.text
    running, _ = _hb_store(tmp_path / "running", status="running")
    (running.results_dir("k1") / "quarantine").mkdir()
    (running.results_dir("k1") / "quarantine" / "x").write_bytes(b"")
    assert pd.isna(view.load_results(running, "r1").images.loc[1, "error"])  # a run still going: b is to come


def test_hand_built_classes_and_thresholds_of_a_run_come_from_its_metadata():
    from musseltools.results import view

    meta = {"threshold": 0.4, "settings": {"conf_floor": 0.1},
            "model": {"names": {"10": "k", "2": "b", "0": "a"}, "class_map": {"a": "live", "b": "dead", "k": "dead"}}}
    cm = view.class_map_of(meta)
    assert list(cm.names) == ["a", "b", "k"] and cm.categories == ["live", "dead"]  # by class id as a number
    assert view.class_map_of({"model": {"names": {"0": "a"}}}).categories == ["a"]
    assert view.thresholds_of(meta).to_json(cm) == 0.4
    assert view.thresholds_of({**meta, "saved_thresholds": {"a": 0.6}}).by_class(cm) == {"a": 0.6, "b": 0.4, "k": 0.4}
    assert view.thresholds_of({**meta, "saved_thresholds": {"a": 0.6}}, {"dead": 0.2}).by_class(cm) == {
        "a": 0.4, "b": 0.2, "k": 0.2}
    with pytest.raises(ValueError, match="below the confidence floor 0.1"):
        view.thresholds_of(meta, 0.05)


def test_hand_built_corrections_that_cannot_apply_are_said_once_per_run_and_new_ones_again(tmp_path, caplog, monkeypatch):
    from musseltools.results import view
    from musseltools.store.corrections_log import correction_row, write_corrections
    from musseltools.store.store import Store

    store, _ = _hb_store(tmp_path)
    other = "made on the results of other inference settings or another model (key OTHER): its detection does not exist in this run"
    write_corrections(store, [correction_row("reclassify", image_id="a", path="/s/a.jpg", detection_id="d1", inference_key="OTHER",
                                             class_name="dead", correction_id="u1")])

    def said():
        out = [r.getMessage() for r in caplog.records if r.name == view.__name__ and r.levelname == "WARNING"]
        caplog.clear()
        return out

    with caplog.at_level("DEBUG", logger=view.__name__):
        assert view.load_results(store, "r1").unapplied["correction_id"].tolist() == ["u1"]
        assert said() == [f"[run r1] 1 corrections of its images cannot be applied to this run, e.g. reclassify of "
                          f"/s/a.jpg: {other} — list them with `musseltools corrections report r1` "
                          "(run.corrections_report()); said once per run"]
        assert store.read_json_cache("unapplied-r1.json") == {"said": ["u1"]}
        view.load_results(store, "r1", image_ids=["a"])
        assert said() == []  # said once in this process
        (tmp_path / "mount").symlink_to(tmp_path / "store")
        view.load_results(Store(tmp_path / "mount"), "r1", image_ids=["a"])
        assert said() == []  # and the next command on the run (recorded in the store) does not say it again
        write_corrections(store, [correction_row("delete", image_id="a", path="/s/a.jpg", detection_id="d9", inference_key="k1",
                                                 correction_id="u2")])
        view.load_results(store, "r1", image_ids=["a"])
        assert said() == ["[run r1] 2 corrections of its images cannot be applied to this run (1 of them new), e.g. "
                          "delete of /s/a.jpg: no detection with this id in this run's results — list them with "
                          "`musseltools corrections report r1` (run.corrections_report()); said once per run"]
        assert store.read_json_cache("unapplied-r1.json") == {"said": ["u1", "u2"]}

        def refuse(name, data):
            raise PermissionError("read-only")

        write_corrections(store, [correction_row("delete", image_id="a", path="/s/a.jpg", detection_id="d8", inference_key="k1",
                                                 correction_id="u3")])
        monkeypatch.setattr(store, "write_json_cache", refuse)
        view.load_results(store, "r1", image_ids=["a"])  # a store it cannot write to: said, not recorded
        assert "[run r1] could not record the warning in the store (read-only)" in caplog.messages
        assert said()[0].startswith("[run r1] 3 corrections of its images cannot be applied to this run (1 of them new)")


def test_hand_built_count_index_is_computed_once_per_results_object(tmp_path):
    from musseltools.results import view

    store, _ = _hb_store(tmp_path)
    res = view.load_results(store, "r1")
    index = view.count_index(res)
    assert sorted(index) == ["gaping", "mussel"] and index["mussel"].tolist() == pytest.approx([0.9])
    assert view.count_index(res) is index
    fewer = view.RunResults(res.images, res.detections[:1], res.classes, res.conf_floor)
    assert list(view.count_index(fewer)) == ["mussel"] and view.count_index(res) is not index


def test_hand_built_results_signature_of_an_object_store_changes_with_its_parts(tmp_path):
    from hand_built_store import commit, detections_part, images_part, write_run

    from musseltools.results import view
    from musseltools.store.store import Store

    store = Store(f"memory://views-{uuid.uuid4().hex}/store")  # memory stores live as long as the process
    meta = write_run(store, "r1", "k1", pd.DataFrame({"image_id": ["a", "b"], "path": ["/s/a.jpg", "/s/b.jpg"]}))
    empty = view.results_signature(store, "r1", meta)
    commit(store, "k1", "u1", images_part(["a"], n=[1]), detections_part([("a", 0, "mussel", 0.9, 1.0)]))
    one = view.results_signature(store, "r1", meta)
    assert one == view.results_signature(store, "r1", meta)
    commit(store, "k1", "u2", images_part(["b"]), detections_part([]))
    two = view.results_signature(store, "r1", meta)
    assert len({empty, one, two}) == 3
    assert view.load_results(store, "r1").images["processed_at"].notna().tolist() == [True, True]
