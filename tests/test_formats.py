"""Annotation-tool formats (CVAT, Label Studio, COCO, YOLO): predictions out, annotated files back in as
corrections or truth, datasets, and the proof by libraries musseltools did not write (pycocotools in the
main venv; datumaro and label-studio-sdk in the referee venv `make dev` makes, run in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from formats_run import build

ROOT = Path(__file__).resolve().parents[1]
REFEREE = ROOT / ".venv-referees" / "bin" / "python"
READER = ROOT / "tests" / "referees" / "read.py"
EXPORTS = {"coco": "p.json", "cvat": "p.xml", "labelstudio": "p.ls.json", "yolo": "yolo"}


def referee(tool: str, *args: str, python: Path = REFEREE) -> dict:
    """What a third-party library reads: {image: [[label, x1, y1, x2, y2], ...]}."""
    if not python.exists():
        pytest.fail(f"the referee venv {python.parent.parent} is missing — run `make dev` (it installs datumaro, "
                    "label-studio-sdk and pycocotools there, apart from the main venv)")
    done = subprocess.run([str(python), str(READER), tool, *args], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def ours(run, threshold=None) -> dict:
    """The run's detections at the threshold as {image: sorted [[class, x1, y1, x2, y2]]} (polygons' boxes)."""
    d = run.detections(threshold)
    out = {Path(p).stem: [] for p in run.per_image()["path"]}
    for r in d.itertuples():
        out[Path(r.path).stem].append([r.class_name, float(r.x1), float(r.y1), float(r.x2), float(r.y2)])
    return {k: sorted(v) for k, v in out.items()}


def same_boxes(got: dict, want: dict, *, tol=0.02, loose: set[tuple[str, str]] = frozenset()) -> None:
    """Same images, same number of objects per image, same classes and boxes (``loose`` (image, class): IoU >=
    0.75)."""
    assert sorted(got) == sorted(want)
    for image, boxes in want.items():
        theirs = sorted(got[image])
        assert len(theirs) == len(boxes), (image, theirs, boxes)
        for a, b in zip(theirs, boxes):
            assert a[0] == b[0], (image, a, b)
            if (image, a[0]) in loose:
                lt, rb = np.maximum(a[1:3], b[1:3]), np.minimum(a[3:], b[3:])
                inter = np.prod(np.clip(rb - lt, 0, None))
                area = lambda x: (x[3] - x[1]) * (x[4] - x[2])  # noqa: E731
                assert inter / (area(a) + area(b) - inter) >= 0.75, (image, a, b)
            else:
                assert np.allclose(a[1:], b[1:], atol=tol), (image, a, b)


@pytest.fixture
def survey(tmp_path):
    return build(tmp_path)


def test_coco_export_loads_in_pycocotools_with_the_results_list_and_each_score(survey, tmp_path):
    from pycocotools.coco import COCO

    _, run, _ = survey
    run.export(tmp_path / "p.json", format="coco")
    run.export(tmp_path / "r.json", format="coco-results")
    gt = COCO(str(tmp_path / "p.json"))
    res = gt.loadRes(str(tmp_path / "r.json"))
    got = {}
    for img in gt.dataset["images"]:
        anns = gt.loadAnns(gt.getAnnIds(imgIds=img["id"]))
        names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
        got[Path(img["file_name"]).stem] = sorted([names[a["category_id"]], a["bbox"][0], a["bbox"][1],
                                                   a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                                                  for a in anns)
        assert len(res.getAnnIds(imgIds=img["id"])) == len(anns)
    same_boxes(got, ours(run))
    scores = sorted(a["score"] for a in res.dataset["annotations"])
    assert scores == pytest.approx(sorted(run.detections()["confidence"].tolist()))  # below 0.5: left out


@pytest.mark.parametrize("fmt", ["coco", "cvat", "yolo", "labelstudio"])
def test_a_library_we_did_not_write_reads_each_export_with_the_same_boxes_per_image(survey, tmp_path, fmt):
    _, run, folder = survey
    # datumaro's YOLO reader takes boxes only (5 fields a line): at 0.75 only img0000's two boxes count
    threshold = 0.75 if fmt == "yolo" else None
    out = tmp_path / EXPORTS[fmt]
    run.export(out, format=fmt, threshold=threshold)
    work = tmp_path / "work"
    work.mkdir()
    if fmt == "labelstudio":
        got = referee("labelstudio-coco", str(out), f"{out}.config.xml", str(work))
        # the converter turns a rotated rectangle in percent of the image, not pixels: close, not equal
        same_boxes(got, ours(run), tol=0.02, loose={("img0001", "mussel")})
    else:
        got = referee(f"datumaro-{fmt}", str(out), str(folder), str(work))
        same_boxes(got, ours(run, threshold))


def test_a_missing_referee_venv_fails_and_says_to_run_make_dev(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="run `make dev`"):
        referee("datumaro-coco", "x", python=tmp_path / "none" / "bin" / "python")


@pytest.mark.parametrize("fmt", ["coco", "cvat", "labelstudio"])
def test_round_trip_export_load_import_changes_nothing_and_edits_become_corrections(survey, tmp_path, fmt):
    from musseltools.corrections.formats import load_annotations

    _, run, _ = survey
    before = run.counts()
    out = tmp_path / EXPORTS[fmt]
    run.export(out, format=fmt)
    ann = load_annotations(out)  # told from the content
    assert ann.format == fmt
    got = {Path(im.name).stem: sorted([n, *map(float, b)] for n, b in zip(im.detections.class_names,
                                                                          im.detections.xyxy)) for im in ann.images}
    same_boxes(got, ours(run))
    shapes = {im.name: [len(p) for p in im.detections.polygons] for im in ann.images}
    assert shapes["img0001.jpg"] == [4, 5]  # the rotated box keeps 4 corners, the polygon its 5 points
    report = run.import_annotations(out, format=fmt)
    assert set(report["action"]) == {"keep"} and len(report) == 4
    assert run.corrections().empty and run.counts() == before
    # an annotator deletes a box, relabels one and draws one: delete, reclassify and add
    text = out.read_text()
    if fmt == "cvat":
        text = text.replace('label="gaping"', 'label="mussel"').replace(
            '<image id="2" name="img0002.jpg" width="128" height="96" />',
            '<image id="2" name="img0002.jpg" width="128" height="96"><box label="shell" xtl="5" ytl="5" '
            'xbr="25" ybr="20" occluded="1"/></image>')
        text = text.replace(text[text.index('<box label="mussel" source="auto" occluded="0" z_order="0" xtl="10'):
                                 text.index("</box>") + 6], "")
    else:
        doc = json.loads(text)
        if fmt == "coco":
            doc["annotations"] = [a for a in doc["annotations"] if a["id"] != 1]
            doc["annotations"][0]["category_id"] = 1
            doc["annotations"].append({"id": 9, "image_id": 3, "category_id": 3, "bbox": [5, 5, 20, 15]})
        else:
            r = doc[0]["predictions"][0]["result"]
            r[1]["value"]["rectanglelabels"] = ["mussel"]
            del r[0]
            doc[2]["predictions"][0]["result"] = [{**r[0], "id": "new", "value": {
                "x": 5 / 1.28, "y": 5 / 0.96, "width": 20 / 1.28, "height": 15 / 0.96, "rectanglelabels": ["shell"]}}]
        text = json.dumps(doc)
    out.write_text(text)
    report = run.import_annotations(out, format=fmt)
    assert sorted(report["action"]) == ["add", "delete", "keep", "keep", "reclassify"]
    assert sorted(run.corrections()["kind"]) == ["add", "delete", "reclassify"]
    # live: -1 deleted +1 relabelled; dead: -1 relabelled +1 added
    assert before == {"live": 2, "dead": 2} and run.counts() == {"live": 2, "dead": 2}
    added = run.detections().query("source == 'added'")
    assert added[["x1", "y1", "x2", "y2"]].to_numpy().tolist() == [[5, 5, 25, 20]]


def test_yolo_export_is_read_back_and_its_confidences_are_beside_it(survey, tmp_path):
    from musseltools.corrections.formats import load_yolo
    from musseltools.evaluation import load_truth

    _, run, _ = survey
    run.export(tmp_path / "yolo", format="yolo")
    ann = load_yolo(tmp_path / "yolo", {f"img000{i}": (128, 96) for i in range(3)})
    got = {im.name: sorted([n, *map(float, b)] for n, b in zip(im.detections.class_names, im.detections.xyxy))
           for im in ann.images}
    same_boxes(got, ours(run), tol=0.01)
    conf = (tmp_path / "yolo" / "confidence.csv").read_text().splitlines()
    assert conf[0] == "label_file,line,class,confidence" and len(conf) == 5
    truth = load_truth(tmp_path / "yolo")
    assert truth.count_table().sum().to_dict() == {"mussel": 2, "gaping": 1, "shell": 1}


def _bad(kind: str, tmp_path: Path) -> tuple[Path, str, str]:
    """A bad file of ``kind``: (path, the format it is imported as, what the error must name)."""
    good = ('<annotations><version>1.1</version><image id="0" name="img0000.jpg" width="128" height="96">{}'
            '</image></annotations>')
    files = {
        "malformed xml": ("cvat", "a.xml", good.format('<box label="mussel" xtl="1"'), "not well-formed XML"),
        "malformed json": ("labelstudio", "a.json", '[{"data": {"image": "img0000.jpg"}', "not valid JSON"),
        "box outside": ("cvat", "a.xml", good.format('<box label="mussel" xtl="100" ytl="10" xbr="140" ybr="30"/>'),
                        "<box> 1: the shape (box [100.0, 10.0, 140.0, 30.0]) lies outside the image (128 x 96"),
        "unknown label": ("cvat", "a.xml", good.format('<box label="crab" xtl="1" ytl="1" xbr="9" ybr="9"/>'),
                          "<box> 1: unknown label 'crab'"),
        "two-point polygon": ("cvat", "a.xml", good.format('<polygon label="mussel" points="1,1;5,5"/>'),
                              "<polygon> 1: a polygon of 2 points"),
        "coco given as cvat": ("cvat", "a.json", '{"images": [], "annotations": []}', "is JSON, not CVAT XML"),
        "cvat given as coco": ("coco", "a.xml", good.format(""), "is XML, not COCO JSON"),
        "labelstudio given as coco": ("coco", "a.json", '[{"data": {"image": "a.jpg"}}]',
                                      "is a Label Studio export, not COCO"),
        "coco given as labelstudio": ("labelstudio", "a.json", '{"images": [], "annotations": []}',
                                      "is a COCO file, not a Label Studio export"),
        "ls polygon of two points": ("labelstudio", "a.json", json.dumps([{"id": 7, "data": {"image": "img0000.jpg"},
                                     "annotations": [{"result": [{"id": "p", "original_width": 128,
                                     "original_height": 96, "value": {"points": [[1, 1], [5, 5]],
                                     "polygonlabels": ["mussel"]}}]}]}]), "task 7 ('img0000.jpg') result p: a polygon"),
        "coco box outside": ("coco", "a.json", json.dumps({"images": [{"id": 1, "file_name": "img0000.jpg",
                             "width": 128, "height": 96}], "categories": [{"id": 1, "name": "mussel"}],
                             "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [-20, 0, 10, 10]}]}),
                             "annotation 5 (image 'img0000.jpg'): the shape"),
    }
    fmt, name, text, message = files[kind]
    path = tmp_path / name
    path.write_text(text)
    return path, fmt, message


@pytest.mark.parametrize("kind", ["malformed xml", "malformed json", "box outside", "unknown label",
                                  "two-point polygon", "coco given as cvat", "cvat given as coco",
                                  "labelstudio given as coco", "coco given as labelstudio", "ls polygon of two points",
                                  "coco box outside"])
def test_bad_files_are_refused_naming_the_file_and_element_and_nothing_is_imported(survey, tmp_path, kind):
    from musseltools.errors import MusselToolsError

    _, run, _ = survey
    path, fmt, message = _bad(kind, tmp_path)
    # a good correction in the same file would be saved by a partial import: the unknown label's file has one
    with pytest.raises(MusselToolsError) as err:
        run.import_annotations(path, format=fmt)
    assert str(path) in str(err.value) and message in str(err.value)
    assert run.corrections().empty


def test_unknown_labels_map_and_a_file_with_one_bad_object_saves_nothing(survey, tmp_path):
    from musseltools.errors import CorrectionError

    _, run, _ = survey
    run.export(tmp_path / "p.xml", format="cvat")
    text = (tmp_path / "p.xml").read_text()
    bad = text.replace('<image id="2" name="img0002.jpg" width="128" height="96" />',
                       '<image id="2" name="img0002.jpg" width="128" height="96"><box label="alive" xtl="5" ytl="5" '
                       'xbr="25" ybr="20"/></image>').replace('label="gaping" source', 'label="mussel" source')
    (tmp_path / "p.xml").write_text(bad)
    with pytest.raises(CorrectionError, match="unknown label 'alive'.*--label-map alive=CLASS"):
        run.import_annotations(tmp_path / "p.xml")
    assert run.corrections().empty  # the relabelled gaping was not saved either
    report = run.import_annotations(tmp_path / "p.xml", label_map={"alive": "live"})
    assert report.set_index("action").loc["add", "to_class"] == "live"
    assert sorted(run.corrections()["kind"]) == ["add", "reclassify"]


def test_images_not_in_the_run_are_listed_or_with_strict_refused(survey, tmp_path):
    from musseltools.errors import CorrectionError

    _, run, _ = survey
    run.export(tmp_path / "p.json", format="coco")
    doc = json.loads((tmp_path / "p.json").read_text())
    doc["images"].append({"id": 99, "file_name": "elsewhere/quadrat-9.jpg", "width": 10, "height": 10})
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(CorrectionError, match="image 'elsewhere/quadrat-9.jpg' is not an image of run r1"):
        run.import_annotations(tmp_path / "p.json", strict=True)
    report = run.import_annotations(tmp_path / "p.json")
    assert report.loc[report["action"] == "not in run", "image"].tolist() == ["elsewhere/quadrat-9.jpg"]


@pytest.mark.parametrize("fmt", ["cvat", "labelstudio"])
def test_load_truth_tells_cvat_and_label_studio_from_the_file_and_reads_their_boxes(survey, tmp_path, fmt):
    from musseltools.evaluation import load_truth

    _, run, _ = survey
    out = tmp_path / ("p.xml" if fmt == "cvat" else "p.json")
    run.export(out, format=fmt)
    truth = load_truth(out)
    assert truth.format == fmt and truth.has_boxes
    assert truth.count_table().to_dict("index") == {"img0000": {"mussel": 1, "gaping": 1, "shell": 0},
                                                   "img0001": {"mussel": 1, "gaping": 0, "shell": 1},
                                                   "img0002": {"mussel": 0, "gaping": 0, "shell": 0}}
    rotated = truth.objects.dropna(subset=["corners"])
    assert len(rotated) == 1 and rotated["corners"].iloc[0].shape == (4, 2)


@pytest.mark.parametrize("fmt", ["coco", "cvat"])
def test_export_dataset_writes_the_verified_images_split_with_coco_or_cvat_annotations(survey, tmp_path, fmt):
    from pycocotools.coco import COCO

    from musseltools.corrections.formats import load_cvat

    _, run, _ = survey
    for image in ("img0000.jpg", "img0001.jpg", "img0002.jpg"):
        run.verify(image)
    out = tmp_path / "ds"
    path = run_export_dataset(run, out, fmt)
    copied = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.jpg"))
    assert len(copied) == 3 and {c.split("/")[0] for c in copied} == {"train", "val"}
    if fmt == "coco":
        names = []
        for split in ("train", "val"):
            gt = COCO(str(path / f"instances_{split}.json"))
            names += [f"{split}/{im['file_name']}" for im in gt.dataset["images"]]
            assert all((out / "images" / split / im["file_name"]).exists() for im in gt.dataset["images"])
        total = sum(len(json.loads((path / f"instances_{s}.json").read_text())["annotations"]) for s in ("train", "val"))
    else:
        ann = load_cvat(path)
        names = [im.name for im in ann.images]
        total = len(ann)
        assert "score" not in path.read_text()
    assert sorted(names) == copied and total == 4


def run_export_dataset(run, out, fmt):
    from musseltools.cli import main

    assert main(["export-dataset", run.run_id, str(out), "--format", fmt, "--store", str(run.store.root)]) == 0
    return out / ("annotations" if fmt == "coco" else "annotations.xml")


def test_cli_exports_and_imports_an_annotated_file_and_the_csv_import_needs_no_format(survey, tmp_path, capsys):
    from musseltools.cli import main

    store, run, _ = survey
    s = ["--store", str(store.root)]
    assert main(["export", "r1", str(tmp_path / "p.json"), "--format", "labelstudio", "--url-prefix",
                 "/data/local-files/?d=survey/", *s]) == 0
    tasks = json.loads((tmp_path / "p.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [f"/data/local-files/?d=survey/img000{i}.jpg" for i in range(3)]
    assert tasks[0]["predictions"][0]["result"][0]["score"] == pytest.approx(0.9)
    tasks[0]["annotations"] = [{"result": tasks[0]["predictions"][0]["result"][:1]}]  # an annotator drops one
    (tmp_path / "p.json").write_text(json.dumps(tasks))
    assert main(["corrections", "import", "r1", str(tmp_path / "p.json"), "--format", "labelstudio", "--report",
                 str(tmp_path / "report.csv"), *s]) == 0
    assert "1 delete, 3 keep" in capsys.readouterr().out
    assert (tmp_path / "report.csv").read_text().count("\n") == 5
    (tmp_path / "c.csv").write_text("image,action\nimg0002.jpg,verify\n")
    assert main(["corrections", "import", "r1", str(tmp_path / "c.csv"), *s]) == 0
    assert main(["corrections", "import", "r1", str(tmp_path / "p.json"), "--format", "cvat", *s]) == 1
    assert "is JSON, not CVAT XML" in capsys.readouterr().err
    assert sorted(run.corrections()["kind"]) == ["delete", "verify"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
