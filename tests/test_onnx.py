"""The ONNX Runtime backend (``backend="onnx"``): same results as torch by the contract, a graph exported once
per weights and settings and checked before use, torch whenever it cannot be trusted, and torch keys unchanged."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import IMGSZ, write_images
from contract import assert_same_results, comparable

import musseltools as mt
from musseltools.core.detections import Detections
from musseltools.executors.planning import make_run_id
from musseltools.models import InferenceSettings
from musseltools.models.onnx import compare_detections

KW = {"imgsz": IMGSZ, "quiet": True, "workers": 1}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("onnx") / "images"
    write_images(f, 6, seed=5)
    return f


def _exact(a_run, b_run) -> None:
    """Bit-identical detections (detection ids aside: they derive from the inference key, which differs)."""
    for a, b in zip(comparable(a_run), comparable(b_run)):
        pd.testing.assert_frame_equal(a.drop(columns=["detection_id"], errors="ignore"),
                                      b.drop(columns=["detection_id"], errors="ignore"))


def _new_process() -> None:
    """Forget this process's predictors and sessions, as a new worker process starts without them."""
    from musseltools.executors import task
    from musseltools.models import onnx

    task.PREDICTORS.clear()
    onnx.SESSIONS.clear()


def _graphs(store: Path) -> list[Path]:
    return sorted((Path(store) / "cache" / "onnx").glob("*.onnx"))


def _record(graph: Path) -> dict:
    return json.loads(graph.with_suffix(".json").read_text())


def assert_parity(onnx_run, torch_run, box_tol: float = 0.5) -> None:
    """The parity rule of the check (musseltools.models.onnx.compare_detections), image by image, on the
    stored detections: boxes, and by the model's task the rotated boxes' corners or the mask outlines."""
    assert (onnx_run.meta["processed_count"], onnx_run.meta["failed_count"]) == (
        torch_run.meta["processed_count"], torch_run.meta["failed_count"])
    task = torch_run.meta["model"].get("task") or "detect"
    a, b = onnx_run.detections(onnx_run.conf_floor), torch_run.detections(torch_run.conf_floor)
    for image_id in set(a["image_id"]) | set(b["image_id"]):
        da, db = (Detections(d[["x1", "y1", "x2", "y2"]].to_numpy(), d["confidence"].to_numpy(),
                             d["class_id"].to_numpy(), [np.array([list(v) for v in p], float).reshape(-1, 2) for p in d["polygon"]])
                  for d in (a[a["image_id"] == image_id], b[b["image_id"] == image_id]))
        assert compare_detections(da, db, onnx_run.conf_floor, box_tol, iou=0.7, task=task) is None, image_id


def test_torch_keys_and_run_ids_are_those_made_before_backends_existed():
    """Literals computed on the code before the backend setting: existing stores stay valid."""
    assert InferenceSettings().key("0" * 64) == "8243349145f41b2a"
    assert InferenceSettings(imgsz=320, tile=640, tile_merge="ios").key("ab" * 32, "torchvision") == "2ab56137bea35b32"
    assert make_run_id("c" * 16, "/x/w.pt", 0.5, InferenceSettings(imgsz=320)) == "e51007ea8b94"
    assert InferenceSettings(backend="onnx").key("0" * 64) != InferenceSettings().key("0" * 64)
    assert InferenceSettings(backend="auto").key("0" * 64) != InferenceSettings(backend="onnx").key("0" * 64)
    with pytest.raises(ValueError, match="backend must be one of torch, onnx, auto"):
        InferenceSettings(backend="tensorrt")


@pytest.mark.parametrize("task", ["detect", pytest.param("segment", marks=pytest.mark.slow),
                                  pytest.param("obb", marks=pytest.mark.slow)])
def test_onnx_gives_torchs_results_by_the_contract_and_is_deterministic(model_factory, folder, tmp_path, task):
    model = model_factory(task)
    torch_run = mt.run(folder, model=model, store=tmp_path / "torch", **KW)
    onnx_run = mt.run(folder, model=model, store=tmp_path / "onnx", backend="onnx", **KW)
    assert onnx_run.meta["inference_key"] != torch_run.meta["inference_key"]
    assert onnx_run.meta["settings"]["backend"] == "onnx"
    assert onnx_run.settings_table().loc["backend", "value"] == "onnx"
    [how] = onnx_run.meta["inferred_with"]
    assert how.startswith("cpu, 1 onnxruntime threads"), how  # what ran, with its threads
    [graph] = _graphs(tmp_path / "onnx")
    assert _record(graph)["check"]["passed"] is True
    assert onnx_run.meta["model"]["task"] == task and onnx_run.detections(onnx_run.conf_floor).shape[0] > 0
    assert_parity(onnx_run, torch_run)
    again = mt.run(folder, model=model, store=tmp_path / "onnx2", backend="onnx", **KW)  # a new export, same bytes
    for a, b in zip(comparable(again), comparable(onnx_run)):
        pd.testing.assert_frame_equal(a, b)  # ORT on CPU, fixed threads, batch 1: bit-identical


