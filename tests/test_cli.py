"""The command-line contract: names, flags, JSON keys and exit codes that scripts rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import IMGSZ

from musseltools.cli import main

RUN_KEYS = {"run_id", "status", "total_images", "processed_count", "failed_count", "threshold", "counts",
            "inferred_this_call"}


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, images, model, *extra) -> dict:
    code, out, err = cli(capsys, "run", images, "--model", model, "--imgsz", IMGSZ, "--store", "store", "--json",
                         *extra)
    assert code == 0, err
    return json.loads(out)


def test_run_json_contract_and_resume(capsys, images, tiny_model):
    first = run_json(capsys, images, tiny_model, "--threshold", "0.4", "--commit-every", "2", "--batch-size", "2",
                     "--conf-floor", "0.02")
    assert set(first) == RUN_KEYS
    assert first["status"] == "completed"
    assert (first["total_images"], first["processed_count"], first["failed_count"]) == (6, 6, 0)
    assert first["threshold"] == 0.4 and first["inferred_this_call"] == 6
    assert set(first["counts"]) == {"live", "dead"}
    again = run_json(capsys, images, tiny_model, "--threshold", "0.4", "--commit-every", "2", "--batch-size", "2",
                     "--conf-floor", "0.02")
    assert again["run_id"] == first["run_id"] and again["inferred_this_call"] == 0
    assert again["counts"] == first["counts"]


def test_counts_json_matches_python_and_needs_no_inference(capsys, images, tiny_model):
    import musseltools as mt

    r = run_json(capsys, images, tiny_model)
    code, out, _ = cli(capsys, "counts", r["run_id"], "--threshold", "0.3", "--store", "store", "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"run_id", "threshold", "counts", "images", "corrections_applied", "model_counts"}
    assert doc["corrections_applied"] == 0 and doc["model_counts"] == doc["counts"]
    assert doc["threshold"] == 0.3
    run = mt.open_run(r["run_id"], store="store")
    assert doc["counts"] == run.counts(0.3)
    assert len(doc["images"]) == 6
    assert set(doc["images"][0]) == {"image_id", "path", "counts", "error"}
    assert sum(im["counts"]["live"] for im in doc["images"]) == doc["counts"]["live"]
    # below the floor: a one-line error, non-zero exit
    code, out, err = cli(capsys, "counts", r["run_id"], "--threshold", "0.001", "--store", "store", "--json")
    assert code != 0 and out == ""
    assert err.startswith("musseltools: error: threshold 0.001 is below the confidence floor")
    assert err.count("\n") == 1


def test_status_lists_runs_and_shows_one(capsys, images, tiny_model):
    r = run_json(capsys, images, tiny_model)
    code, out, _ = cli(capsys, "status", "--store", "store", "--json")
    assert code == 0
    runs = json.loads(out)
    assert [x["run_id"] for x in runs] == [r["run_id"]]
    code, out, _ = cli(capsys, "status", r["run_id"], "--store", "store", "--json")
    info = json.loads(out)
    assert info["status"] == "completed" and info["total_images"] == 6 and info["counts"] == r["counts"]
    assert info["model"]["fingerprint"] and info["settings"]["conf_floor"] == 0.01
    code, out, _ = cli(capsys, "status", r["run_id"], "--store", "store")
    assert "completed" in out and "6/6" in out
    code, _, err = cli(capsys, "status", "nosuchrun", "--store", "store")
    assert code == 1 and "no run 'nosuchrun'" in err


def test_status_of_every_run_and_list_runs_show_the_thresholds_in_effect(capsys, images, tiny_model):
    import musseltools as mt

    r = run_json(capsys, images, tiny_model, "--threshold", "0.4")
    run = mt.open_run(r["run_id"], store="store")
    run.save_thresholds({"live": 0.3, "dead": 0.2})  # run.json keeps "threshold": 0.4, as asked
    assert mt.list_runs(store="store")["threshold"].tolist() == [{"live": 0.3, "dead": 0.2}]
    code, out, _ = cli(capsys, "status", "--store", "store", "--json")
    listed = json.loads(out)[0]
    assert listed["threshold"] == {"live": 0.3, "dead": 0.2} and listed["counts"] == run.counts()
    code, out, _ = cli(capsys, "status", "--store", "store")
    assert "live 0.30, dead 0.20" in out and "0.4" not in out
    code, one, _ = cli(capsys, "status", r["run_id"], "--store", "store")
    assert "counts at live 0.30, dead 0.20" in one
    run.save_thresholds(0.35)
    assert mt.list_runs(store="store")["threshold"].tolist() == [0.35]
    code, out, _ = cli(capsys, "status", "--store", "store")
    assert " 0.35 " in out


def test_export_polygons_in_the_old_format(capsys, tmp_path, images, tiny_model):
    r = run_json(capsys, images, tiny_model)
    out_dir = tmp_path / "polys"
    code, out, _ = cli(capsys, "export-polygons", r["run_id"], out_dir, "--threshold", "0.3", "--store", "store")
    assert code == 0 and "wrote 6 polygon files" in out
    files = sorted(out_dir.glob("*.json"))
    assert [f.name for f in files] == [f"img{i:04d}.json" for i in range(6)]
    doc = json.loads(files[0].read_text())
    assert {"polygons", "live_count", "dead_count", "threshold", "image_width", "image_height"} <= set(doc)
    assert doc["threshold"] == 0.3 and (doc["image_width"], doc["image_height"]) == (128, 96)
    assert doc["live_count"] + doc["dead_count"] == len(doc["polygons"])
    if doc["polygons"]:
        poly = doc["polygons"][0]
        assert set(poly) == {"coords", "confidence", "class"}
        assert poly["confidence"] >= 0.3 and poly["class"] in ("live", "dead")
        assert len(poly["coords"]) == 4 and all(len(xy) == 2 for xy in poly["coords"])


def test_run_errors_are_one_line_and_nonzero(capsys, tmp_path, images):
    code, out, err = cli(capsys, "run", images, "--model", tmp_path / "nope.pt", "--store", "store", "--json")
    assert code == 1 and out == ""
    assert err == f"musseltools: error: weights file '{tmp_path / 'nope.pt'}' does not exist — expected an " \
                  "Ultralytics YOLO .pt file — check the --model path\n"
    with pytest.raises(SystemExit) as exc:
        main(["run", str(images)])  # --model is required
    assert exc.value.code == 2


@pytest.mark.slow
def test_python_dash_m_and_console_script(tmp_path, images, tiny_model):
    env = {**os.environ, "MUSSELTOOLS_BATCH_SIZE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "musseltools", "run", str(images), "--model", str(tiny_model), "--imgsz", str(IMGSZ),
         "--store", str(tmp_path / "s"), "--json"], capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total_images"] == 6
    exe = os.path.join(os.path.dirname(sys.executable), "musseltools")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("musseltools ")


def test_human_summary_says_when_nothing_was_inferred(capsys, images, tiny_model):
    args = ("run", images, "--model", tiny_model, "--imgsz", IMGSZ, "--store", "store", "--quiet")
    code, out, _ = cli(capsys, *args)
    assert code == 0 and "6 images inferred in this call" in out
    code, out, _ = cli(capsys, *args)
    assert "nothing to infer" in out and "(no inference)" in out


def _cli_process(tmp_path, images, model) -> list[str]:
    return [sys.executable, "-m", "musseltools", "run", str(images), "--model", str(model), "--imgsz", str(IMGSZ),
            "--store", str(tmp_path / "s"), "--json"]


@pytest.mark.slow
def test_json_into_a_reader_that_went_away_ends_quietly(tmp_path, images, tiny_model):
    """``musseltools run ... --json | head -1``: no BrokenPipeError traceback, exit 141 (or 0 if it was read)."""
    env = {**os.environ, "MUSSELTOOLS_BATCH_SIZE": "1"}
    proc = subprocess.Popen(_cli_process(tmp_path, images, tiny_model), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the JSON is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) in (0, 141), err
    assert "Traceback" not in err and "Broken pipe" not in err and "Exception ignored" not in err, err


@pytest.mark.slow
def test_a_fresh_machine_prints_no_ultralytics_settings_banner(tmp_path, images, tiny_model):
    """Ultralytics announces the settings file it creates on first import (on stdout); it must not break
    ``--json`` or clutter ``make demo``."""
    env = {**os.environ, "MUSSELTOOLS_BATCH_SIZE": "1", "YOLO_CONFIG_DIR": str(tmp_path / "config")}
    proc = subprocess.run(_cli_process(tmp_path, images, tiny_model), capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["inferred_this_call"] == 6
    assert list((tmp_path / "config").rglob("settings.json")), "Ultralytics did create its settings file"
    assert "Ultralytics Settings" not in proc.stdout + proc.stderr
