"""A minimum shell length (``min_length_mm``) leaves shorter shells out of every count, like a threshold: counts
equal a hand calculation on images whose scale and shells are known, no stored result changes, changing it
recounts without the model, the cube and run.json follow it, and a detection that cannot be measured is counted."""

from __future__ import annotations

import hashlib
import logging
import math

import numpy as np
import pandas as pd
import pytest

import musseltools as mt
from musseltools.core.options import parse_min_length_mm
from musseltools.errors import ThresholdError

IDS = ["a", "b", "c"]
# a: 0.5 mm/px; b: 0.2 mm/px; c: no scale
SHEET = "image,site,area_m2,mm_per_px\na.jpg,N,1,0.5\nb.jpg,N,1,0.2\nc.jpg,S,1,\n"
#          image, class, confidence, box (x1, y1, x2, y2) on a 200x100 image, its length in mm by hand
SHELLS = [("a", "mussel", 0.9, (10, 10, 40, 30)),    # 30 px long: 15 mm
          ("a", "mussel", 0.9, (50, 10, 58, 16)),    # 8 px: 4 mm, a recruit
          ("a", "mussel", 0.9, (60, 10, 70, 14)),    # 10 px: 5 mm, exactly the minimum: counted
          ("a", "shell", 0.9, (80, 10, 92, 14)),     # 12 px: 6 mm, dead
          ("a", "mussel", 0.9, (150, 20, 250, 40)),  # reaches 50 px beyond the image: no length in mm, counted
          ("b", "mussel", 0.9, (0, 0, 20, 5)),       # 20 px: 4 mm
          ("b", "mussel", 0.4, (0, 10, 50, 30)),     # 50 px: 10 mm, below the threshold 0.5
          ("c", "mussel", 0.9, (5, 5, 13, 11))]      # 8 px, no scale on its image: counted