def test_a_damaged_cached_graph_is_exported_again_never_used(tiny_model, folder, tmp_path, caplog):
    first = mt.run(folder, model=tiny_model, store="store", backend="onnx", **KW)
    [graph] = _graphs(Path("store"))
    data = bytearray(graph.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\0" * 64  # a few damaged bytes: still a loadable file?
    graph.write_bytes(bytes(data))
    other = tmp_path / "more"
    write_images(other, 5, seed=6)  # at least CHECK_IMAGES: the new graph is checked and its verdict kept
    _new_process()
    with caplog.at_level(logging.WARNING):
        second = mt.run(other, model=tiny_model, store="store", backend="onnx", **KW)
    assert "damaged or incomplete: exporting it again" in caplog.text
    assert graph.read_bytes() != bytes(data) and _record(graph)["check"]["passed"] is True
    reference = mt.run(other, model=tiny_model, store="ref", backend="onnx", **KW)
    for a, b in zip(comparable(second), comparable(reference)):
        pd.testing.assert_frame_equal(a, b)
    assert first.status == "completed"


def test_a_graph_that_fails_its_check_is_not_used_and_the_run_says_why(tiny_model, folder, monkeypatch, caplog):
    monkeypatch.setenv("MUSSELTOOLS_FAILPOINTS", "onnx-perturb")  # the graph's boxes come out 2 px off
    with caplog.at_level(logging.WARNING):
        r = mt.run(folder, model=tiny_model, store="store", backend="onnx", **KW)
    assert "the ONNX graph failed its check against torch" in caplog.text and "going on with torch" in caplog.text
    [graph] = _graphs(Path("store"))
    assert _record(graph)["check"]["passed"] is False
    torch_run = mt.run(folder, model=tiny_model, store="torch", **KW)
    _exact(r, torch_run)  # torch's results, exactly
    assert r.meta["inferred_with"] == torch_run.meta["inferred_with"]  # says torch ran, not the setting
    caplog.clear()
    monkeypatch.delenv("MUSSELTOOLS_FAILPOINTS")
    more = Path("more")
    write_images(more, 2, seed=9)
    _new_process()
    with caplog.at_level(logging.WARNING):
        mt.run(more, model=tiny_model, store="store", backend="onnx", **KW)  # the verdict is kept
    assert "failed its check" in caplog.text


def test_a_model_that_cannot_be_exported_runs_on_torch_with_one_warning(tiny_model, folder, monkeypatch, caplog):
    monkeypatch.setenv("MUSSELTOOLS_FAILPOINTS", "onnx-export-fails")
    with caplog.at_level(logging.WARNING, logger="musseltools"):
        r = mt.run(folder, model=tiny_model, store="store", backend="onnx", **KW)
    [line] = [rec.getMessage() for rec in caplog.records if "ONNX" in rec.getMessage()]
    assert "could not be made" in line and "going on with torch" in line and "\n" not in line
    torch_run = mt.run(folder, model=tiny_model, store="torch", **KW)
    _exact(r, torch_run)
    assert r.meta["inferred_with"] == torch_run.meta["inferred_with"]  # says torch ran, not the setting


def test_export_never_tries_to_install_a_package(tiny_model, folder, monkeypatch):
    import ultralytics.utils.checks as checks

    calls = []
    monkeypatch.setattr(checks.subprocess, "check_output", lambda *a, **k: calls.append(a) or "")
    mt.run(folder, model=tiny_model, store="store", backend="onnx", **KW)
    assert _graphs(Path("store")) and calls == []


def test_the_check_counts_at_thresholds_and_matches_boxes():
    names = {0: "live", 1: "dead"}
    a = Detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.4], [0, 0], names=names)
    assert compare_detections(a, a, 0.01) is None
    near = Detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.3996], [0, 0], names=names)
    assert compare_detections(a, near, 0.01) is None  # 0.4 against 0.3996: within 1e-3 of the threshold 0.4
    lower = Detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.39], [0, 0], names=names)
    assert "threshold 0.4" in compare_detections(a, lower, 0.01)
    moved = Detections([[0, 0, 10, 10.6], [20, 20, 30, 30]], [0.9, 0.4], [0, 0], names=names)
    assert "px from the nearest" in compare_detections(a, moved, 0.01)
    assert compare_detections(a, Detections([[0, 0, 10, 10.4], [20, 20, 30, 30]], [0.9, 0.4], [0, 0],
                                            names=names), 0.01) is None
    faint = Detections([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.4, 0.0105], [0, 0, 1],
                       names=names)
    assert compare_detections(faint, a, 0.01) is None  # its twin fell just under the floor: not listed
    kept, other = (Detections([box], [1.0], [0], names=names) for box in ([0, 0, 40, 40], [0, 0, 40, 36]))
    assert compare_detections(kept, other, 0.01, iou=0.7) is None  # NMS broke a tie at 1.0 the other way
    assert "px from the nearest" in compare_detections(kept, other, 0.01, iou=0.95)  # they would both be kept
    lower = Detections([[0, 0, 40, 36]], [0.99], [0], names=names)
    assert "px from the nearest" in compare_detections(kept, lower, 0.01, iou=0.7)  # no tie


