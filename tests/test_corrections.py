"""Hand corrections: stable detection ids, the four kinds seen by every view, undo, what survives,
corrections from other runs reported, the review queue, verified images as truth."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import IMGSZ, write_images

import musseltools as mt
from musseltools.errors import CorrectionError
from musseltools.store.corrections_log import corrections_dir, read_corrections

T = 0.1  # the tiny untrained model gives plenty of detections around it


def _run(folder, model, store, **kw):
    return mt.run(folder, model=model, imgsz=IMGSZ, store=store, quiet=True, threshold=T, batch_size=1, **kw)


@pytest.fixture
def survey(tmp_path, tiny_model):
    folder = tmp_path / "images"
    write_images(folder, 5, seed=21)
    return folder, _run(folder, tiny_model, tmp_path / "store")


def _pick(run):
    """A live and a dead detection (at the run's threshold) of one image, and that image."""
    d = run.detections()
    for _, g in d.groupby("path"):
        if (g["class_name"] == "live").sum() >= 2 and (g["class_name"] == "dead").any():
            live = g[g["class_name"] == "live"]
            return live.iloc[0], live.iloc[1], g[g["class_name"] == "dead"].iloc[0]
    pytest.fail("the tiny model gave no image with two live and one dead detection")


def test_detection_ids_are_stable_across_stores_paths_and_follow_the_documented_formula(tmp_path, tiny_model, survey):
    folder, run = survey
    copy = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(folder, copy)
    other = _run(copy, tiny_model, tmp_path / "store2")
    a = run.detections(0.01).sort_values("detection_id")
    b = other.detections(0.01).sort_values("detection_id")
    assert a["detection_id"].tolist() == b["detection_id"].tolist()  # same images, another store and folder
    assert a["detection_id"].is_unique and len(a) > 20
    row = a[~a["detection_id"].str.contains("-")].iloc[0]
    box = [int(np.rint(np.float64(row[c]))) for c in ("x1", "y1", "x2", "y2")]
    text = f"{row['image_id']}|{run.meta['inference_key']}|{row['class_name']}|{box[0]}|{box[1]}|{box[2]}|{box[3]}"
    assert row["detection_id"] == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert set(a["source"]) == {"model"}


def test_each_kind_changes_every_view_and_the_model_alone_stays(survey, tmp_path):
    _folder, run = survey
    before = run.counts()
    model_cube = run.cube()
    live, live2, dead = _pick(run)
    run.reclassify(live.detection_id, "dead", note="gaping")
    run.delete_detection(dead.detection_id)
    run.add_detection(live.path, (2, 3, 40, 30), "live", note="missed under weed")
    after = run.counts()
    assert after == {"live": before["live"] - 1 + 1, "dead": before["dead"] + 1 - 1}
    assert run.counts(corrected=False) == before
    assert run.totals == after and run.corrections_applied == 3
    table = run.per_image().set_index("path")
    model_table = run.per_image(corrected=False).set_index("path")
    assert table.loc[live.path, "dead"] == model_table.loc[live.path, "dead"]  # +1 reclassified, -1 deleted
    dets = run.detections().set_index("detection_id")
    assert dets.loc[live.detection_id, "class_name"] == "dead"
    assert dets.loc[live.detection_id, "source"] == "reclassified"
    assert dets.loc[live.detection_id, "confidence"] == pytest.approx(live.confidence)  # keeps its confidence
    assert dead.detection_id not in dets.index
    added = dets[dets["source"] == "added"]
    assert len(added) == 1 and added["confidence"].iloc[0] == 1.0 and added.index[0].startswith("add-")
    # an added box counts at every threshold, a deleted one at none, a reclassified one follows its confidence
    at_99 = run.counts(0.99)
    model_99 = run.counts(0.99, corrected=False)
    moved = int(live.confidence >= 0.99 - 1e-9)
    assert at_99 == {"live": model_99["live"] + 1 - moved,
                     "dead": model_99["dead"] + moved - int(dead.confidence >= 0.99 - 1e-9)}
    cube = run.cube()
    assert cube.attrs["corrections_applied"] == 3
    assert int(cube["count"].sel(threshold=T).sel(**{"class": "live"}).sum()) == after["live"]
    assert int(cube["count"].sel(threshold=0.99).sel(**{"class": "live"}).sum()) == at_99["live"]
    assert int(run.cube(corrected=False)["count"].sel(threshold=T).sum()) == int(
        model_cube["count"].sel(threshold=T).sum())
    files = run.export_polygons(tmp_path / "polys")
    docs = [json.loads(f.read_text()) for f in files]
    assert sum(d["live_count"] for d in docs) == after["live"] and sum(d["dead_count"] for d in docs) == after["dead"]
    plain = [json.loads(f.read_text()) for f in run.export_polygons(tmp_path / "polys-model", corrected=False)]
    assert sum(d["live_count"] for d in plain) == before["live"]
    # the model's results are never changed
    assert run.results(corrected=False).detections.shape[0] == run.detections(0.01, corrected=False).shape[0]


def test_polygon_export_shows_each_correction_in_its_own_image(survey, tmp_path):
    """A reclassify, a delete and an add, each in another image: each image's JSON changes by its own
    correction only (in one image they could cancel out in the counts)."""
    _folder, run = survey
    d = run.detections()
    paths = sorted(d["path"].unique())
    assert len(paths) >= 3
    live = d[(d["path"] == paths[0]) & (d["class_name"] == "live")].iloc[0]
    dead = d[(d["path"] == paths[1]) & (d["class_name"] == "dead")].iloc[0]
    run.reclassify(live.detection_id, "dead")
    run.delete_detection(dead.detection_id)
    run.add_detection(paths[2], (2, 3, 40, 30), "live")

    def export(name, **kw):
        return {json.loads(f.read_text())["image"]: json.loads(f.read_text())
                for f in run.export_polygons(tmp_path / name, **kw)}

    model, corrected = export("model", corrected=False), export("corrected")
    assert model.keys() == corrected.keys() and len(model) == 5
    change = {paths[0]: (-1, 1), paths[1]: (0, -1), paths[2]: (1, 0)}
    for path, doc in corrected.items():
        dl, dd = change.get(path, (0, 0))
        assert (doc["live_count"], doc["dead_count"]) == (model[path]["live_count"] + dl,
                                                          model[path]["dead_count"] + dd), path
        assert len(doc["polygons"]) == len(model[path]["polygons"]) + dl + dd, path
        if path not in change:
            assert doc == model[path]

    def classes_at(doc, confidence):
        return sorted(p["class"] for p in doc["polygons"] if p["confidence"] == round(float(confidence), 5))

    before, after = classes_at(model[paths[0]], live.confidence), classes_at(corrected[paths[0]], live.confidence)
    assert (after.count("live"), after.count("dead")) == (before.count("live") - 1, before.count("dead") + 1)
    added = [p for p in corrected[paths[2]]["polygons"] if p not in model[paths[2]]["polygons"]]
    assert len(added) == 1 and added[0]["class"] == "live" and added[0]["confidence"] == 1.0
    xs, ys = zip(*added[0]["coords"])
    assert (min(xs), min(ys), max(xs), max(ys)) == (2, 3, 40, 30)


def test_corrections_are_append_only_files_with_author_note_and_utc_time(survey):
    _folder, run = survey
    live, _, _ = _pick(run)
    run.reclassify(live.detection_id, "dead", note="gaping", author="ana")
    run.delete_detection(live.detection_id)
    files = sorted(corrections_dir(run.store).glob("corr-*.parquet"))
    assert len(files) == 2  # one file per save
    rows = pd.read_parquet(files[0])  # readable with ordinary tools
    assert rows.loc[0, ["kind", "detection_id", "class_name", "note", "author"]].tolist() == [
        "reclassify", live.detection_id, "dead", "gaping", "ana"]
    assert str(rows["created_at"].dt.tz) == "UTC"
    assert read_corrections(run.store).iloc[1]["author"]  # the OS user by default


def test_undo_is_a_later_correction_and_can_itself_be_undone(survey):
    _folder, run = survey
    before = run.counts()
    _, _, dead = _pick(run)
    cid = run.delete_detection(dead.detection_id)
    assert run.counts()["dead"] == before["dead"] - 1
    undo = run.undo(cid)
    assert run.counts() == before
    run.undo(undo)
    assert run.counts()["dead"] == before["dead"] - 1
    assert [k for k in run.corrections()["kind"]] == ["delete", "undo", "undo"]
    assert len(run.corrections(active=True)) == 1


def test_a_category_of_the_class_map_is_a_valid_class(tmp_path, tiny_model):
    folder = tmp_path / "images"
    write_images(folder, 3, seed=5)
    run = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "s", quiet=True, threshold=T,
                 class_map={"live": "mussel", "dead": "shell"})
    d = run.detections()
    det = d[d["class_name"] == "live"].iloc[0]
    before = run.counts()
    run.reclassify(det.detection_id, "shell")
    assert run.counts() == {"mussel": before["mussel"] - 1, "shell": before["shell"] + 1}
    out = run.detections().set_index("detection_id")
    assert out.loc[det.detection_id, "category"] == "shell"


