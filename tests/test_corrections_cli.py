"""The corrections command line (CSV export and import, counts --json), the training-data export
(checked by training one epoch of a tiny YOLO on it), and the report's corrections section."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from conftest import IMGSZ, write_images

import musseltools as mt
from musseltools import cli
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
    assert "1 images verified by hand" in text and live.path.rsplit("/", 1)[-1] in text
    assert "Review queue" in text
