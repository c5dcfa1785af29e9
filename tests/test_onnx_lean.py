"""The torch-free ONNX path of Ultralytics detect models (models/onnx_detect.py, models/onnx_lean.py): the same
letterbox as Ultralytics, an NMS by its rules, results that pass the check against torch, used only once
checked, and workers that then never import torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import IMGSZ, write_images

import musseltools as mt
from musseltools.models import InferenceSettings, load_model, make_predictor
from musseltools.models import onnx as onnx_mod
from musseltools.models.onnx import CHECK_IMAGES, compare_detections
from musseltools.models.onnx_detect import LeanDetectPredictor, letterbox, nms
from musseltools.models.onnx_lean import lean_predictor

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "models" / "mussel-demo.pt"
KW = {"imgsz": IMGSZ, "quiet": True, "workers": 1}
#: Image shapes (height, width): landscape, portrait, tiny, sides no multiple of the stride, larger than the
#: model input and smaller (scaled up), a sliver.
SHAPES = [(480, 640), (640, 480), (5, 3), (97, 131), (1000, 1500), (60, 50), (1, 700)]


@pytest.fixture(scope="module")
def folder_of_six(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("lean") / "images"
    write_images(f, 6, seed=5)
    return f


def _graphs(store: Path) -> list[Path]:
    return sorted((Path(store) / "cache" / "onnx").glob("*.onnx"))


def test_the_letterbox_is_ultralytics_own_to_the_bit(tiny_model):
    """The lean letterbox gives the very tensor Ultralytics' preprocess gives, for every kind of shape."""
    p = make_predictor(load_model(tiny_model), InferenceSettings(imgsz=IMGSZ), threads=1)
    imgsz, stride = p.input_geometry()
    rng = np.random.default_rng(3)
    for shape in SHAPES:
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        theirs = p.prepare(image).tensor.numpy()
        ours = letterbox(image, imgsz, stride)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, shape
        assert np.array_equal(ours, theirs), (shape, float(np.abs(ours - theirs).max()))


@pytest.fixture(params=["pairwise", "stepwise"])
def both_nms(request, monkeypatch):
    """NMS both ways: all overlaps at once (few candidates), and a step per kept box (many)."""
    from musseltools.models import onnx_detect

    monkeypatch.setattr(onnx_detect, "PAIRWISE_MAX", onnx_detect.PAIRWISE_MAX if request.param == "pairwise" else 0)


def test_nms_suppresses_overlaps_of_a_class_above_the_setting_only(both_nms):
    box = [0, 0, 10, 10]
    over = [0, 0, 10, 12]  # IoU 100/120 = 0.83
    under = [0, 0, 10, 20]  # IoU 100/200 = 0.5
    boxes = np.array([box, over, under], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    same = np.zeros(3, np.int64)
    assert nms(boxes, scores, same, 0.7, 100).tolist() == [0, 2]  # 0.83 > 0.7 suppressed, 0.5 kept
    assert nms(boxes, scores, same, 0.9, 100).tolist() == [0, 1, 2]  # none over 0.9
    assert nms(boxes, scores, same, 0.4, 100).tolist() == [0]
    assert nms(boxes, scores, np.array([0, 1, 0]), 0.4, 100).tolist() == [0, 1]  # classes never suppress each other
    assert nms(boxes[::-1].copy(), scores[::-1].copy(), same, 0.7, 100).tolist() == [2, 0]  # by score, not order


def test_nms_keeps_at_most_max_det_most_confident_first(both_nms):
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(6)], np.float32)  # disjoint
    scores = np.array([0.1, 0.6, 0.3, 0.9, 0.5, 0.2], np.float32)
    assert nms(boxes, scores, np.zeros(6, np.int64), 0.5, 3).tolist() == [3, 1, 4]
    assert nms(boxes[:0], scores[:0], np.zeros(0, np.int64), 0.5, 3).tolist() == []


def test_nms_keeps_what_torchvisions_keeps_ties_included(both_nms):
    """Random overlapping boxes of two classes with scores drawn from four values (ties everywhere):
    the boxes kept, and their order, are torchvision's (Ultralytics' NMS on CPU), offset by class as it is."""
    import torch
    import torchvision

    rng = np.random.default_rng(11)
    for _ in range(60):
        n = int(rng.integers(0, 60))
        xy = rng.uniform(0, 50, (n, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (n, 2)).astype(np.float32)], axis=1)
        classes, scores = rng.integers(0, 2, n), rng.choice(np.array([1.0, 0.9, 0.5, 0.3], np.float32), n)
        cap = int(rng.integers(1, 40))
        theirs = torchvision.ops.nms(torch.from_numpy(boxes + (classes[:, None] * 7680).astype(np.float32)),
                                     torch.from_numpy(scores), 0.5).numpy()[:cap]
        assert nms(boxes, scores, classes, 0.5, cap).tolist() == theirs.tolist()