def test_bad_corrections_save_nothing_and_say_why(survey):
    _folder, run = survey
    live, _, _ = _pick(run)
    with pytest.raises(CorrectionError) as err:
        run.correct([
            {"kind": "reclassify", "detection_id": live.detection_id, "class": "dead"},  # fine
            {"kind": "reclassify", "detection_id": "0000000000000000", "class": "dead"},
            {"kind": "add", "image": live.path, "box": [10, 10, 5, 20], "class": "live"},
            {"kind": "add", "image": "nowhere.jpg", "box": [1, 1, 5, 5], "class": "live"},
            {"kind": "reclassify", "detection_id": live.detection_id, "class": "crab"},
            {"kind": "paint"},
        ])
    text = str(err.value)
    assert "5 of 6 corrections" in text and "nothing was saved" in text
    for piece in ("correction 2", "correction 3", "not a box", "nowhere.jpg", "'crab'", "'paint'"):
        assert piece in text
    assert read_corrections(run.store).empty


def test_corrections_survive_resume_new_thresholds_added_images_and_compaction(survey, tiny_model):
    folder, run = survey
    live, _, dead = _pick(run)
    run.reclassify(live.detection_id, "dead")
    run.delete_detection(dead.detection_id)
    run.add_detection(live.path, (2, 3, 40, 30), "live")
    corrected, model = run.counts(), run.counts(corrected=False)
    # a resume of the same run: nothing to infer, the same corrected counts
    again = _run(folder, tiny_model, run.store.root)
    assert again.run_id == run.run_id and again.meta["inferred_this_call"] == 0
    assert again.counts() == corrected
    # new thresholds saved on the run
    run.save_thresholds(0.3)
    expect = run.counts(corrected=False)
    expect["live"] += 1  # the added box counts at any threshold
    if live.confidence >= 0.3:
        expect = {"live": expect["live"] - 1, "dead": expect["dead"] + 1}
    if dead.confidence >= 0.3:
        expect["dead"] -= 1
    assert run.counts() == expect and run.meta["counts"] == expect  # run.json holds the corrected counts
    run.save_thresholds(T)
    # images added to the collection: inferred, and the old corrections still apply
    write_images(folder, 2, seed=99, start=50)
    grown = _run(folder, tiny_model, run.store.root)
    assert grown.run_id == run.run_id and grown.meta["inferred_this_call"] == 2
    new_model = grown.counts(corrected=False)
    assert grown.counts() == {c: corrected[c] + new_model[c] - model[c] for c in corrected}
    # the results parts compacted into one by `musseltools compact`: ids and corrections unchanged
    from musseltools import cli

    key = run.meta["inference_key"]
    shown = grown.detections().sort_values("detection_id").reset_index(drop=True)
    assert set(shown["source"]) == {"model", "reclassified", "added"}  # each kind of correction applies
    assert dead.detection_id not in set(shown["detection_id"])  # the deleted one
    assert len(run.store.part_files(key)) > 1
    assert cli.main(["compact", run.run_id, "--store", str(run.store.root)]) == 0
    assert len(run.store.part_files(key)) == 1
    fresh = mt.open_run(run.run_id, store=run.store.root)
    pd.testing.assert_frame_equal(fresh.detections().sort_values("detection_id").reset_index(drop=True), shown)
    assert fresh.counts() == grown.counts() and fresh.counts(corrected=False) == grown.counts(corrected=False)
    # the corrections files compacted too: nothing lost, nothing doubled
    from musseltools.store.corrections_log import compact_corrections

    compact_corrections(fresh.store)
    assert len(list(corrections_dir(fresh.store).glob("corr-*.parquet"))) == 1
    assert mt.open_run(run.run_id, store=run.store.root).counts() == grown.counts()


def test_added_boxes_follow_the_image_and_other_runs_report_what_does_not_apply(survey, tmp_path, model_factory,
                                                                                caplog):
    folder, run = survey
    live, _, dead = _pick(run)
    run.reclassify(live.detection_id, "dead")
    run.delete_detection(dead.detection_id)
    run.add_detection(live.path, (2, 3, 40, 30), "live")
    run.verify(live.path)
    # the same images with another model, in the same store
    with caplog.at_level(logging.WARNING, logger="musseltools.results.view"):
        other = mt.run(folder, model=model_factory("detect", 1), imgsz=IMGSZ, store=run.store.root, quiet=True,
                       threshold=T, batch_size=1)
        assert other.run_id != run.run_id
        added = other.detections()
    assert (added["source"] == "added").sum() == 1  # facts about the image apply in any run containing it
    report = other.corrections_report()
    assert sorted(report["kind"]) == ["delete", "reclassify", "verify"]
    assert report["reason"].str.contains("another model").all()
    assert "cannot be applied" in caplog.text
    assert run.corrections_report().empty
    assert other.counts()["live"] == other.counts(corrected=False)["live"] + 1


