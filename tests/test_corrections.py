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