def test_the_floor_and_the_cap_hold_on_the_graphs_output():
    """Anchors at or under the floor are dropped; max_det caps what NMS keeps; boxes come back on the image."""
    from musseltools.models.onnx_detect import detections_of

    out = np.zeros((6, 4), np.float32)  # 4 anchors: cx, cy, w, h, live, dead
    out[:4] = np.array([[16, 48, 80, 16], [16, 16, 16, 16], [8, 8, 8, 8], [8, 8, 8, 8]], np.float32)
    out[4:] = np.array([[0.5, 0.01, 0.2, 0.0], [0.1, 0.0, 0.7, 0.3]], np.float32)
    image = np.zeros((64, 128, 3), np.uint8)  # input 64x128: no padding, gain 1
    settings = InferenceSettings(conf_floor=0.01, iou=0.7, max_det=10)
    d = detections_of(out, (64, 128), image, settings, {0: "live", 1: "dead"})
    assert sorted(d.confidence.tolist()) == pytest.approx([0.3, 0.5, 0.7])  # 0.01 is not over the floor
    assert d.class_id.tolist() == [1, 0, 1] and d.image_size == (128, 64)
    assert d.xyxy.tolist() == [[76, 12, 84, 20], [12, 12, 20, 20], [12, 12, 20, 20]]  # two classes, one box
    half = detections_of(out, (64, 128), image[:32, :64], settings, {0: "live", 1: "dead"})
    assert half.xyxy[0].tolist() == [38, 6, 42, 10] and half.image_size == (64, 32)  # back on the image
    capped = detections_of(out, (64, 128), image, InferenceSettings(conf_floor=0.01, max_det=2), {0: "live", 1: "dead"})
    assert capped.confidence.tolist() == pytest.approx([0.7, 0.5])


def _synth_frames(tmp: Path) -> list[np.ndarray]:
    from musseltools.synth.frames import generate

    generate(tmp, n=3, seed=4)
    return [cv2.imread(str(p)) for p in sorted(tmp.rglob("*.jpg"))]


@pytest.mark.slow
def test_the_lean_predictor_gives_torchs_results_on_the_demo_detector(tmp_path):
    """The demo detector on synthetic survey frames: the lean predictor (what runs after the check) against
    Ultralytics' torch predictor, image by image, by the check's rule; and it is the lean one that runs."""
    settings = InferenceSettings(imgsz=320, iou=0.4, backend="onnx")
    p = make_predictor(load_model(DEMO), settings, threads=1, cache=tmp_path / "graphs")
    frames = _synth_frames(tmp_path / "frames") + [cv2.imread(str(f)) for f in
                                                   sorted((ROOT / "data" / "demo" / "images").glob("*.jpg"))[:2]]
    ours = p.predict([p.prepare(f) for f in frames])
    assert isinstance(p.lean, LeanDetectPredictor) and p.backend == "onnx"
    theirs = p.inner.predict([p.inner.prepare(f) for f in frames])
    assert sum(len(d) for d in theirs) > 20
    for a, b in zip(ours, theirs):  # strictly: no box forgiven for an overlapping rival of its confidence
        assert compare_detections(a, b, settings.conf_floor) is None
    again = p.predict([p.prepare(f) for f in frames])  # checked: lean letterbox and all
    for a, b in zip(again, ours):
        assert np.array_equal(a.xyxy, b.xyxy) and np.array_equal(a.confidence, b.confidence)


def test_a_passed_check_is_recorded_for_the_lean_path_and_builds_it_without_the_model(tiny_model, tmp_path):
    images = tmp_path / "images"
    write_images(images, CHECK_IMAGES + 1, seed=2)
    run = mt.run(images, model=tiny_model, store="store", backend="onnx", **KW)
    [graph] = _graphs(Path("store"))
    record = json.loads(graph.with_suffix(".json").read_text())
    assert record["check"]["passed"] and record["lean"]["stride"] == 32 and record["lean"]["imgsz"] == [IMGSZ, IMGSZ]
    assert all("onnxruntime" in w for w in run.meta["inferred_with"])
    info, settings = load_model(tiny_model).info, InferenceSettings(imgsz=IMGSZ, backend="onnx")
    lean = lean_predictor(info, settings, graph.parent, device="cpu", threads=1)
    assert isinstance(lean, LeanDetectPredictor)
    assert lean_predictor(info, settings, graph.parent, device="cuda:0") is None  # ONNX Runtime on a CPU only
    record.pop("lean")  # a record by a check of another post-processing
    graph.with_suffix(".json").write_text(json.dumps(record))
    assert lean_predictor(info, settings, graph.parent, device="cpu", threads=1) is None


