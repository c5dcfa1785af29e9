"""Runs: resume, new images, thresholds, caching, errors, cancellation, equality with Ultralytics."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import IMGSZ, write_images

import musseltools as mt
from musseltools.models import YoloPredictor

KW = {"imgsz": IMGSZ, "quiet": True, "store": "store"}


def test_first_run_then_added_images_infers_only_new_ones(tmp_path, tiny_model):
    folder = tmp_path / "survey"
    write_images(folder, 50)
    r1 = mt.run(folder, model=tiny_model, commit_every=16, **KW)
    m1 = r1.meta
    assert m1["status"] == "completed"
    assert (m1["total_images"], m1["processed_count"], m1["failed_count"], m1["inferred_this_call"]) == (50, 50, 0, 50)

    write_images(folder, 10, seed=99, start=50)
    r2 = mt.run(folder, model=tiny_model, commit_every=16, **KW)
    m2 = r2.meta
    assert r2.run_id == r1.run_id  # the same question is the same run
    assert m2["inferred_this_call"] == 10
    assert (m2["total_images"], m2["processed_count"]) == (60, 60)
    per_image = r2.per_image()
    assert len(per_image) == 60
    assert m2["counts"] == {c: int(per_image[c].sum()) for c in ("live", "dead")}
    assert r2.totals == m2["counts"]

    r3 = mt.run(folder, model=tiny_model, **KW)
    assert r3.meta["inferred_this_call"] == 0


def test_new_threshold_never_reruns_the_model(images, tiny_model):
    r_hi = mt.run(images, model=tiny_model, threshold=0.5, **KW)
    r_lo = mt.run(images, model=tiny_model, threshold=0.2, **KW)
    assert r_lo.run_id != r_hi.run_id
    assert r_lo.meta["inferred_this_call"] == 0
    dets = r_lo.detections(threshold=0.2)
    assert (dets["confidence"] >= 0.2 - 1e-6).all()
    for t in (0.2, 0.35, 0.5, 0.9):
        expect = dets[dets["confidence"] >= t - 1e-9]["class_name"].value_counts().to_dict()
        got = r_lo.counts(t)
        assert got == {c: expect.get(c, 0) for c in ("live", "dead")}
    assert r_hi.totals == r_lo.counts(0.5)
    assert r_lo.totals["live"] + r_lo.totals["dead"] >= r_hi.totals["live"] + r_hi.totals["dead"]


def test_threshold_below_floor_is_a_clear_error(images, tiny_model):
    r = mt.run(images, model=tiny_model, conf_floor=0.05, **KW)
    with pytest.raises(mt.ThresholdError, match="below the confidence floor 0.05"):
        r.counts(0.01)
    with pytest.raises(mt.ThresholdError, match="below the confidence floor"):
        mt.run(images, model=tiny_model, threshold=0.01, conf_floor=0.05, **KW)


def test_results_are_shared_across_collections(tmp_path, images, tiny_model):
    mt.run(images, model=tiny_model, **KW)
    other = tmp_path / "other"
    other.mkdir()
    for p in sorted(images.glob("*.jpg"))[:3]:
        shutil.copy(p, other / ("copy-" + p.name))
    write_images(other, 1, seed=7, start=100)
    r = mt.run(other, model=tiny_model, **KW)
    assert r.meta["total_images"] == 4
    assert r.meta["inferred_this_call"] == 1


def test_empty_collection_completes_with_zero_images(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    r = mt.run(tmp_path / "empty", model=tiny_model, **KW)
    assert r.status == "completed"
    assert r.meta["total_images"] == 0
    assert r.totals == {"live": 0, "dead": 0}
    assert r.per_image().empty


def test_missing_folder_and_missing_weights_are_clear_errors(tmp_path, images, tiny_model):
    with pytest.raises(mt.CollectionError, match="does not exist"):
        mt.run(tmp_path / "nope", model=tiny_model, **KW)
    with pytest.raises(mt.ModelLoadError, match="missing.pt.*does not exist"):
        mt.run(images, model=tmp_path / "missing.pt", **KW)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(mt.ModelLoadError, match="cannot load weights file .*bad.pt"):
        mt.run(images, model=bad, **KW)


def test_corrupt_image_gets_an_error_and_is_retried(images, tiny_model):
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    r = mt.run(images, model=tiny_model, **KW)
    m = r.meta
    assert m["status"] == "completed"
    assert (m["total_images"], m["failed_count"], m["inferred_this_call"]) == (7, 1, 6)
    table = r.per_image()
    row = table[table["path"].str.endswith("broken.jpg")].iloc[0]
    assert "cannot decode" in row["error"]
    assert row["live"] == 0 and row["dead"] == 0
    # errored images are tried again on the next call; good ones are not
    (images / "broken.jpg").unlink()
    shutil.copy(images / "img0000.jpg", images / "broken.jpg")  # now a duplicate of a known image
    again = mt.run(images, model=tiny_model, **KW).meta
    assert again["inferred_this_call"] == 0 and again["failed_count"] == 0


def test_duplicate_files_are_one_image(images, tiny_model):
    shutil.copy(images / "img0001.jpg", images / "same-bytes.jpg")
    r = mt.run(images, model=tiny_model, **KW)
    assert r.meta["total_images"] == 6
    assert r.meta["inferred_this_call"] == 6
    assert r.per_image()["image_id"].is_unique


def test_image_changed_in_place_is_a_new_image(images, tiny_model):
    r = mt.run(images, model=tiny_model, **KW)
    before = r.per_image().set_index("path")
    target = images / "img0002.jpg"
    shutil.copy(images / "img0003.jpg", target)
    import cv2

    img = cv2.imread(str(target))
    cv2.imwrite(str(target), cv2.flip(img, 1))
    r2 = mt.run(images, model=tiny_model, **KW)
    assert r2.meta["inferred_this_call"] == 1
    after = r2.per_image().set_index("path")
    assert after.loc[str(target), "image_id"] != before.loc[str(target), "image_id"]
    assert len(after) == 6


def test_detections_match_ultralytics_predict(images, tiny_model):
    from ultralytics import YOLO

    shutil.copy(images / "img0000.jpg", images / "z.png")  # a PNG, same pixels, same image id? no: other bytes
    write_images(images, 2, seed=5, size=(200, 120), start=200)  # another shape
    r = mt.run(images, model=tiny_model, threshold=0.3, **KW)
    ours = r.detections(threshold=0.3)
    yolo = YOLO(str(tiny_model))
    for row in r.per_image().itertuples():
        res = yolo.predict(row.path, conf=0.3, imgsz=IMGSZ, verbose=False)[0]
        theirs = np.c_[res.boxes.xyxy.numpy(), res.boxes.cls.numpy()]
        mine = ours[ours["image_id"] == row.image_id]
        mine = mine[["x1", "y1", "x2", "y2", "class_id"]].to_numpy(float)
        assert len(mine) == len(theirs), row.path
        order_a = np.lexsort(np.round(theirs.T[::-1], 0))
        order_b = np.lexsort(np.round(mine.T[::-1], 0))
        np.testing.assert_allclose(mine[order_b][:, :4], theirs[order_a][:, :4], atol=1.0)
        np.testing.assert_array_equal(mine[order_b][:, 4], theirs[order_a][:, 4])


def test_results_do_not_depend_on_batch_size(tmp_path, images, tiny_model):
    write_images(images, 3, seed=8, size=(160, 90), start=300)
    a = mt.run(images, model=tiny_model, batch_size=1, store=tmp_path / "a", imgsz=IMGSZ, quiet=True)
    b = mt.run(images, model=tiny_model, batch_size=4, store=tmp_path / "b", imgsz=IMGSZ, quiet=True)
    cols = ["image_id", "class_id", "confidence", "x1", "y1", "x2", "y2"]
    da = a.detections(0.01)[cols].sort_values(cols).reset_index(drop=True)
    db = b.detections(0.01)[cols].sort_values(cols).reset_index(drop=True)
    assert len(da) == len(db)
    pd.testing.assert_frame_equal(da, db, atol=0.05, check_exact=False)  # float noise of batched convolutions only


def test_cap_hit_is_recorded(images, tiny_model):
    r = mt.run(images, model=tiny_model, max_det=3, **KW)
    table = r.per_image(threshold=0.01)
    assert table["cap_hit"].all()
    assert (table["n_detections"] == 3).all()


def test_a_completed_run_is_counted_from_its_units_without_reading_the_results_back(tmp_path, tiny_model,
                                                                                     monkeypatch):
    """The final state of a run comes from its units' summaries (memory flat in the collection's size) and
    equals a count from the store; with a failed image retried, it is counted from the store."""
    from musseltools.runs.run import Run

    folder = tmp_path / "survey"
    write_images(folder, 20)
    (folder / "broken.jpg").write_bytes(b"not an image")
    reads = []
    orig = Run.per_image
    monkeypatch.setattr(Run, "per_image", lambda self, *a, **k: reads.append(1) or orig(self, *a, **k))
    r = mt.run(folder, model=tiny_model, commit_every=4, max_det=5, **KW)
    assert reads == []  # nothing read back
    monkeypatch.setattr(Run, "per_image", orig)
    table = r.per_image()
    m = r.meta
    assert (m["processed_count"], m["failed_count"]) == (21, 1)
    assert m["counts"] == {c: int(table[c].sum()) for c in ("live", "dead")}
    assert m["cap_hit_images"] == sorted(table.loc[table["cap_hit"].fillna(False).astype(bool), "path"])
    assert m["cap_hit_images"]  # max_det 5: some images reach it
    # the broken image is tried again next time: then the store is counted (it would count twice)
    monkeypatch.setattr(Run, "per_image", lambda self, *a, **k: reads.append(1) or orig(self, *a, **k))
    again = mt.run(folder, model=tiny_model, commit_every=4, max_det=5, **KW)
    assert reads and (again.meta["processed_count"], again.meta["failed_count"]) == (21, 1)
    assert again.meta["counts"] == m["counts"]


def test_batch_size_is_measured_and_remembered(images, tiny_model, monkeypatch):
    monkeypatch.delenv("MUSSELTOOLS_BATCH_SIZE")
    calls = []
    orig = YoloPredictor.measure_batch_size

    def spy(self, sample, *a, **k):
        calls.append(1)
        return orig(self, sample, candidates=(1, 2), repeats=1)

    monkeypatch.setattr(YoloPredictor, "measure_batch_size", spy)
    r = mt.run(images, model=tiny_model, **KW)
    assert calls == [1]
    assert r.meta["batch_size"] in (1, 2)
    write_images(images, 1, seed=3, start=50)
    mt.run(images, model=tiny_model, **KW)
    assert calls == [1]  # the same device, model and shape: remembered in the store


def test_env_overrides_batch_and_commit_unit(images, tiny_model, monkeypatch):
    monkeypatch.setenv("MUSSELTOOLS_BATCH_SIZE", "3")
    monkeypatch.setenv("MUSSELTOOLS_COMMIT_EVERY", "2")
    r = mt.run(images, model=tiny_model, **KW)
    assert r.meta["batch_size"] == 3 and r.meta["commit_every"] == 2
    parts = list((r.store.results_dir(r.meta["inference_key"]) / "images").glob("part-*.parquet"))
    assert len(parts) == 3


def test_inference_crash_fails_the_run_and_keeps_committed_work(images, tiny_model, monkeypatch):
    orig = YoloPredictor.predict
    n = {"calls": 0}

    def flaky(self, batch):
        n["calls"] += 1
        if n["calls"] > 2:
            raise RuntimeError("CUDA error: device-side assert (simulated)")
        return orig(self, batch)

    monkeypatch.setattr(YoloPredictor, "predict", flaky)
    with pytest.raises(mt.InferenceError, match="simulated"):
        mt.run(images, model=tiny_model, commit_every=2, **KW)
    monkeypatch.setattr(YoloPredictor, "predict", orig)
    run = mt.list_runs(store="store").iloc[0]
    assert run["status"] == "failed"
    resumed = mt.run(images, model=tiny_model, commit_every=2, **KW)
    assert resumed.meta["inferred_this_call"] == 4  # the first unit (2 images) was kept
    assert resumed.status == "completed"


def test_keyboard_interrupt_cancels_and_resumes(images, tiny_model, monkeypatch):
    orig = YoloPredictor.predict
    n = {"calls": 0}

    def interrupted(self, batch):
        n["calls"] += 1
        if n["calls"] == 4:
            raise KeyboardInterrupt
        return orig(self, batch)

    monkeypatch.setattr(YoloPredictor, "predict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mt.run(images, model=tiny_model, commit_every=2, **KW)
    run_id = mt.list_runs(store="store").iloc[0]["run_id"]
    r = mt.open_run(run_id, store="store")
    assert r.status == "cancelled"
    # one unit of 2 committed, and the image inferred of the next unit kept as a part of its own
    assert r.meta["processed_count"] == 3 == int(r.per_image()["processed_at"].notna().sum())
    monkeypatch.setattr(YoloPredictor, "predict", orig)
    again = mt.run(images, model=tiny_model, commit_every=2, **KW)
    assert again.status == "completed" and again.meta["inferred_this_call"] == 3


def test_background_run_can_be_cancelled(tmp_path, tiny_model, monkeypatch):
    import threading

    folder = tmp_path / "many"
    write_images(folder, 12)
    orig = YoloPredictor.predict
    gate = threading.Event()

    def slow(self, batch):
        if gate.is_set():
            import time

            time.sleep(0.2)
        return orig(self, batch)

    monkeypatch.setattr(YoloPredictor, "predict", slow)
    gate.set()
    handle = mt.run(folder, model=tiny_model, commit_every=2, background=True, **KW)
    assert isinstance(handle, mt.RunHandle)
    import time

    deadline = time.time() + 30
    while handle.run.meta.get("processed_count", 0) < 2 and time.time() < deadline:
        time.sleep(0.05)
    handle.cancel()
    r = handle.wait(timeout=30)
    assert handle.done()
    assert r.status == "cancelled"
    kept = r.meta["processed_count"]
    assert 2 <= kept < 12
    gate.clear()
    done = mt.run(folder, model=tiny_model, commit_every=2, **KW)
    assert done.status == "completed" and done.meta["processed_count"] == 12
    assert done.meta["inferred_this_call"] == 12 - kept


def test_changed_weights_are_refused_for_an_existing_run(tmp_path, images, model_factory):
    weights = tmp_path / "model.pt"
    shutil.copy(model_factory("detect", 0), weights)
    mt.run(images, model=weights, **KW)
    shutil.copy(model_factory("detect", 1), weights)
    with pytest.raises(mt.ModelChangedError, match="changed since run"):
        mt.run(images, model=weights, **KW)


@pytest.mark.parametrize("task", ["segment", "obb"])
def test_segment_and_obb_models_give_polygons(images, model_factory, task):
    r = mt.run(images, model=model_factory(task), **KW)
    assert r.meta["model"]["task"] == task
    dets = r.detections(0.01)
    assert len(dets) > 0
    sizes = dets["polygon"].map(len)
    if task == "obb":
        assert (sizes == 4).all()
    else:
        assert (sizes >= 3).all() and (sizes > 4).any()  # mask outlines, not just box corners
    # every polygon lies within its box (1 px tolerance)
    for row in dets.head(50).itertuples():
        pts = np.asarray(row.polygon.tolist())
        assert pts[:, 0].min() >= row.x1 - 1 and pts[:, 0].max() <= row.x2 + 1
        assert pts[:, 1].min() >= row.y1 - 1 and pts[:, 1].max() <= row.y2 + 1


def test_class_map_groups_names_into_categories(images, tiny_model):
    r = mt.run(images, model=tiny_model, class_map={"live": "mussel", "dead": "mussel"}, **KW)
    assert r.categories == ["mussel"]
    plain = mt.run(images, model=tiny_model, **KW)
    assert r.totals == {"mussel": plain.totals["live"] + plain.totals["dead"]}
    with pytest.raises(mt.ModelLoadError, match="not classes"):
        mt.run(images, model=tiny_model, class_map={"zebra": "live"}, **KW)


def test_saved_thresholds_apply_to_counts(images, tiny_model):
    r = mt.run(images, model=tiny_model, **KW)
    r.save_thresholds({"live": 0.3, "dead": 0.8})
    assert r.thresholds == {"live": 0.3, "dead": 0.8}
    assert r.totals == {"live": r.counts(0.3)["live"], "dead": r.counts(0.8)["dead"]}


def test_rewrite_keeping_size_and_mtime_is_still_a_new_image(images, tiny_model):
    import os

    before = set(mt.run(images, model=tiny_model, **KW).per_image()["image_id"])
    target = images / "img0004.jpg"
    st = os.stat(target)
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF  # same size, other bytes, then the old modification time forced back
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = mt.run(images, model=tiny_model, **KW)
    assert again.meta["inferred_this_call"] == 1
    assert again.per_image()["error"].isna().all()
    assert len(set(again.per_image()["image_id"]) - before) == 1