@pytest.mark.slow
def test_sigkilled_onnx_run_resumes_to_an_uninterrupted_ones_results(tiny_model, tmp_path, monkeypatch):
    """A run on ONNX Runtime killed (SIGKILL) after its second committed part, through the command line,
    then resumed: bit-identical to one uninterrupted run (one ORT thread, batch 1)."""
    images = tmp_path / "images"
    write_images(images, 8, seed=4)
    argv = [sys.executable, "-m", "musseltools", "run", str(images), "--model", str(tiny_model), "--imgsz",
            str(IMGSZ), "--backend", "onnx", "--commit-every", "2", "--batch-size", "1", "--workers", "1"]
    killed = subprocess.run([*argv, "--store", "store"], capture_output=True, text=True, timeout=240,
                            env={**__import__("os").environ, "MUSSELTOOLS_FAILPOINTS": "part-committed@2"})
    assert killed.returncode == -9, killed.stderr
    done = subprocess.run([*argv, "--store", "store"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    straight = mt.run(images, model=tiny_model, store="other", backend="onnx", commit_every=2, **KW)
    [run_id] = mt.list_runs(store="store")["run_id"]
    resumed = mt.open_run(run_id, store="store")
    assert resumed.status == "completed" and resumed.meta["processed_count"] == 8
    assert_same_results(resumed, straight)


@pytest.mark.slow
def test_faster_rcnn_exports_passes_its_check_and_gives_torchs_results(folder, tmp_path, monkeypatch):
    """torchvision's export of a (tiny, calibrated) Faster R-CNN: the graph passes its check and is used, and
    the run's detections are torch's by the parity rule."""
    from tv_models import SMALL, calibrated_net, save_checkpoint, write_sidecar

    monkeypatch.setenv("MUSSELTOOLS_TORCH_THREADS", "1")
    weights = save_checkpoint(calibrated_net(), tmp_path / "frcnn.pt")
    write_sidecar(weights, f"architecture: {SMALL}\n")
    kw = {"quiet": True, "workers": 1, "conf_floor": 0.05}
    onnx_run = mt.run(folder, model=weights, store=tmp_path / "onnx", backend="onnx", **kw)
    torch_run = mt.run(folder, model=weights, store=tmp_path / "torch", **kw)
    [graph] = _graphs(tmp_path / "onnx")
    assert _record(graph)["check"]["passed"] is True
    assert all(" onnxruntime threads" in w for w in onnx_run.meta["inferred_with"])
    assert_parity(onnx_run, torch_run)  # counts at every threshold but for detections within 1e-3 of it


@pytest.mark.parametrize("task", ["segment", "obb"])
def test_a_segment_or_obb_graph_that_fails_its_check_is_not_used(model_factory, folder, tmp_path, monkeypatch,
                                                                 caplog, task):
    """A segment or OBB graph whose boxes come out 2 px off fails its check: the run completes with torch's
    results, exactly, says why, and records that torch ran."""
    model = model_factory(task)
    monkeypatch.setenv("MUSSELTOOLS_FAILPOINTS", "onnx-perturb")
    with caplog.at_level(logging.WARNING, logger="musseltools"):
        onnx_run = mt.run(folder, model=model, store=tmp_path / "onnx", backend="onnx", **KW)
    assert "the ONNX graph failed its check against torch" in caplog.text and "going on with torch" in caplog.text
    [graph] = _graphs(tmp_path / "onnx")
    assert _record(graph)["check"]["passed"] is False
    monkeypatch.delenv("MUSSELTOOLS_FAILPOINTS")
    torch_run = mt.run(folder, model=model, store=tmp_path / "torch", **KW)
    assert onnx_run.status == "completed" and onnx_run.meta["inferred_with"] == torch_run.meta["inferred_with"]
    _exact(onnx_run, torch_run)


def test_the_check_matches_rotated_boxes_by_corners_and_outlines_by_mask_pixels():
    names = {0: "live", 1: "dead"}

    def one(poly, conf=0.8):
        poly = np.asarray(poly, float)
        return Detections([[*poly.min(0), *poly.max(0)]], [conf], [0], [poly], names=names)

    def seg(poly, conf=0.8):  # a segment's box is the box head's, not its outline's
        return Detections([[0, 0, 20, 20]], [conf], [0], [poly], names=names)

    turned = np.array([[20, 5], [35, 20], [20, 35], [5, 20]], float)  # a rotated box
    assert compare_detections(one(turned), one(np.roll(turned, 1, axis=0)), 0.01, task="obb") is None  # same box
    c, s = np.cos(0.04), np.sin(0.04)  # turned 0.04 rad more: corners 0.6 px away, the hull within 0.02 px
    swapped = ((turned - 20) @ np.array([[c, s], [-s, c]]) + 20)[::-1]  # and listed the other way round
    assert "px from the nearest" in compare_detections(one(turned), one(swapped), 0.01, task="obb")
    assert compare_detections(one(turned), one(swapped), 0.01) is None  # as plain boxes: the same hull
    ring = np.array([[10 + 10 * np.cos(t), 10 + 10 * np.sin(t)] for t in np.linspace(0, 2 * np.pi, 40)[:-1]])
    spur = ring.copy()
    spur[5] += (spur[5] - 10) * 0.25  # one vertex 2.5 px out: 1.7 mask px at 1.5 image px per mask px
    assert compare_detections(seg(ring), seg(spur), 0.01, task="segment", mask_px=1.5) is None  # IoU over 0.9
    small = ring * 0.3 + 7  # a 6 px disc with one vertex 2.5 * 0.3 = 0.75 px out: within 1.5 mask px
    assert compare_detections(seg(small), seg(spur * 0.3 + 7), 0.01, task="segment", mask_px=1.0) is None
    shifted = ring + [0, 2.0]  # the whole outline 2 px down (IoU about 0.87)
    assert "outline" in compare_detections(seg(ring), seg(shifted), 0.01, task="segment", mask_px=1.0)
    assert compare_detections(seg(ring), seg(shifted), 0.01, task="segment", mask_px=1.5) is None
    assert compare_detections(seg(ring), seg(shifted), 0.01) is None  # detect: outlines are not compared
    assert compare_detections(seg(ring, 1.0), seg(shifted, 1.0), 0.01, task="segment") is None  # saturated tie


@pytest.mark.slow
def test_auto_picks_onnx_runtime_on_a_cpu_when_installed_and_torch_otherwise(tiny_model, folder, monkeypatch):
    """``auto``: ONNX Runtime on a CPU when it is installed (and its graph passes the check), else torch."""
    import importlib.metadata

    from musseltools.models import onnx

    assert onnx.backend_in_use("auto", "cpu") == "onnx" and onnx.backend_in_use("auto", "cuda:0") == "torch"
    r = mt.run(folder, model=tiny_model, store="auto", backend="auto", **KW)
    assert all("onnxruntime" in w for w in r.meta["inferred_with"]) and _record(_graphs(Path("auto"))[0])["check"]
    real = importlib.metadata.version

    def without_ort(name):
        if name == "onnxruntime":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", without_ort)
    assert onnx.backend_in_use("auto", "cpu") == "torch" and onnx.backend_in_use("onnx", "cpu") == "onnx"
    _new_process()
    r = mt.run(folder, model=tiny_model, store="auto2", backend="auto", **KW)
    assert all("torch threads" in w for w in r.meta["inferred_with"]) and not _graphs(Path("auto2"))