def test_a_graph_checked_with_ultralytics_postprocessing_is_not_trusted_by_the_lean_path(
        tiny_model, tmp_path, monkeypatch, caplog):
    """A graph cached by older code (its record checked with Ultralytics' own post-processing) is another
    graph: under the failpoint that spoils every graph's boxes, a run does not take the old record's word,
    exports its own, checks it, and goes on with torch."""
    import logging
    import shutil

    images = tmp_path / "images"
    write_images(images, CHECK_IMAGES, seed=2)
    mt.run(images, model=tiny_model, store="old", backend="onnx", **KW)
    [graph] = _graphs(Path("old"))
    info, settings = load_model(tiny_model).info, InferenceSettings(imgsz=IMGSZ, backend="onnx")
    with monkeypatch.context() as m:
        m.setattr(onnx_mod, "lean_applies", lambda info: False)  # the key as older code made it
        old_key = onnx_mod.graph_key(info, settings)
    cache = Path("store") / "cache" / "onnx"
    cache.mkdir(parents=True)
    shutil.copy(graph, cache / f"{old_key}.onnx")
    record = json.loads(graph.with_suffix(".json").read_text())
    record.pop("lean"), record.pop("weights")
    (cache / f"{old_key}.json").write_text(json.dumps(record))  # passed, by the old check
    from musseltools.executors import task

    task.PREDICTORS.clear()
    onnx_mod.SESSIONS.clear()
    monkeypatch.setenv("MUSSELTOOLS_FAILPOINTS", "onnx-perturb")
    with caplog.at_level(logging.WARNING):
        r = mt.run(images, model=tiny_model, store="store", backend="onnx", **KW)
    assert "failed its check against torch" in caplog.text
    assert all("torch threads" in w for w in r.meta["inferred_with"])
    assert len(_graphs(Path("store"))) == 2


WATCH = """
import os, sys

class _Watch:
    def find_spec(self, name, path=None, target=None):
        if name in ("torch", "musseltools.models.onnx_detect"):
            with open(os.path.join(os.environ["IMPORT_WATCH"], f"{name}-{os.getpid()}"), "w") as f:
                f.write(" ".join(sys.argv))
        return None

sys.meta_path.insert(0, _Watch())
"""

RUNS = """
import json, sys
import musseltools as mt
kw = dict(model=sys.argv[1], store=sys.argv[2], imgsz={imgsz}, backend="onnx", quiet=True)
a = mt.run(sys.argv[3], workers=2, **kw)
b = mt.run(sys.argv[4], workers=1, **kw)
print(json.dumps({{"torch": "torch" in sys.modules, "with": a.meta["inferred_with"] + b.meta["inferred_with"],
                  "done": [a.meta["processed_count"], b.meta["processed_count"]]}}))
"""


@pytest.mark.slow
def test_runs_with_a_checked_graph_never_import_torch_in_workers_or_in_process(tiny_model, tmp_path):
    """Once a run has checked the graph, a new process's runs (two worker processes; then in process) infer
    with ONNX Runtime and no process of theirs imports torch: every import of torch anywhere in the process
    tree is recorded by an import hook (sitecustomize) in a folder, and none is."""
    first = tmp_path / "first"
    write_images(first, CHECK_IMAGES, seed=1)
    mt.run(first, model=tiny_model, store=tmp_path / "store", backend="onnx", **KW)  # exports and checks
    hooks, watch = tmp_path / "hooks", tmp_path / "watch"
    hooks.mkdir(), watch.mkdir()
    (hooks / "sitecustomize.py").write_text(WATCH)
    more, most = tmp_path / "more", tmp_path / "most"
    write_images(more, 8, seed=7)
    write_images(most, 3, seed=8)
    env = {**os.environ, "IMPORT_WATCH": str(watch), "PYTHONPATH": os.pathsep.join([str(hooks), str(ROOT)])}
    env.pop("MUSSELTOOLS_FAILPOINTS", None)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(RUNS.format(imgsz=IMGSZ)), str(tiny_model),
                           str(tmp_path / "store"), str(more), str(most)], capture_output=True, text=True,
                          timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["done"] == [8, 3] and out["with"] and all("onnxruntime" in w for w in out["with"])
    lean = [p.name for p in watch.iterdir() if p.name.startswith("musseltools")]
    pids = {name.rsplit("-", 1)[1] for name in lean}
    assert len(pids) >= 2, lean  # the lean predictor imported in more than one process: workers ran
    assert not [p.name for p in watch.iterdir() if p.name.startswith("torch")], sorted(os.listdir(watch))
    assert out["torch"] is False


def test_a_lean_predictor_a_pixel_off_fails_its_check_though_torchs_rule_forgives_it(
        tiny_model, folder_of_six, monkeypatch, caplog):
    """Boxes 1 px too low (a rounding slip in the scaling back) on every image: the comparison with torch
    forgives each for its tied rival, but on the same graph output Ultralytics' post-processing does not
    agree, so the graph is not used: torch's results, the reason said and recorded."""
    import logging

    from musseltools.models import onnx_detect

    real = onnx_detect.scale_boxes

    def slipped(xyxy, input_hw, image_hw):
        out = real(xyxy, input_hw, image_hw)
        out[:, [1, 3]] += 1
        return out

    monkeypatch.setattr(onnx_detect, "scale_boxes", slipped)
    with caplog.at_level(logging.WARNING):
        r = mt.run(folder_of_six, model=tiny_model, store="store", backend="onnx", **KW)
    assert "the torch-free post-processing differs from Ultralytics'" in caplog.text
    [graph] = _graphs(Path("store"))
    assert json.loads(graph.with_suffix(".json").read_text())["check"]["passed"] is False
    assert all("torch threads" in w for w in r.meta["inferred_with"]) and r.status == "completed"