def test_a_sigkill_during_a_save_keeps_all_or_nothing(survey, tmp_path):
    _folder, run = survey
    live, live2, _ = _pick(run)
    run.reclassify(live.detection_id, "dead")
    kept = run.counts()
    csv = tmp_path / "more.csv"
    csv.write_text(f"image,detection_id,action,class,x1,y1,x2,y2,note\n,{live2.detection_id},delete,,,,,,\n"
                   f"{live.path},,add,live,1,1,20,20,\n")
    env = dict(os.environ, MUSSELTOOLS_FAILPOINTS="correction-written")
    proc = subprocess.run([sys.executable, "-m", "musseltools", "corrections", "import", run.run_id, str(csv),
                           "--store", str(run.store.root)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr  # killed between writing the file and renaming it
    folder = corrections_dir(run.store)
    assert [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # the dead writer's temporary is there
    fresh = mt.open_run(run.run_id, store=run.store.root)
    assert fresh.counts() == kept and len(fresh.corrections()) == 1  # the old corrections, none of the new
    fresh.delete_detection(live2.detection_id)  # the next save works, and removes the temporary
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert len(fresh.corrections()) == 2


def test_review_queue_ranks_the_least_certain_images_first(survey, tmp_path, model_factory):
    folder, run = survey
    queue = run.review_queue(n=None)
    dets = run.detections(0.01)
    near = dets[(dets["confidence"] - T).abs() <= 0.05].groupby("image_id").size()
    swing = dets[(dets["confidence"] >= T - 0.05 - 1e-9) & (dets["confidence"] < T + 0.05 - 1e-9)]
    swing = swing.groupby("image_id").size()
    got = queue.set_index("image_id")
    assert (got["count_swing"] == got.index.map(swing).fillna(0)).all()
    assert (got["near_threshold"] == got.index.map(near).fillna(0)).all()
    assert queue["score"].is_monotonic_decreasing and len(queue) == 5
    first = queue.iloc[0]
    run.verify(first["path"])
    assert first["image_id"] not in set(run.review_queue(n=None)["image_id"])  # checked: out of the queue
    assert len(run.review_queue(n=2)) == 2
    other = mt.run(folder, model=model_factory("detect", 1), imgsz=IMGSZ, store=run.store.root, quiet=True,
                   threshold=T, batch_size=1)
    both = run.review_queue(n=None, other=other).set_index("image_id")
    mine, theirs = run.per_image().set_index("image_id"), other.per_image().set_index("image_id")
    diff = (mine["live"] - theirs["live"]).abs() + (mine["dead"] - theirs["dead"]).abs()
    assert (both["disagreement"] == diff.reindex(both.index)).all()
    assert (both["score"] == both["count_swing"] + both["disagreement"]).all()


def test_verified_images_become_truth_for_evaluate_and_calibration(survey, capsys):
    _folder, run = survey
    with pytest.raises(mt.MusselToolsError, match="no image of run .* is marked verified"):
        mt.evaluate(run, "verified")
    live, _, dead = _pick(run)
    run.reclassify(live.detection_id, "dead")
    run.delete_detection(dead.detection_id)
    run.add_detection(live.path, (2, 3, 40, 30), "live")
    run.verify(live.path)
    ev = mt.evaluate(run, "verified")
    assert ev.images_evaluated == 1
    m = ev.metrics.set_index("class")
    model = run.per_image(corrected=False).set_index("path").loc[live.path]
    # the truth of the checked image: the model's boxes at the threshold, one live made dead, one dead
    # deleted, one live added; the model alone is scored against it
    truth = ev.true_counts.loc[live.image_id]
    assert truth.to_dict() == {"live": model["live"] - 1 + 1, "dead": model["dead"] + 1 - 1}
    for c in ("live", "dead"):
        assert m.loc[c, "tp"] + m.loc[c, "fn"] == truth[c]
    assert m.loc["live", "fn"] >= 1  # the added box: a miss of the model
    assert m.loc["live", "precision"] < 1  # the reclassified box: a live the model should not have said
    assert set(ev.calibration["class"]) == {"live", "dead"}
    corrected = mt.evaluate(run, "verified", corrected=True).metrics.set_index("class")
    for c in ("live", "dead"):  # the corrected detections are the truth
        assert corrected.loc[c, "fp"] == 0 and corrected.loc[c, "fn"] == 0
    # a later threshold change does not change the truth of an image verified before it
    run.save_thresholds(0.5)
    assert mt.evaluate(run, "verified", threshold=T).metrics.set_index("class").loc["live", "tp"] == m.loc["live", "tp"]
    from musseltools.jupyter.widgets import ThresholdTuner

    tuner = ThresholdTuner(run, truth="verified")  # calibration by eye against the checked images
    assert tuner.metrics["live"]["recall"] == pytest.approx(
        mt.evaluate(run, "verified", threshold=0.5).metrics.set_index("class").loc["live", "recall"], nan_ok=True)
    assert tuner.survey_counts == run.counts(0.5)  # the tuner's counts are corrected too
    from musseltools import cli

    assert cli.main(["evaluate", run.run_id, "verified", "--store", str(run.store.root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images_evaluated"] == 1


# ------------------------------------------------------------------------------------------------------
# Corrections applied to hand-built tables (no model): what apply_corrections decides, row by row. These
# are the tests that judge results/corrected.py in mutation testing (`-k hand_built`, docs/testing.md).
def _hb_classes():
    from musseltools.core.thresholds import ClassMap

    return ClassMap(["mussel", "gaping", "shell"], {"mussel": "live", "gaping": "dead", "shell": "dead"})


def _hb_tables(processed=True):
    images = pd.DataFrame({"image_id": ["a", "b", "c"], "path": ["a.jpg", "b.jpg", "c.jpg"],
                           "n_detections": np.array([3, 1, 0], "int64")})
    if processed:
        images["processed_at"] = pd.to_datetime(["2026-01-01", "2026-01-01", None], utc=True)
    dets = pd.DataFrame({
        "image_id": ["a", "a", "a", "b"], "path": ["a.jpg", "a.jpg", "a.jpg", "b.jpg"],
        "class_id": np.array([0, 1, 0, 0], np.int16), "class_name": ["mussel", "gaping", "mussel", "mussel"],
        "confidence": np.array([0.9, 0.8, 0.7, 0.6], np.float32),
        **{c: np.array([0, 10, 20, 0], np.float32) + d for c, d in (("x1", 0), ("y1", 0), ("x2", 5), ("y2", 5))},
        "polygon": [None] * 4, "detection_id": ["d1", "d2", "d3", "d4"]})
    return images, dets


def _hb_corr(*rows):
    from musseltools.store.corrections_log import correction_row

    t0 = pd.Timestamp("2026-02-01", tz="UTC")
    return pd.DataFrame([correction_row(kind, correction_id=f"c{i}", created_at=t0 + pd.Timedelta(minutes=i),
                                        author="me", **kw) for i, (kind, kw) in enumerate(rows)])


def _hb_apply(corr, processed=True):
    from musseltools.results.corrected import apply_corrections

    images, dets = _hb_tables(processed)
    return apply_corrections(images, dets, corr, inference_key="K", classes=_hb_classes())


def test_hand_built_each_kind_changes_the_tables_as_documented():
    out = _hb_apply(_hb_corr(
        ("reclassify", dict(image_id="a", detection_id="d1", inference_key="K", class_name="dead")),
        ("delete", dict(image_id="a", detection_id="d2", inference_key="K")),
        ("add", dict(image_id="b", class_name="shell", box=(1, 2, 3, 4))),
        ("add", dict(image_id="c", class_name="live", box=(0, 0, 9, 9), polygon=[[0, 0], [9, 0], [9, 9]])),
        ("verify", dict(image_id="a", inference_key="K", thresholds="0.5")),
        ("reclassify", dict(image_id="z", detection_id="dz", inference_key="K", class_name="dead")),
    ))
    d = out.detections.set_index("detection_id")
    assert list(d.index) == ["d1", "d3", "d4", "add-c2", "add-c3"]
    assert d.loc["d1", ["class_name", "class_id", "source"]].tolist() == ["gaping", 1, "reclassified"]
    assert d["class_id"].dtype == np.int16
    assert d.loc[["d3", "d4"], "source"].tolist() == ["model", "model"]
    assert out.removed["detection_id"].tolist() == ["d2"]
    added = d.loc["add-c2"]
    assert (added["image_id"], added["path"], added["class_name"], added["class_id"]) == ("b", "b.jpg", "shell", 2)
    assert added["confidence"] == 1.0 and d["confidence"].dtype == np.float32
    assert [added[c] for c in ("x1", "y1", "x2", "y2")] == [1, 2, 3, 4] and added["source"] == "added"
    assert np.asarray(added["polygon"]).tolist() == [[1, 2], [3, 2], [3, 4], [1, 4]]  # the box when no polygon
    assert np.asarray(d.loc["add-c3", "polygon"]).tolist() == [[0, 0], [9, 0], [9, 9]]
    assert d.loc["add-c3", "class_name"] == "mussel"  # a category means its first class
    assert out.images["n_detections"].tolist() == [2, 2, 0]  # c, never processed, keeps its stored count
    assert out.images["verified"].tolist() == [True, False, False]
    assert out.verified.to_dict("records") == [
        {"image_id": "a", "thresholds": "0.5", "author": "me", "created_at": pd.Timestamp("2026-02-01 00:04", tz="UTC")}]
    assert out.applied["correction_id"].tolist() == ["c0", "c1", "c2", "c3", "c4"]  # in time order, z left out
    assert out.unapplied.empty and "reason" in out.unapplied.columns


def test_hand_built_corrections_that_cannot_apply_are_reported_with_their_reason():
    out = _hb_apply(_hb_corr(
        ("reclassify", dict(image_id="a", detection_id="d1", inference_key="OTHER", class_name="dead")),
        ("delete", dict(image_id="a", detection_id="d4", inference_key="K")),  # d4 is an image b detection
        ("reclassify", dict(image_id="a", detection_id="d2", inference_key="K", class_name="crab")),
        ("add", dict(image_id="b", class_name="crab", box=(1, 2, 3, 4))),
        ("verify", dict(image_id="b", inference_key="OTHER")),
    ))
    reasons = out.unapplied.set_index("correction_id")["reason"].to_dict()
    assert reasons == {
        "c3": "class 'crab' is neither a class of this run's model ['mussel', 'gaping', 'shell'] nor a category "
              "['live', 'dead']",
        "c0": "made on the results of other inference settings or another model (key OTHER): its detection does "
              "not exist in this run",
        "c1": "no detection with this id in this run's results",
        "c2": "the class is neither a class nor a category of this run's model",
        "c4": "marked verified on the results of other inference settings or another model: not a check of this "
              "run's detections",
    }
    assert list(out.unapplied.columns) == ["correction_id", "kind", "image_id", "path", "detection_id",
                                           "inference_key", "class_name", "created_at", "reason"]
    assert out.applied.empty and out.removed.empty and out.verified.empty
    assert out.detections["source"].eq("model").all() and out.detections["class_name"].tolist() == [
        "mussel", "gaping", "mussel", "mussel"]
    assert out.images["n_detections"].tolist() == [3, 1, 0] and not out.images["verified"].any()


def test_hand_built_the_last_correction_wins_and_undo_cancels_its_target():
    out = _hb_apply(_hb_corr(
        ("reclassify", dict(image_id="a", detection_id="d1", inference_key="K", class_name="shell")),
        ("reclassify", dict(image_id="a", detection_id="d1", inference_key="K", class_name="gaping")),
        ("reclassify", dict(image_id="a", detection_id="d3", inference_key="K", class_name="mussel")),  # no change
        ("add", dict(image_id="a", class_name="live", box=(0, 0, 1, 1))),
        ("reclassify", dict(image_id="a", detection_id="add-c3", inference_key="K", class_name="dead")),
        ("verify", dict(image_id="b", inference_key="K")),
        ("unverify", dict(image_id="b", inference_key="K")),
        ("delete", dict(image_id="b", detection_id="d4", inference_key="K")),
        ("undo", dict(image_id="b", target="c7")),
        ("undo", dict(image_id="b", target="c8")),  # undoes the undo: d4 is deleted again
    ), processed=False)
    d = out.detections.set_index("detection_id")
    assert d.loc["d1", "class_name"] == "gaping" and d.loc["d3", "source"] == "model"
    assert d.loc["add-c3", ["class_name", "source"]].tolist() == ["gaping", "added"]
    assert out.removed["detection_id"].tolist() == ["d4"]
    assert not out.images["verified"].any() and out.verified.empty
    assert out.images["n_detections"].tolist() == [4, 0, 0]  # no processed_at column: every image recounted
    assert "c8" not in set(out.applied["correction_id"]) and "c9" not in set(out.applied["correction_id"])


def test_hand_built_no_correction_leaves_the_model_results_and_counts():
    images, dets = _hb_tables()
    images["processed_at"] = pd.Timestamp("2026-01-01", tz="UTC")
    images.loc[2, "n_detections"] = 7  # a count the store holds: not recounted without corrections
    from musseltools.results.corrected import apply_corrections

    none = _hb_corr(("delete", dict(image_id="a", detection_id="d1", inference_key="K")))[:0]  # as read
    out = apply_corrections(images, dets, none, inference_key="K", classes=_hb_classes())
    assert out.images["n_detections"].tolist() == [3, 1, 7]
    assert out.detections.drop(columns="source").equals(dets) and out.unapplied.empty
    assert list(out.unapplied.columns) == ["correction_id", "kind", "image_id", "path", "detection_id",
                                           "inference_key", "class_name", "created_at", "reason"]


def test_hand_built_class_names_and_categories_resolve_to_model_classes():
    from musseltools.core.thresholds import ClassMap
    from musseltools.results.corrected import next_category_class, resolve_class

    cm = _hb_classes()
    assert [resolve_class(n, cm) for n in ("gaping", "dead", "live", "crab", None, float("nan"))] == [
        "gaping", "gaping", "mussel", None, None, None]
    assert next_category_class("mussel", cm) == "gaping" and next_category_class("shell", cm) == "mussel"
    three = ClassMap(["a", "b", "c"])
    assert [next_category_class(n, three) for n in "abc"] == ["b", "c", "a"]


# The corrections log on its own (no model): what is saved, read back in which order, merged, cancelled.
def test_hand_built_log_reads_back_every_correction_once_oldest_first(tmp_path):
    from musseltools.store.corrections_log import (
        NO_CORRECTIONS,
        compact_corrections,
        correction_row,
        corrections_signature,
        write_corrections,
    )
    from musseltools.store.store import Store

    store = Store(tmp_path / "s")
    assert corrections_signature(store) == NO_CORRECTIONS and compact_corrections(store) is None
    assert read_corrections(store).empty and list(read_corrections(store).columns)[:3] == [
        "correction_id", "kind", "image_id"]
    t = pd.Timestamp("2026-03-01 12:00", tz="Europe/Paris")
    first = write_corrections(store, [correction_row("delete", image_id="a", detection_id="d", correction_id="x2",
                                                     created_at=t, author="ann", note="")])
    sig = corrections_signature(store)
    assert sig != NO_CORRECTIONS and len(sig) == 16
    write_corrections(store, pd.DataFrame([
        correction_row("add", image_id="b", class_name="live", box=(1, 2, 3, 4), polygon=[(1, 2), (3, 2), (3, 4)],
                       correction_id="x1", created_at=t - pd.Timedelta(hours=1), author="bob"),
        correction_row("verify", image_id="b", correction_id="x3", created_at=t, author="bob")]))
    assert corrections_signature(store) not in (sig, NO_CORRECTIONS)
    got = read_corrections(store)
    assert got["correction_id"].tolist() == ["x1", "x2", "x3"]  # by time, then by save, then by row
    assert got.loc[0, ["x1", "y1", "x2", "y2"]].tolist() == [1, 2, 3, 4]
    assert np.asarray(got.loc[0, "polygon"].tolist()).tolist() == [[1, 2], [3, 2], [3, 4]]
    assert got.loc[1, "created_at"] == pd.Timestamp("2026-03-01 11:00", tz="UTC") and pd.isna(got.loc[1, "note"])
    merged = compact_corrections(store)
    assert merged is not None and merged != first and sorted(corrections_dir(store).iterdir()) == [merged]
    assert read_corrections(store).equals(got) and compact_corrections(store) == merged
    pq.write_table(pq.read_table(merged), corrections_dir(store) / "corr-0-copy.parquet")  # as mid-compaction
    assert read_corrections(store)["correction_id"].tolist() == ["x1", "x2", "x3"]


def test_hand_built_undo_cancels_its_target_and_an_undo_of_the_undo_restores_it():
    from musseltools.store.corrections_log import active_corrections, member

    corr = _hb_corr(("delete", dict(image_id="a", detection_id="d1")), ("delete", dict(image_id="a", detection_id="d2")),
                    ("undo", dict(image_id="a", target="c0")), ("undo", dict(image_id="a", target="c1")),
                    ("undo", dict(image_id="a", target="c3")), ("undo", dict(image_id="a")))
    assert active_corrections(corr)["correction_id"].tolist() == ["c1"]
    assert active_corrections(corr.iloc[:3])["correction_id"].tolist() == ["c1"]
    assert active_corrections(corr.iloc[:0]).empty
    vals = pd.Series(["a", None, "b", "c"])
    assert member(vals, {"a", "c", 3}).tolist() == [True, False, False, True]
    assert member(vals, ["b"]).tolist() == [False, False, True, False]
    assert member(vals, set()).tolist() == [False] * 4 and member(vals[:0], {"a"}).tolist() == []


def test_hand_built_corrected_detections_keep_the_columns_and_dtypes_of_the_run():
    from musseltools.results.corrected import apply_corrections

    images, dets = _hb_tables()
    dets = dets.drop(columns="polygon")  # a table without outlines (e.g. an old detect run's)
    out = apply_corrections(images, dets, _hb_corr(("add", dict(image_id="b", class_name="dead", box=(1, 2, 3, 4)))),
                            inference_key="K", classes=_hb_classes())
    assert list(out.detections.columns) == list(dets.columns) + ["source"]
    assert out.detections.dtypes.drop("source").equals(dets.dtypes)  # float32 boxes stay float32, int16 ids
    assert out.removed.empty and list(out.removed.columns) == list(out.detections.columns)
    assert out.detections["detection_id"].tolist() == ["d1", "d2", "d3", "d4", "add-c0"]


def test_hand_built_log_names_a_damaged_file_reads_new_saves_and_records_who_and_when(tmp_path, monkeypatch, caplog):
    from musseltools.errors import CorruptStoreError
    from musseltools.store import corrections_log as cl
    from musseltools.store.store import Store

    store = Store(tmp_path / "s")
    assert cl.corrections_dir(store) == store.root / "corrections"  # STORE/corrections, as documented
    row = cl.correction_row("delete", image_id="a", detection_id="d", created_at=pd.Timestamp("2026-01-01 10:00"))
    assert row["created_at"] == pd.Timestamp("2026-01-01 10:00", tz="UTC")  # a time without zone is UTC
    assert len(row["correction_id"]) == 16 and row["correction_id"] != cl.correction_row("undo", image_id="a")[
        "correction_id"]
    with caplog.at_level(logging.INFO, logger=cl.__name__):
        path = cl.write_corrections(store, [row])
    assert f"saved 1 corrections to {path.name}" in caplog.messages
    assert len(cl.read_corrections(store)) == 1
    cl.write_corrections(store, [cl.correction_row("undo", image_id="a", target=row["correction_id"])])
    assert len(cl.read_corrections(store)) == 2  # a new save is read, not the last read again
    vals = pd.Series(["a", np.nan, None], dtype=object)
    assert cl.member(vals, {"a"}).tolist() == [True, False, False] and cl.member(vals, {3}).tolist() == [False] * 3
    assert cl.member(pd.Series([None, None], dtype=object), {"a"}).tolist() == [False, False]

    def no_user():
        raise KeyError("getpwuid(): uid not found")

    monkeypatch.setattr(cl.getpass, "getuser", no_user)
    monkeypatch.setenv("USER", "ann")
    assert cl.default_author() == "ann"
    monkeypatch.delenv("USER")
    assert cl.default_author() == "unknown"
    bad = cl.corrections_dir(store) / "corr-0-bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(CorruptStoreError) as err:
        cl.read_corrections(store)
    msg = str(err.value)
    assert msg.startswith(f"corrections file {str(bad)!r} is damaged (ArrowInvalid: ") and msg.endswith(
        "— corrections are saved atomically, so it was changed by hand or by a disk fault — restore it from a "
        "backup, or move it aside to drop its corrections")


def test_hand_built_log_refuses_stores_it_cannot_write_and_a_killed_save_leaves_nothing(tmp_path, monkeypatch):
    from musseltools.errors import ReadOnlyStoreError, StoreError
    from musseltools.store import corrections_log as cl
    from musseltools.store.store import Store

    remote = Store("memory://mutation-test/s")
    with pytest.raises(StoreError) as err:
        cl.write_corrections(remote, [cl.correction_row("delete", image_id="a", detection_id="d")])
    assert str(err.value) == ("corrections cannot be saved to an object store yet (memory:///mutation-test/s) — "
                              "use a local store")
    assert read_corrections(remote).empty and cl.corrections_signature(remote) == cl.NO_CORRECTIONS

    store = Store(tmp_path / "s")
    store.root.mkdir()
    with monkeypatch.context() as m:  # a read-only mount (the tests run as root, who may write anywhere)
        m.setattr(Store, "read_only", property(lambda self: True))
        with pytest.raises(ReadOnlyStoreError, match=r"is read-only — cannot save 2 corrections — copy the store"):
            cl.write_corrections(store, [cl.correction_row("delete", image_id="a", detection_id=d) for d in "de"])
    assert not cl.corrections_dir(store).exists()

    kept = cl.write_corrections(store, [cl.correction_row("delete", image_id="a", detection_id="d1")])
    code = ("import sys; from musseltools.store.store import Store; from musseltools.store import corrections_log as cl; "
            "cl.write_corrections(Store(sys.argv[1]), [cl.correction_row('delete', image_id='a', detection_id='d2')])")
    package_root = os.path.dirname(os.path.dirname(mt.__file__))  # the musseltools this test imported
    env = dict(os.environ, MUSSELTOOLS_FAILPOINTS="correction-written", PYTHONPATH=package_root)
    proc = subprocess.run([sys.executable, "-c", code, str(store.root)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr  # killed between writing the temporary and renaming it
    folder = cl.corrections_dir(store)
    assert [p.name for p in folder.glob("corr-*")] == [kept.name] and [p for p in folder.iterdir() if p != kept]
    assert read_corrections(store)["detection_id"].tolist() == ["d1"]  # the killed save left nothing to read
    cl.write_corrections(store, [cl.correction_row("delete", image_id="a", detection_id="d3")])
    assert len([p for p in folder.iterdir() if not p.name.startswith("corr-")]) == 0  # the dead temporary is gone
    assert read_corrections(store)["detection_id"].tolist() == ["d1", "d3"]


def test_hand_built_log_readers_see_saves_and_compactions_of_other_processes(tmp_path, monkeypatch):
    from musseltools.store import corrections_log as cl
    from musseltools.store.store import Store

    (tmp_path / "s").mkdir()
    (tmp_path / "other-mount").symlink_to(tmp_path / "s")
    mine, theirs = Store(tmp_path / "s"), Store(tmp_path / "other-mount")  # one store, two processes' paths
    t = pd.Timestamp("2026-05-01 08:00", tz="UTC")

    def one(cid):  # rows that differ only by id: files of the same size
        return [cl.correction_row("delete", image_id="a", detection_id="d", correction_id=cid, created_at=t,
                                  author="ann")]

    cl.write_corrections(mine, one("k1"))
    assert read_corrections(mine)["correction_id"].tolist() == ["k1"]
    cl.write_corrections(theirs, one("k2"))
    assert read_corrections(theirs)["correction_id"].tolist() == ["k1", "k2"]
    merged = cl.compact_corrections(theirs)  # one file again, as many files as this reader saw last
    assert [p.name for p in cl.corrections_dir(mine).iterdir()] == [merged.name]
    assert read_corrections(mine)["correction_id"].tolist() == ["k1", "k2"]

    cl.write_corrections(mine, one("k3"))
    listed = cl.corrections_dir(mine) / "corr-0-merged-away.parquet"  # listed, then removed by a compaction
    files = cl._files
    monkeypatch.setattr(cl, "_files", lambda store: sorted([*files(store), listed]))
    assert read_corrections(mine)["correction_id"].tolist() == ["k1", "k2", "k3"]
    monkeypatch.undo()

    write = cl.write_corrections

    def racing_write(store, rows):  # another compaction removes an old file while this one merges
        out = write(store, rows)
        (cl.corrections_dir(store) / merged.name).unlink()
        return out

    monkeypatch.setattr(cl, "write_corrections", racing_write)
    again = cl.compact_corrections(mine)
    assert [p.name for p in cl.corrections_dir(mine).iterdir()] == [again.name]
    assert read_corrections(theirs)["correction_id"].tolist() == ["k1", "k2", "k3"]


# New corrections checked against a hand-built run (no model): what corrections/check.py accepts and refuses.
def _hb_context(**kw):
    from musseltools.corrections.check import RunContext

    images, dets = _hb_tables()
    images["path"] = ["/survey/x/a.jpg", "/survey/b.jpg", "c.jpg"]
    images["width"], images["height"] = [100, np.nan, 50], [80, np.nan, 100]
    more = pd.DataFrame({"image_id": ["d", "e", "b"], "path": ["d.jpg", "e.jpg", "/survey/b.jpg"],
                         "n_detections": [0, 0, 1], "processed_at": images["processed_at"][:3].tolist(),
                         "width": [np.nan, 100, 7], "height": [40, np.nan, 7]})  # b twice: an earlier attempt's row
    images = pd.concat([images, more], ignore_index=True)
    dets["path"] = dets["image_id"].map(dict(zip(images["image_id"], images["path"])))
    removed = dets.iloc[[3, 0]].reset_index(drop=True)  # d1 also as removed, in another class: one detection
    removed.loc[0, ["detection_id", "image_id", "path"]] = ["d5", "c", "c.jpg"]
    removed.loc[1, "class_name"] = "gaping"

    def rule(given):
        if given == "bad":
            raise ValueError("threshold bad is not a number")
        return f"rule({given})"

    args = dict(run_id="R", inference_key="K", classes=_hb_classes(), images=images, detections=dets,
                removed=removed, thresholds="0.5", root="/survey", known_ids=frozenset({"old"}), rule=rule)
    return RunContext(**{**args, **kw})


def test_hand_built_check_turns_each_kind_of_spec_into_a_log_row():
    from musseltools.corrections.check import check_corrections

    t = pd.Timestamp("2026-04-01 09:00", tz="UTC")
    rows = check_corrections([
        {"kind": "reclassify", "image": "x/a.jpg", "detection_id": " d1 ", "class": "dead", "note": "  ",
         "author": "ann", "created_at": t, "correction_id": "r1"},
        {"action": " Delete ", "detection_id": "d5", "note": "gone", "author": float("nan")},
        {"kind": "add", "image": "b", "class_name": "live", "box": [1, 2, 300, 400], "polygon": [[1, 2], [3, 4], [5, 6]]},
        {"kind": "add", "image": "c.jpg", "class": "shell", "x1": 0, "y1": 0, "x2": 50, "y2": 100, "polygon": float("nan")},
        {"kind": "verify", "image": "/survey/x/a.jpg", "thresholds": "live=0.4"},
        {"kind": "unverify", "image": "a", "thresholds": " "},
        {"kind": "undo", "image": "a", "target": "old"},
        {"kind": "undo", "image": "a", "target": "r1"},  # a correction of the same batch
        {"kind": "reclassify", "detection_id": "d2", "class_name": "shell", "class": "crab"},
        {"kind": "add", "image": "c", "class": "live", "box": [1, 60, 3, 70]},  # y beyond the width, inside the height
        {"kind": "add", "image": "d", "class": "live", "box": [0, 0, 500, 40]},  # no width known
        {"kind": "add", "image": "e", "class": "live", "box": [0, 0, 100, 500]},  # no height known
    ], _hb_context())
    assert [r["kind"] for r in rows] == ["reclassify", "delete", "add", "add", "verify", "unverify", "undo", "undo",
                                         "reclassify", "add", "add", "add"]
    assert rows[8]["class_name"] == "shell" and [r["image_id"] for r in rows[9:]] == ["c", "d", "e"]
    r = rows[0]
    assert (r["image_id"], r["path"], r["detection_id"], r["inference_key"], r["class_name"], r["run_id"]) == (
        "a", "/survey/x/a.jpg", "d1", "K", "dead", "R")
    assert (r["note"], r["author"], r["created_at"], r["correction_id"]) == (None, "ann", t, "r1")
    d = rows[1]
    assert (d["image_id"], d["path"], d["detection_id"], d["class_name"], d["note"]) == ("c", "c.jpg", "d5", None, "gone")
    assert d["author"] not in (None, "", "nan") and len(d["correction_id"]) == 16  # the OS user, a new id
    a = rows[2]
    assert (a["image_id"], a["path"], a["class_name"], a["inference_key"], a["detection_id"]) == (
        "b", "/survey/b.jpg", "live", "K", None)
    assert [a[k] for k in ("x1", "y1", "x2", "y2")] == [1, 2, 300, 400] and a["polygon"] == [[1, 2], [3, 4], [5, 6]]
    c = rows[3]
    assert (c["image_id"], c["class_name"], c["polygon"]) == ("c", "shell", None)
    assert [c[k] for k in ("x1", "y1", "x2", "y2")] == [0, 0, 50, 100]  # the image's own edges are inside it
    assert (rows[4]["image_id"], rows[4]["thresholds"], rows[4]["inference_key"]) == ("a", "rule(live=0.4)", "K")
    assert (rows[5]["thresholds"], rows[5]["run_id"]) == ("0.5", "R")  # none given: the run's
    assert [(u["target"], u["image_id"], u["path"]) for u in rows[6:8]] == [("old", "a", "/survey/x/a.jpg"),
                                                                         ("r1", "a", "/survey/x/a.jpg")]
    assert check_corrections([], _hb_context()) == []
    no_rule = check_corrections([{"kind": "verify", "image": "b", "thresholds": "live=0.4"}], _hb_context(rule=None))
    assert no_rule[0]["thresholds"] == "0.5"


def test_hand_built_check_names_every_bad_spec_and_saves_none():
    from musseltools.corrections.check import check_corrections

    specs = [
        {"kind": "move", "image": "a"},
        {"image": "a"},
        {"kind": "delete", "image": "nowhere.jpg", "detection_id": "d1"},
        {"kind": "delete", "image": "a", "detection_id": " "},
        {"kind": "reclassify", "detection_id": "d9", "class": "dead"},
        {"kind": "delete", "image": "b", "detection_id": "d1"},
        {"kind": "reclassify", "detection_id": "d1", "class": "crab"},
        {"kind": "add", "class": "live", "box": [1, 2, 3, 4]},
        {"kind": "add", "image": "a", "class": None, "box": [1, 2, 3, 4]},
        {"kind": "add", "image": "a", "class": "live", "box": [1, "two", 3, 4]},
        {"kind": "add", "image": "a", "class": "live", "x1": 3, "y1": 1, "x2": 3, "y2": 4},
        {"kind": "add", "image": "a", "class": "live", "box": [1, 2, 3]},
        {"kind": "add", "image": "a", "class": "live", "box": [1, 2, float("inf"), 4]},
        {"kind": "add", "image": "a", "class": "live", "box": [1, 4, 3, 4]},
        {"kind": "add", "image": "a", "class": "live", "box": [1, 2, 101, 4]},
        {"kind": "add", "image": "a", "class": "live", "box": [1, 2, 3, 81]},
        {"kind": "add", "image": "b", "class": "live", "box": [-1, 2, 3, 4]},
        {"kind": "verify", "image": "a", "thresholds": "bad"},
        {"kind": "undo", "image": "a"},
        {"kind": "undo", "image": "a", "target": "c404"},
    ]
    with pytest.raises(CorrectionError) as err:
        check_corrections(specs, _hb_context(), labels=[f"row {i + 2}" for i in range(len(specs))])
    assert str(err.value).split("\n  ") == [
        "20 of 20 corrections are not valid for run R — nothing was saved — fix them and try again:",
        "row 2: action 'move' is not one of reclassify, delete, add, verify, unverify, undo, length",
        "row 3: action None is not one of reclassify, delete, add, verify, unverify, undo, length",
        "row 4: image 'nowhere.jpg' is not an image of run R — give its path as in the run, or its image id",
        "row 5: delete needs a detection_id (the detection_id column of run.detections())",
        "row 6: detection 'd9' is not a detection of run R — take ids from run.detections()",
        "row 7: detection 'd1' belongs to image '/survey/x/a.jpg', not to 'b'",
        "row 8: class 'crab' is neither a class of the model ['mussel', 'gaping', 'shell'] nor a category "
        "['live', 'dead']",
        "row 9: add needs an image (its path as in the run, or its image id)",
        "row 10: class None is neither a class of the model ['mussel', 'gaping', 'shell'] nor a category "
        "['live', 'dead']",
        "row 11: box [1, 'two', 3, 4] is not four numbers — give x1, y1, x2, y2 in pixels",
        "row 12: box [3, 1, 3, 4] is not a box — expected finite x1 < x2 and y1 < y2 in pixels",
        "row 13: box [1, 2, 3] is not a box — expected finite x1 < x2 and y1 < y2 in pixels",
        "row 14: box [1, 2, inf, 4] is not a box — expected finite x1 < x2 and y1 < y2 in pixels",
        "row 15: box [1, 4, 3, 4] is not a box — expected finite x1 < x2 and y1 < y2 in pixels",
        "row 16: box [1.0, 2.0, 101.0, 4.0] lies outside the image (100 x 80 pixels) — give pixel coordinates "
        "inside it",
        "row 17: box [1.0, 2.0, 3.0, 81.0] lies outside the image (100 x 80 pixels) — give pixel coordinates "
        "inside it",
        "row 18: box [-1.0, 2.0, 3.0, 4.0] lies outside the image — give pixel coordinates inside it",
        "row 19: thresholds 'bad' do not fit run R: threshold bad is not a number",
        "row 20: undo needs target: the correction_id of an earlier correction (None is none)",
        "row 21: undo needs target: the correction_id of an earlier correction ('c404' is none)",
    ]
    many = [{"kind": "add", "image": "e", "class": "live", "box": [0, 0, 101, 5]},  # no height known, width known
            {"kind": "add", "image": "d", "class": "live", "box": [0, 0, 5, 41]},  # the other way round
            *({"kind": "delete", "detection_id": f"x{i}"} for i in range(19)), {"kind": "delete", "detection_id": "d1"}]
    with pytest.raises(CorrectionError) as err:
        check_corrections(many, _hb_context())
    lines = str(err.value).split("\n  ")
    assert lines[0] == ("21 of 22 corrections are not valid for run R (and 1 more) — nothing was saved — fix them "
                        "and try again:")
    assert lines[1:3] == [
        "correction 1: box [0.0, 0.0, 101.0, 5.0] lies outside the image — give pixel coordinates inside it",
        "correction 2: box [0.0, 0.0, 5.0, 41.0] lies outside the image — give pixel coordinates inside it"]
    assert len(lines) == 21 and lines[-1].startswith("correction 20: detection 'x17'")


# The review queue and the verified labels over a hand-built store (no model): the tests that judge
# corrections/review.py in mutation testing (`-k hand_built`, docs/testing.md). Confidences are exact in float32.
def _hb_review_run(tmp_path):
    from hand_built_store import commit, detections_part, images_part, write_run

    from musseltools.store.store import Store

    store = Store(tmp_path / "store")
    ids = list("abcdefg")
    paths = ["/s/a.jpg", "/s/b.jpg", "/s/c.jpg", "/s/d.jpg", "/s/e.jpg", "/s/f.jpg", "/s/0g.jpg"]
    write_run(store, "r1", "k1", pd.DataFrame({"image_id": ids, "path": paths}))
    done = [i for i in ids if i != "f"]  # f: not processed yet; e: unreadable
    commit(store, "k1", "u1", images_part(done, n=[4, 2, 0, 1, 0, 0], error=[None] * 4 + ["broken", None]),
           detections_part([("a", 0, "mussel", 0.25, 1.0), ("a", 0, "mussel", 0.875, 2.0), ("a", 1, "gaping", 0.75, 3.0),
                            ("a", 2, "shell", 0.125, 4.0), ("b", 0, "mussel", 0.5, 1.0), ("b", 2, "shell", 0.5, 2.0),
                            ("d", 0, "mussel", 0.5, 1.0)]))
    return store, mt.open_run("r1", store=store.root)


class _OtherRun:
    """A second run whose per-image counts are a table."""

    def __init__(self, counts):
        self.counts = counts

    def per_image(self):
        return pd.DataFrame([{"image_id": i, "live": live, "dead": dead, "error": None, "processed_at": 1}
                             for i, (live, dead) in self.counts.items()])


def test_hand_built_review_queue_ranks_by_count_swing_within_the_window_then_relative_swing_then_path(tmp_path):
    from musseltools.corrections.review import review_queue
    from musseltools.store.corrections_log import correction_row, write_corrections

    store, run = _hb_review_run(tmp_path)
    q = review_queue(run, n=None, window=0.25)
    assert list(q.columns) == ["image_id", "path", "score", "near_threshold", "count_swing", "relative_swing",
                               "disagreement", "verified", "live", "dead"]
    assert q["image_id"].tolist() == ["b", "d", "a", "g", "c"]  # e (an error) and f (not processed) left out
    assert q["near_threshold"].tolist() == [2, 1, 2, 0, 0]  # a: 0.25 and 0.75 at the window's edges
    assert q["count_swing"].tolist() == [2, 1, 1, 0, 0]  # a: 0.25 moves, 0.75 stays counted at 0.75
    assert q["score"].tolist() == [2, 1, 1, 0, 0] and q["disagreement"].tolist() == [0] * 5
    assert q["relative_swing"].tolist() == [1.0, 1.0, 0.5, 0.0, 0.0]  # by the count, at least 1
    assert q["live"].tolist() == [1, 1, 1, 0, 0] and q["dead"].tolist() == [1, 0, 1, 0, 0]
    assert q["path"].tolist()[3:] == ["/s/0g.jpg", "/s/c.jpg"] and not q["verified"].any()
    assert q.index.tolist() == list(range(5)) and q["score"].dtype == np.int64
    assert q["near_threshold"].dtype == np.int64 and q["count_swing"].dtype == np.int64
    narrow = review_queue(run, n=None)  # window 0.05: only the detections at 0.5
    assert narrow["image_id"].tolist() == ["b", "d", "g", "a", "c"] and narrow["near_threshold"].tolist() == [2, 1, 0, 0, 0]
    assert narrow["count_swing"].tolist() == [2, 1, 0, 0, 0]
    low = review_queue(run, n=None, threshold=0.25, window=0.125)  # at 0.25: a's 0.25 and 0.125
    assert low.set_index("image_id").loc["a", ["near_threshold", "count_swing", "live", "dead"]].tolist() == [2, 2, 2, 1]
    assert review_queue(run, n=2, window=0.25)["image_id"].tolist() == ["b", "d"]
    assert len(review_queue(run, window=0.25)) == 5 and len(review_queue(run, n=2.0, window=0.25)) == 2

    write_corrections(store, [correction_row("verify", image_id="d", inference_key="k1", thresholds="0.5"),
                              correction_row("add", image_id="g", inference_key="k1", class_name="mussel",
                                             box=[1, 1, 5, 5])])
    q = review_queue(run, n=None, window=0.25)
    assert q["image_id"].tolist() == ["b", "a", "g", "c"]  # verified d left out; g's added box is no model's
    assert q.set_index("image_id").loc["g", ["near_threshold", "count_swing", "live"]].tolist() == [0, 0, 1]
    every = review_queue(run, n=None, window=0.25, include_verified=True)
    assert every["image_id"].tolist() == ["b", "d", "a", "g", "c"] and every["verified"].tolist() == [False, True, False, False, False]


def test_hand_built_review_queue_with_another_run_puts_where_they_disagree_first(tmp_path):
    from musseltools.corrections.review import review_queue

    _, run = _hb_review_run(tmp_path)
    other = _OtherRun({"a": (3, 1), "b": (1, 1), "c": (1, 0), "d": (1, 0), "g": (0, 5), "x": (9, 9)})
    q = review_queue(run, n=None, other=other, window=0.25)
    assert q["image_id"].tolist() == ["g", "a", "c", "b", "d"]  # c (disagreement 1) before b (score 2, agreeing)
    assert q["disagreement"].tolist() == [5, 2, 1, 0, 0] and q["score"].tolist() == [5, 3, 1, 2, 1]
    partial = review_queue(run, n=None, other=_OtherRun({"g": (0, 1)}), window=0.25)  # no result for the others
    assert partial["image_id"].tolist() == ["g", "b", "d", "a", "c"] and partial["disagreement"].tolist() == [1, 0, 0, 0, 0]
    same = review_queue(run, n=None, other=_OtherRun({"a": (1, 1), "b": (1, 1), "d": (1, 0)}), window=0.25)
    assert same["image_id"].tolist() == ["b", "d", "a", "g", "c"]  # no disagreement: by score as without


@pytest.mark.parametrize("window", [0, 1, -0.1, 1.5])
def test_hand_built_review_queue_refuses_a_window_that_is_no_confidence_distance(tmp_path, window):
    from musseltools.corrections.review import review_queue

    _, run = _hb_review_run(tmp_path)
    with pytest.raises(ValueError, match=rf"^window {window!r} is not a confidence distance — expected a number in "
                                         r"\(0, 1\), e\.g\. 0\.05$"):
        review_queue(run, window=window)


def test_hand_built_verified_labels_are_the_boxes_counted_at_the_thresholds_of_each_mark(tmp_path):
    from musseltools.corrections.review import verified_labels
    from musseltools.store.corrections_log import correction_row, write_corrections

    store, run = _hb_review_run(tmp_path)
    images, boxes = verified_labels(run)
    assert images.empty and boxes.empty
    assert list(images.columns) == ["image_id", "path", "width", "height", "verified_at", "verified_by", "thresholds"]
    cols = ["image_id", "path", "class_id", "class_name", "x1", "y1", "x2", "y2", "polygon", "detection_id", "source"]
    assert list(boxes.columns) == cols
    t0 = pd.Timestamp("2026-02-01", tz="UTC")
    write_corrections(store, [
        correction_row("verify", image_id="b", inference_key="k1", thresholds="0.9", author="ann", created_at=t0),
        correction_row("verify", image_id="b", inference_key="k1", thresholds=json.dumps({"mussel": 0.5, "gaping": 0.75,
                       "shell": 0.75}), author="bo", created_at=t0 + pd.Timedelta(hours=1)),  # the last mark counts
        correction_row("verify", image_id="a", inference_key="k1", thresholds="", author="ann", created_at=t0),
        correction_row("verify", image_id="d", inference_key="k1", thresholds="0.75", author="ann", created_at=t0),
        correction_row("verify", image_id="f", inference_key="k1", thresholds="0.5", author="ann", created_at=t0),
        correction_row("add", image_id="d", inference_key="k1", class_name="shell", box=[2, 2, 9, 9], created_at=t0)])
    images, boxes = verified_labels(run)
    assert images["image_id"].tolist() == ["a", "b", "d"] and images.index.tolist() == [0, 1, 2]  # f: no result
    assert images["path"].tolist() == ["/s/a.jpg", "/s/b.jpg", "/s/d.jpg"] and images["width"].tolist() == [64] * 3
    assert images["verified_by"].tolist() == ["ann", "bo", "ann"]
    assert images["verified_at"].tolist()[1] == t0 + pd.Timedelta(hours=1) and images["thresholds"].tolist()[2] == "0.75"
    assert list(boxes.columns) == cols and boxes.index.tolist() == list(range(len(boxes)))
    # a: the run's 0.5 (no thresholds recorded); b: mussel at 0.5, shell not at 0.75; d: 0.5 below 0.75, the added box
    assert list(zip(boxes["image_id"], boxes["class_name"], boxes["source"])) == [
        ("a", "mussel", "model"), ("a", "gaping", "model"), ("b", "mussel", "model"), ("d", "shell", "added")]
    assert boxes["x1"].tolist()[:3] == [2.0, 3.0, 1.0] and boxes["path"].tolist()[0] == "/s/a.jpg"
    gone = boxes["detection_id"].iat[0]
    write_corrections(store, [correction_row("delete", image_id="a", detection_id=gone, inference_key="k1")])
    assert gone not in set(verified_labels(run)[1]["detection_id"])  # a later correction changes the truth


def test_hand_built_review_queue_holds_twenty_images_by_default(tmp_path):
    from hand_built_store import commit, detections_part, images_part, write_run

    from musseltools.corrections.review import review_queue
    from musseltools.store.store import Store

    store = Store(tmp_path / "store")
    ids = [f"i{k:02d}" for k in range(22)]
    write_run(store, "r1", "k1", pd.DataFrame({"image_id": ids, "path": [f"/s/{i}.jpg" for i in ids]}))
    commit(store, "k1", "u1", images_part(ids), detections_part([]))
    q = review_queue(mt.open_run("r1", store=store.root))
    assert q["image_id"].tolist() == ids[:20]  # no uncertainty anywhere: by path


def test_hand_built_verified_labels_take_the_last_mark_of_an_image_a_run_gives_twice(tmp_path):
    import dataclasses

    from musseltools.corrections.review import verified_labels
    from musseltools.store.corrections_log import correction_row, write_corrections

    store, run = _hb_review_run(tmp_path)
    write_corrections(store, [correction_row("verify", image_id="b", inference_key="k1", thresholds="0.25",
                                             author="bo")])
    res = run.results()
    earlier = res.verified.assign(thresholds="0.75", author="ann")

    class TwoMarks:  # a run whose verified table holds an earlier mark of b before its last
        def results(self):
            return dataclasses.replace(res, verified=pd.concat([earlier, res.verified], ignore_index=True))

        def rule(self, threshold=None):
            return run.rule(threshold)

    images, boxes = verified_labels(TwoMarks())
    assert images["image_id"].tolist() == ["b"] and images["verified_by"].tolist() == ["bo"]
    assert images["thresholds"].tolist() == ["0.25"] and boxes["class_name"].tolist() == ["mussel", "shell"]