def _run(tmp_path):
    """A hand-built run (no model) of three 200x100 images with the shells above, and the sheet attached."""
    from hand_built_store import commit, images_part, write_run

    from musseltools.store.store import Store

    store = Store(tmp_path / "store")
    meta = write_run(store, "r1", "k1", pd.DataFrame({"image_id": IDS, "path": [f"/s/{i}.jpg" for i in IDS]}))
    store.write_run({**meta, "model": {**meta["model"], "task": "detect"},
                     "collection": {"name": "s", "source": {"kind": "folder", "root": "/s"}}})
    rows = [{"image_id": i, "path": f"/s/{i}.jpg", "class_id": {"mussel": 0, "shell": 2}[c], "class_name": c,
             "confidence": conf, "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "polygon": None}
            for i, c, conf, b in SHELLS]
    dets = pd.DataFrame(rows).astype({"class_id": np.int16, "confidence": np.float32, "x1": np.float32,
                                      "y1": np.float32, "x2": np.float32, "y2": np.float32})
    imgs = images_part(IDS, sizes=(200, 100), n=[5, 2, 1])
    imgs["path"] = [f"/s/{i}.jpg" for i in IDS]
    commit(store, "k1", "u1", imgs, dets)
    (tmp_path / "survey.csv").write_text(SHEET)
    run = mt.open_run("r1", store=store.root)
    run.attach_sheet(tmp_path / "survey.csv")
    return run


def _stored(run):
    """The bytes of every stored results part of the run."""
    files = sorted(p for p in (run.store.root).rglob("*.parquet") if "results" in p.parts)
    assert files
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_counts_at_a_minimum_length_equal_a_hand_calculation_and_change_no_stored_result(tmp_path):
    run = _run(tmp_path)
    stored, model_rows = _stored(run), run.results().detections.drop(columns=["polygon"])
    assert run.counts() == {"live": 6, "dead": 1} and run.min_length_mm is None
    run.save_min_length_mm(5)
    # a: 15 mm, 5 mm and the one outside the image (live), 6 mm (dead); b: 4 mm left out, 10 mm below 0.5; c: no scale
    table = run.per_image().set_index("image_id")
    assert table["live"].to_dict() == {"a": 3, "b": 0, "c": 1} and table["dead"].to_dict() == {"a": 1, "b": 0, "c": 0}
    assert table["n_detections"].to_dict() == {"a": 5, "b": 2, "c": 1}  # what is stored, whatever counts
    assert run.counts() == {"live": 4, "dead": 1} and run.totals == run.counts() and run.meta["counts"] == run.counts()
    assert run.counts(0.3) == {"live": 5, "dead": 1}  # the 10 mm shell of b counts at 0.3
    assert run.counts(min_length_mm=0) == {"live": 6, "dead": 1}  # a view without the minimum
    assert run.counts(min_length_mm=6) == {"live": 3, "dead": 1}  # the 5 mm one goes too
    dets = run.detections()
    assert len(dets) == 5 and ((dets["length_mm"] >= 5) | dets["length_mm"].isna()).all()
    by_site = run.estimation_tables(["site"], None)[0].groupby("site")["live"].sum().to_dict()
    assert by_site == {"N": 3, "S": 1}  # what by_group and compare_groups estimate from
    assert _stored(run) == stored  # no stored result changed
    pd.testing.assert_frame_equal(run.results().detections.drop(columns=["polygon"]), model_rows)


def test_the_cube_follows_the_minimum_length_and_the_scales(tmp_path):
    run = _run(tmp_path)
    at_half = lambda cube: cube["count"].sel(threshold=0.5).sum("image").to_series().to_dict()  # noqa: E731
    assert at_half(run.cube()) == {"live": 6, "dead": 1}
    run.save_min_length_mm(5)
    assert not run.cube_is_current()  # a cube built without the minimum is not re-used
    cube = run.cube()
    assert at_half(cube) == {"live": 4, "dead": 1} and cube.attrs["min_length_mm"] == 5.0
    assert run.cube_is_current()
    run.set_scale("c.jpg", px_length=10, mm=5)  # c now has a scale (0.5 mm/px): its 8 px shell is 4 mm
    assert not run.cube_is_current()
    assert at_half(run.cube()) == {"live": 3, "dead": 1} and run.counts() == {"live": 3, "dead": 1}


def test_detections_without_a_length_in_mm_are_counted_and_the_run_says_how_many_images_lack_a_scale(tmp_path, caplog):
    run = _run(tmp_path)
    with caplog.at_level(logging.WARNING, logger="musseltools"):
        assert run.counts(min_length_mm=100) == {"live": 2, "dead": 0}  # the one outside a, c's one
    said = [r.getMessage() for r in caplog.records if "min_length_mm=100" in r.getMessage()]
    assert len(said) == 1 and "1 images with detections have none" in said[0]


@pytest.mark.parametrize("bad", [-1, float("nan"), math.inf, "five", True, [5]])
def test_a_bad_minimum_length_is_refused_with_the_reason(tmp_path, bad):
    run = _run(tmp_path)
    with pytest.raises(ThresholdError, match="expected a shell length in millimetres >= 0"):
        run.save_min_length_mm(bad)
    with pytest.raises(ThresholdError, match="min_length_mm"):
        run.counts(min_length_mm=bad)
    assert run.min_length_mm is None and "min_length_saved_at" not in run.meta  # nothing saved
    if isinstance(bad, (str, float, int)) and not isinstance(bad, bool):
        with pytest.raises(ValueError, match="expected a shell length"):
            parse_min_length_mm(str(bad))  # --min-length-mm


@pytest.mark.slow
def test_a_run_asked_with_a_minimum_length_counts_at_it_and_changing_it_infers_nothing(images, tiny_model, tmp_path,
                                                                                       monkeypatch, capsys):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("image,site,area_m2,mm_per_px\n" + "".join(f"{p.name},N,1,0.5\n" for p in sorted(images.iterdir())))
    store = tmp_path / "store"
    # inferred with the minimum: run.json's counts come from the engine as the units are committed
    run = mt.run(images, model=tiny_model, threshold=0.05, min_length_mm=20, store=store, sheet=sheet, quiet=True)
    assert run.meta["inferred_this_call"] == 6
    lengths = run.detections(min_length_mm=0)
    assert lengths["length_mm"].notna().all()

    def by_hand(mm):
        kept = lengths[lengths["length_mm"] >= mm - 1e-9]
        return {c: int((kept["class_name"] == c).sum()) for c in ("live", "dead")}

    assert by_hand(20) != by_hand(0) and min(by_hand(20).values()) > 0  # the minimum splits both classes
    assert run.meta["counts"] == by_hand(20) == run.counts()
    settings = run.settings_table()
    assert settings.loc["min_length_mm", "value"] == 20 and settings.loc["min_length_mm", "from"] == "given"

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("musseltools.executors.task.make_predictor", no_model)
    monkeypatch.setattr("musseltools.executors.task.load_model", no_model)
    plain = mt.run(images, model=tiny_model, threshold=0.05, store=store, quiet=True)
    assert plain.run_id != run.run_id and plain.meta["inferred_this_call"] == 0  # the same results, re-used
    assert plain.meta["counts"] == by_hand(0) == plain.counts()
    run.save_min_length_mm(30)  # recounted from the stored results, without the model
    assert run.meta["counts"] == by_hand(30) == run.counts() and plain.counts() == by_hand(0)
    assert run.settings_table().loc["min_length_mm", "from"].startswith("saved by hand")
    again = mt.run(images, model=tiny_model, threshold=0.05, min_length_mm=20, store=store, quiet=True)
    assert again.run_id == run.run_id and again.meta["inferred_this_call"] == 0
    assert again.meta["counts"] == by_hand(30)  # the saved minimum stays, as saved thresholds do
    from musseltools.cli import main  # the command's summary says the minimum beside the counts it made

    assert main(["run", str(images), "--model", str(tiny_model), "--threshold", "0.05", "--min-length-mm", "20",
                 "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "threshold 0.05   shells from 30 mm" in out and f"live {by_hand(30)['live']}" in out, out
    assert main(["run", str(images), "--model", str(tiny_model), "--threshold", "0.05", "--store", str(store)]) == 0
    assert "shells from" not in capsys.readouterr().out  # no minimum, nothing said


def test_the_editor_and_the_review_queue_count_at_the_minimum_length(tmp_path):
    from musseltools.jupyter.editor import CorrectionEditor

    run = _run(tmp_path)
    run.save_min_length_mm(5)
    # window 0.45 around 0.5: every shell above is near the threshold and swings; a's 4 mm one and b's 4 mm one
    # count at no threshold (b keeps its 10 mm shell at 0.4)
    queue = run.review_queue(n=None, window=0.45).set_index("image_id")
    assert queue["near_threshold"].to_dict() == {"a": 4, "b": 1, "c": 1}
    assert queue["count_swing"].to_dict() == {"a": 4, "b": 1, "c": 1}
    assert queue["live"].to_dict() == {"a": 3, "b": 0, "c": 1} and queue["dead"].to_dict() == {"a": 1, "b": 0, "c": 0}
    ed = CorrectionEditor(run, order="path")  # shows a, whose row it recounts from the stored results
    assert ed.image_id == "a" and ed.image_counts == {"live": 3, "dead": 1}
    assert len(ed.boxes) == 5 and "1 boxes under 5 mm shown, not counted" in ed.counts_html.value  # all shown
    ed.toggle_verified()
    assert ed.image_counts == {"live": 3, "dead": 1} and ed.survey_counts == run.counts() == {"live": 4, "dead": 1}


def test_a_new_scale_or_sheet_recounts_run_json_on_a_run_with_a_minimum_length(tmp_path):
    run = _run(tmp_path)
    run.save_min_length_mm(5)
    assert run.meta["counts"] == {"live": 4, "dead": 1}
    run.set_scale("c.jpg", px_length=10, mm=5)  # c's 8 px shell is now 4 mm: left out
    assert run.meta["counts"] == run.counts() == {"live": 3, "dead": 1}
    (tmp_path / "b.csv").write_text(SHEET.replace("b.jpg,N,1,0.2", "b.jpg,N,1,0.5"))
    run.attach_sheet(tmp_path / "b.csv")  # b's 20 px shell is now 10 mm: it counts
    assert run.meta["counts"] == run.counts() == {"live": 4, "dead": 1}


def _yolo(folder, labels):
    """A YOLO label folder: ``labels`` maps an image stem to (class id, box in pixels of a 200x100 image)."""
    folder.mkdir()
    for stem, rows in labels.items():
        lines = [f"{k} {(x1 + x2) / 400} {(y1 + y2) / 200} {(x2 - x1) / 200} {(y2 - y1) / 100}"
                 for k, (x1, y1, x2, y2) in rows]
        (folder / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_evaluation_leaves_truth_boxes_under_the_minimum_out_and_warns_of_counts_only_truth(tmp_path, caplog):
    run = _run(tmp_path)
    # a's labelled shells: 15 mm, 4 mm (a recruit), 5 mm live, 6 mm dead; b's: its 4 mm one; c: not labelled
    truth = _yolo(tmp_path / "labels", {"a": [(0, (10, 10, 40, 30)), (0, (50, 10, 58, 16)), (0, (60, 10, 70, 14)),
                                              (2, (80, 10, 92, 14))],
                                        "b": [(0, (0, 0, 20, 5))]})
    every = mt.evaluate(run, truth).at(0.5)["live"]
    assert (every["tp"], every["fp"], every["fn"], every["true_total"]) == (4, 1, 0, 4)  # the outside one: a FP
    run.save_min_length_mm(5)
    ev = mt.evaluate(run, truth)
    live = ev.at(0.5)["live"]
    # both 4 mm recruits are left out of the truth as from the detections: no miss, a's 15 and 5 mm ones found
    assert (live["tp"], live["fp"], live["fn"], live["true_total"]) == (2, 1, 0, 2)
    assert ev.true_counts["live"].to_dict() == {"a": 2, "b": 0} and ev.at(0.5)["dead"]["tp"] == 1
    assert mt.evaluate(run, truth, min_length_mm=0).at(0.5)["live"]["true_total"] == 4
    counts = tmp_path / "counts.csv"
    counts.write_text("image,live,dead\na.jpg,3,1\nb.jpg,1,0\n")
    with caplog.at_level(logging.WARNING, logger="musseltools"):
        assert mt.evaluate(run, counts).at(0.5)["live"]["true_total"] == 4  # cannot be filtered
    said = [r.getMessage() for r in caplog.records if "counts only" in r.getMessage()]
    assert len(said) == 1 and "min_length_mm=5" in said[0] and "min_length_mm=0" in said[0]
