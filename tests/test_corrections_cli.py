"""The corrections command line (CSV export and import, counts --json), the training-data export
(checked by training one epoch of a tiny YOLO on it), and the report's corrections section."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import IMGSZ, write_images

import musseltools as mt
from musseltools import cli
from musseltools.corrections.csv import CSV_COLUMNS
from musseltools.corrections.review import verified_labels
from musseltools.store.corrections_log import corrections_dir, read_corrections

T = 0.1


@pytest.fixture
def survey(tmp_path, tiny_model):
    folder = tmp_path / "images"
    write_images(folder, 5, seed=21)
    run = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", quiet=True, threshold=T)
    return folder, run


def _dets(run):
    d = run.detections()
    return d[d["class_name"] == "live"].iloc[0], d[d["class_name"] == "dead"].iloc[0]


def test_counts_json_reports_corrected_counts_and_how_many_corrections(survey, capsys):
    _folder, run = survey
    store = str(run.store.root)
    assert cli.main(["counts", run.run_id, "--store", store, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["corrections_applied"] == 0 and plain["counts"] == plain["model_counts"]
    live, dead = _dets(run)
    run.reclassify(live.detection_id, "dead")
    run.delete_detection(dead.detection_id)
    assert cli.main(["counts", run.run_id, "--store", store, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"run_id", "threshold", "counts", "images"} <= set(out)  # the keys it always had
    assert out["corrections_applied"] == 2
    assert out["counts"] == run.counts() == {"live": plain["counts"]["live"] - 1, "dead": plain["counts"]["dead"]}
    assert out["model_counts"] == plain["counts"]
    assert sum(i["counts"]["live"] for i in out["images"]) == out["counts"]["live"]


def test_csv_export_then_import_recreates_the_corrections(survey, tmp_path, capsys):
    _folder, run = survey
    live, dead = _dets(run)
    run.reclassify(live.detection_id, "dead", note="gaping, half open")
    run.delete_detection(dead.detection_id)
    add = run.add_detection(live.path, (2, 3, 40, 30), "live")
    run.verify(live.path)
    run.undo(add)
    corrected = run.counts()
    csv = tmp_path / "corrections.csv"
    store = str(run.store.root)
    assert cli.main(["corrections", "export", run.run_id, str(csv), "--store", store]) == 0
    header = csv.read_text().splitlines()[0].split(",")
    assert header[:10] == ["image", "image_id", "detection_id", "action", "class", "x1", "y1", "x2", "y2", "note"]
    # importing into the same store changes nothing (each correction once)
    assert cli.main(["corrections", "import", run.run_id, str(csv), "--store", store]) == 0
    assert "5 already saved" in capsys.readouterr().out
    assert len(read_corrections(run.store)) == 5
    # into a copy of the store without corrections: the same corrected counts
    shutil.rmtree(corrections_dir(run.store))
    assert run.counts() == run.counts(corrected=False)
    assert cli.main(["corrections", "import", run.run_id, str(csv), "--store", store]) == 0
    assert run.counts() == corrected
    assert run.verified_images()["path"].tolist() == [live.path]
    got = run.corrections()
    assert got.loc[got["kind"] == "reclassify", "note"].item() == "gaping, half open"


def test_csv_from_another_tool_by_image_name_and_a_bad_row_applies_nothing(survey, tmp_path, capsys):
    folder, run = survey
    live, dead = _dets(run)
    name = live.path.rsplit("/", 1)[-1]  # a path relative to the collection folder
    good = tmp_path / "good.csv"
    good.write_text(
        "image,detection_id,action,class,x1,y1,x2,y2,note\n"
        f",{live.detection_id},reclassify,dead,,,,,\n"
        f",{dead.detection_id},delete,,,,,,false positive\n"
        f"{name},,add,live,10,10,30,25,\n"
        f"{live.image_id},,verify,,,,,,\n"
    )
    bad = tmp_path / "bad.csv"
    bad.write_text(good.read_text() + f"{name},,add,live,30,10,10,25,\nnowhere.jpg,,verify,,,,,,\n,,explode,,,,,,\n")
    store = str(run.store.root)
    before = run.counts()
    assert cli.main(["corrections", "import", run.run_id, str(bad), "--store", store]) == 1
    err = capsys.readouterr().err
    assert "nothing was saved" in err
    for line in ("bad.csv line 6", "bad.csv line 7", "bad.csv line 8"):
        assert line in err
    assert not re.search(r"bad\.csv line [2-5]:", err)  # the good rows are not blamed
    assert read_corrections(run.store).empty and run.counts() == before
    assert cli.main(["corrections", "import", run.run_id, str(good), "--store", store]) == 0
    assert run.counts() == {"live": before["live"] - 1 + 1, "dead": before["dead"] + 1 - 1}
    assert run.corrections_applied == 4


def _verify_row(store):
    table = read_corrections(store)
    return table[table["kind"] == "verify"].iloc[0]


def test_csv_round_trip_across_runs_with_other_thresholds_keeps_what_verified_means(survey, tmp_path, tiny_model,
                                                                                    caplog, capsys):
    folder, run = survey
    strict = 0.3  # the other run's saved thresholds
    low, high = run.per_image(), run.per_image(strict)
    differs = (low["live"] + low["dead"]) != (high["live"] + high["dead"])
    assert differs.any(), "the tiny model gave no image whose count differs between the two thresholds"
    image = low.loc[differs, "path"].iat[0]
    truth = int(low.loc[differs, "live"].iat[0] + low.loc[differs, "dead"].iat[0])
    run.verify(image)
    csv = tmp_path / "corrections.csv"
    assert cli.main(["corrections", "export", run.run_id, str(csv), "--store", str(run.store.root)]) == 0
    exported = pd.read_csv(csv, dtype=str, keep_default_na=False)
    assert list(exported.columns) == CSV_COLUMNS
    assert exported.loc[exported["action"] == "verify", "thresholds"].item() == "dead=0.1,live=0.1"
    # a run of the same images in another store, whose thresholds in effect are others
    other = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "other", quiet=True, threshold=T)
    other.save_thresholds(strict)
    assert cli.main(["corrections", "import", other.run_id, str(csv), "--store", str(other.store.root)]) == 0
    mark = _verify_row(other.store)
    assert mark["correction_id"] == _verify_row(run.store)["correction_id"]
    assert json.loads(mark["thresholds"]) == {"live": T, "dead": T}  # as it was marked, not the run's 0.3
    images, boxes = verified_labels(other)
    assert images["path"].tolist() == [image] and len(boxes) == truth
    # a file written before the thresholds column: its verify records the run's thresholds, said once
    shutil.rmtree(corrections_dir(other.store))
    old = tmp_path / "old.csv"
    exported.drop(columns=["thresholds"]).to_csv(old, index=False)
    with caplog.at_level(logging.WARNING, logger="musseltools.corrections.csv"):
        assert cli.main(["corrections", "import", other.run_id, str(old), "--store", str(other.store.root)]) == 0
    said = [r.getMessage() for r in caplog.records if "give no thresholds" in r.getMessage()]
    assert len(said) == 1 and "1 verify rows of old.csv" in said[0] and "no thresholds column" in said[0]
    assert json.loads(_verify_row(other.store)["thresholds"]) == {"live": strict, "dead": strict}
    # thresholds the run cannot answer are a bad row, named by its line
    bad = tmp_path / "bad.csv"
    bad.write_text(f"image,action,thresholds\n{image},verify,zebra=0.5\n")
    assert cli.main(["corrections", "import", other.run_id, str(bad), "--store", str(other.store.root)]) == 1
    err = capsys.readouterr().err
    assert "bad.csv line 2: thresholds 'zebra=0.5'" in err and "zebra" in err


def test_export_active_leaves_out_undone_corrections_and_the_undos(survey, tmp_path):
    _folder, run = survey
    live, dead = _dets(run)
    run.reclassify(live.detection_id, "dead")
    run.undo(run.delete_detection(dead.detection_id))
    run.add_detection(live.path, (2, 3, 40, 30), "live")
    store = str(run.store.root)
    every, active = tmp_path / "every.csv", tmp_path / "active.csv"
    assert cli.main(["corrections", "export", run.run_id, str(every), "--store", store]) == 0
    assert cli.main(["corrections", "export", run.run_id, str(active), "--store", store, "--active"]) == 0
    assert sorted(pd.read_csv(every)["action"]) == ["add", "delete", "reclassify", "undo"]
    assert sorted(pd.read_csv(active)["action"]) == ["add", "reclassify"]
    corrected = run.counts()
    shutil.rmtree(corrections_dir(run.store))
    assert cli.main(["corrections", "import", run.run_id, str(active), "--store", store]) == 0
    assert run.counts() == corrected


def test_corrections_help_names_every_column_the_export_writes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["corrections", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"An export writes {len(CSV_COLUMNS)} columns: {', '.join(CSV_COLUMNS)}" in text


def _counts_stderr(run) -> str:
    proc = subprocess.run([sys.executable, "-m", "musseltools", "counts", run.run_id, "--store", str(run.store.root)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_corrections_that_do_not_apply_are_said_once_per_run_and_listed_by_corrections_report(
        survey, model_factory, caplog, capsys):
    folder, run = survey
    live, dead = _dets(run)
    run.reclassify(live.detection_id, "dead")
    run.verify(live.path)
    with caplog.at_level(logging.WARNING, logger="musseltools.results.view"):
        other = mt.run(folder, model=model_factory("detect", 1), imgsz=IMGSZ, store=run.store.root, quiet=True,
                       threshold=T, batch_size=1)
        other.counts()
    said = [r.getMessage() for r in caplog.records if "cannot be applied" in r.getMessage()]
    assert len(said) == 1 and f"musseltools corrections report {other.run_id}" in said[0]
    # the next command on the run (another process) does not say it again ...
    assert "cannot be applied" not in _counts_stderr(other)
    # ... until a correction that does not apply is new
    run.delete_detection(dead.detection_id)
    err = _counts_stderr(other)
    assert "3 corrections of its images cannot be applied to this run (1 of them new)" in err
    assert f"musseltools corrections report {other.run_id}" in err
    store = str(run.store.root)
    assert cli.main(["corrections", "report", other.run_id, "--store", store, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(c["kind"] for c in listed) == ["delete", "reclassify", "verify"]
    assert all("another model" in c["reason"] for c in listed)
    assert cli.main(["corrections", "report", other.run_id, "--store", store]) == 0
    out = capsys.readouterr().out
    assert "3 corrections of run" in out and out.count("another model") == 3
    assert cli.main(["corrections", "report", run.run_id, "--store", store]) == 0
    assert "applies to it" in capsys.readouterr().out


@pytest.mark.slow
def test_export_dataset_writes_a_yolo_dataset_that_trains(survey, tmp_path, capsys):
    _folder, run = survey
    store = str(run.store.root)
    out = tmp_path / "dataset"
    assert cli.main(["export-dataset", run.run_id, str(out), "--store", store]) == 1
    assert "no verified image" in capsys.readouterr().err
    live, dead = _dets(run)
    run.reclassify(live.detection_id, "dead")
    run.delete_detection(dead.detection_id)
    run.add_detection(live.path, (2, 3, 40, 30), "live")
    paths = run.per_image()["path"].tolist()
    for p in paths[:4]:
        run.verify(p)
    assert cli.main(["export-dataset", run.run_id, str(out), "--format", "yolo", "--store", store]) == 0
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "live", 1: "dead"} and data["train"] == "images/train"
    train = sorted((out / "images" / "train").iterdir())
    val = sorted((out / "images" / "val").iterdir())
    assert len(train) == 3 and len(val) == 1  # split by image, 20% val
    # the labels are the corrected detections at the threshold: one "class cx cy w h" line per box of the
    # image, the box's centre and size divided by the image's width and height
    table = run.per_image().set_index("path")
    dets = run.detections()
    class_id = {name: i for i, name in data["names"].items()}
    for img in train + val:
        label = out / "labels" / img.parent.name / (img.stem + ".txt")
        src = next(p for p in paths if p.endswith(img.name.split("-", 1)[1]))
        lines = label.read_text().splitlines()
        assert len(lines) == table.loc[src, "live"] + table.loc[src, "dead"]
        w, h = table.loc[src, "width"], table.loc[src, "height"]
        mine = dets[dets["path"] == src]
        expected = sorted(f"{class_id[d.class_name]} {(d.x1 + d.x2) / 2 / w:.6f} {(d.y1 + d.y2) / 2 / h:.6f} "
                          f"{(d.x2 - d.x1) / w:.6f} {(d.y2 - d.y1) / h:.6f}" for d in mine.itertuples())
        assert sorted(lines) == expected, src
    again = tmp_path / "again"
    cli.main(["export-dataset", run.run_id, str(again), "--store", store])
    assert sorted(p.name for p in (again / "images" / "val").iterdir()) == [p.name for p in val]  # deterministic
    # a tiny YOLO trains one epoch on it
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    model.train(data=str(out / "data.yaml"), epochs=1, imgsz=64, batch=2, workers=0, plots=False, device="cpu",
                project=str(tmp_path / "train"), name="one", verbose=False, val=True, amp=False)
    assert (tmp_path / "train" / "one" / "weights" / "last.pt").exists()


def test_export_dataset_refuses_a_folder_with_other_content(survey, tmp_path):
    _folder, run = survey
    run.verify(run.per_image()["path"].iloc[0])
    out = tmp_path / "busy"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    from musseltools.corrections.dataset import export_dataset

    with pytest.raises(mt.MusselToolsError, match="not empty"):
        export_dataset(run, out)
    assert (out / "thesis.docx").read_text() == "precious"


@pytest.mark.slow
def test_the_report_shows_corrections_before_and_after_and_verified_images(survey, tmp_path, tiny_model):
    folder, run = survey
    live, dead = _dets(run)
    run.reclassify(live.detection_id, "dead")
    run.delete_detection(dead.detection_id)
    run.verify(live.path)
    html = mt.report(folder, model=tiny_model, imgsz=IMGSZ, threshold=T, store=run.store.root,
                     out=tmp_path / "report", n_samples=1, batch_size=1).read_text()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert "Hand corrections and review" in text
    model, corrected = run.counts(corrected=False), run.counts()
    assert re.search(rf"live {model['live']} {corrected['live']}", text), "counts before and after"
    assert re.search(r"reclassify 1 1 delete 1 1 add 0 0 verify 1 1", text), "corrections of each kind"
    assert "1 image verified by hand" in text and live.path.rsplit("/", 1)[-1] in text
    assert "Review queue" in text


# -------------------------------------------------- the dataset export over hand-built verified labels
# verified_labels replaced by tables (no model, no store): the tests that judge corrections/dataset.py in
# mutation testing (`-k hand_built_dataset`, docs/testing.md).
class _LabelledRun:
    run_id, class_names = "r1", ["live", "dead"]


@pytest.fixture
def hand_built_dataset(tmp_path, monkeypatch):
    """Five verified images (files of distinct bytes), boxes of two of them; verified_labels gives them."""
    src = tmp_path / "photos"
    src.mkdir()
    ids = [f"{i:x}" * 16 for i in range(10, 15)]  # 16-character ids: file names keep the first 12
    names = ["a b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"]
    for i, n in enumerate(names):
        (src / n).write_bytes(bytes([i]) * 10)
    images = pd.DataFrame({"image_id": ids, "path": [str(src / n) for n in names], "width": [200] * 5,
                           "height": [100] * 5})
    boxes = pd.DataFrame({"image_id": [ids[0]] * 4 + [ids[1]], "class_id": [0, 1, 0, 1, 1],
                          "x1": [10, -10, 50, 150, 0], "y1": [20, 10, 50, 40, 0], "x2": [30, 20, 50, 260, 200],
                          "y2": [60, 30, 60, 120, 100]})
    import musseltools.corrections.review as review

    monkeypatch.setattr(review, "verified_labels", lambda run: (images, boxes))
    return images, boxes, tmp_path / "ds"


def test_hand_built_dataset_labels_names_and_yaml(hand_built_dataset):
    from musseltools.corrections.dataset import export_dataset

    images, _, out = hand_built_dataset
    ids = images["image_id"].tolist()
    data = export_dataset(_LabelledRun(), out)
    assert data == out / "data.yaml"
    doc = yaml.safe_load(data.read_text())
    assert doc == {"path": str(out.resolve()), "train": "images/train", "val": "images/val",
                   "names": {0: "live", 1: "dead"}}
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    val = {f for f in files if f.startswith("images/val/")}
    assert len(val) == 1 and len([f for f in files if f.startswith("images/train/")]) == 4  # round(5 * 0.2)
    split = {f.split("/")[2].split("-")[0]: f.split("/")[1] for f in files if f.startswith("images/")}
    name0 = f"{ids[0][:12]}-a_b.jpg"  # the id's first 12 characters, the name made safe
    lab0 = out / "labels" / split[ids[0][:12]] / f"{ids[0][:12]}-a_b.txt"
    assert (out / "images" / split[ids[0][:12]] / name0).read_bytes() == bytes([0]) * 10
    # clipped to the image; a box of no width after clipping is left out
    assert lab0.read_text() == ("0 0.100000 0.400000 0.100000 0.400000\n"
                                "1 0.050000 0.200000 0.100000 0.200000\n"
                                "1 0.875000 0.700000 0.250000 0.600000\n")
    lab1 = out / "labels" / split[ids[1][:12]] / f"{ids[1][:12]}-c.txt"
    assert lab1.read_text() == "1 0.500000 0.500000 1.000000 1.000000\n"
    assert (out / "labels" / split[ids[2][:12]] / f"{ids[2][:12]}-d.txt").read_text() == ""  # no object
    assert (out / ".musseltools-dataset").exists()
    # the split depends on the seed and the ids only: the same again, another with another seed
    again = export_dataset(_LabelledRun(), out)
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == files and again == data
    seeds = set()
    for seed in range(6):
        export_dataset(_LabelledRun(), out, seed=seed)
        seeds.add(next((out / "images" / "val").iterdir()).name)
    assert len(seeds) > 1


def test_hand_built_dataset_split_sizes_and_a_train_only_dataset(hand_built_dataset, monkeypatch):
    from musseltools.corrections import dataset
    from musseltools.corrections.dataset import export_dataset

    images, boxes, out = hand_built_dataset
    ids = images["image_id"].tolist()
    assert len(dataset._split(ids, 0.5, 0)) == 2  # round(2.5) = 2
    assert len(dataset._split(ids, 0.01, 0)) == 1  # at least one of two or more
    assert len(dataset._split(ids, 0.99, 0)) == 4  # and one left to train on
    assert len(dataset._split(ids[:2], 0.9, 0)) == 1 and dataset._split(ids[:1], 0.5, 0) == set()
    assert dataset._split(ids, 0, 0) == set()
    # val_fraction 0: Ultralytics validates on train
    export_dataset(_LabelledRun(), out, val_fraction=0)
    assert yaml.safe_load((out / "data.yaml").read_text())["val"] == "images/train"
    assert not (out / "images" / "val").exists() and len(list((out / "images" / "train").iterdir())) == 5
    # a previous export is replaced, Ultralytics' caches with it
    (out / "labels.cache").write_text("old")
    export_dataset(_LabelledRun(), out, val_fraction=0.4)
    assert not (out / "labels.cache").exists() and len(list((out / "images" / "val").iterdir())) == 2
    assert len(list((out / "images" / "train").iterdir())) == 3


def test_hand_built_dataset_refusals_say_what_to_do(hand_built_dataset, tmp_path, monkeypatch):
    from musseltools.corrections.dataset import export_dataset
    from musseltools.errors import MusselToolsError

    images, boxes, out = hand_built_dataset
    run = _LabelledRun()
    cases = [({"format": "voc"}, "dataset format 'voc' is not supported — expected one of ['yolo', 'coco', 'cvat']"),
             ({"val_fraction": 1}, "val_fraction 1 is not a share — expected a number in [0, 1)"),
             ({"val_fraction": -0.1}, "val_fraction -0.1 is not a share — expected a number in [0, 1)")]
    for kwargs, message in cases:
        with pytest.raises(MusselToolsError) as e:
            export_dataset(run, out, **kwargs)
        assert str(e.value) == message
    assert export_dataset(run, out, val_fraction=0.0).exists()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(MusselToolsError) as e:
        export_dataset(run, tmp_path / "a_file")
    assert str(e.value) == f"dataset folder {str(tmp_path / 'a_file')!r} is a file — expected a folder — choose another OUT"
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "x.txt").write_text("x")
    with pytest.raises(MusselToolsError, match="is not empty and was not written by musseltools export-dataset"):
        export_dataset(run, tmp_path / "theirs")
    assert (tmp_path / "theirs" / "x.txt").exists()
    Path(images.at[1, "path"]).unlink()
    with pytest.raises(MusselToolsError) as e:
        export_dataset(run, out)
    assert str(e.value).startswith(f"cannot copy verified image {images.at[1, 'path']!r} into the dataset: ")
    assert str(e.value).endswith("— the image must still be where the run last saw it")
    import musseltools.corrections.review as review

    monkeypatch.setattr(review, "verified_labels", lambda run: (images.iloc[:0], boxes.iloc[:0]))
    with pytest.raises(MusselToolsError) as e:
        export_dataset(run, out)
    assert str(e.value) == ("run r1 has no verified image — expected images checked by hand — mark images verified "
                            "in the editor, with run.verify(image), or by importing 'verify' rows, then export again")


def test_hand_built_dataset_edges_of_boxes_names_folders_and_the_log(hand_built_dataset, tmp_path, monkeypatch,
                                                                      caplog):
    import musseltools.corrections.review as review
    from musseltools.corrections import dataset
    from musseltools.corrections.dataset import export_dataset

    images, _, out = hand_built_dataset
    run = _LabelledRun()
    long_name = "x" * 130 + ".jpg"
    Path(images.at[0, "path"]).rename(Path(images.at[0, "path"]).with_name(long_name))
    one = images.iloc[:1].assign(path=str(Path(images.at[0, "path"]).with_name(long_name)))
    # boxes wholly left of, above and below the image are left out; one reaching above it is clipped
    boxes = pd.DataFrame({"image_id": [one.at[0, "image_id"]] * 4, "class_id": [0, 0, 1, 1],
                          "x1": [-30, 10, 10, 10], "y1": [10, -30, 120, -10], "x2": [-10, 30, 30, 30],
                          "y2": [20, -10, 140, 30]})
    asked = []
    monkeypatch.setattr(review, "verified_labels", lambda r: asked.append(r) or (one, boxes))
    nested = tmp_path / "new" / "deeper" / "ds"
    with caplog.at_level(logging.INFO, logger="musseltools.corrections.dataset"):
        export_dataset(run, nested)
    assert asked == [run]
    assert f"[run r1] dataset of 1 verified images (0 val) written to {nested}" in caplog.text
    [image] = (nested / "images" / "train").iterdir()
    assert image.name == f"{one.at[0, 'image_id'][:12]}-{('x' * 130 + '.jpg')[-120:]}"  # the name's last 120
    [label] = (nested / "labels" / "train").iterdir()
    assert label.read_text() == "1 0.100000 0.150000 0.100000 0.300000\n"
    assert list(yaml.safe_load((nested / "data.yaml").read_text())) == ["path", "train", "val", "names"]
    assert "rewritten by the next export" in (nested / ".musseltools-dataset").read_text()
    # a previous export of ours without images or labels (interrupted) is replaced all the same
    for sub in ("images", "labels"):
        shutil.rmtree(nested / sub)
    export_dataset(run, nested)
    assert len(list((nested / "labels" / "train").iterdir())) == 1
    # the seed is 0 by default; a second export leaves no label of the first behind
    images5, boxes5, _ = hand_built_dataset
    monkeypatch.setattr(review, "verified_labels", lambda r: (images5.iloc[1:], boxes5))
    export_dataset(run, out)
    [val] = (out / "images" / "val").iterdir()
    assert val.name.split("-")[0] in {i[:12] for i in dataset._split(images5["image_id"].tolist()[1:], 0.2, 0)}
    export_dataset(run, out, val_fraction=0.5)
    assert sum(1 for _ in (out / "labels").rglob("*.txt")) == 4
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "x.txt").write_text("x")
    with pytest.raises(mt.MusselToolsError) as e:
        export_dataset(run, theirs)
    assert str(e.value) == (f"dataset folder {str(theirs)!r} is not empty and was not written by musseltools "
                            "export-dataset — refusing to mix datasets — choose an empty or new folder")
