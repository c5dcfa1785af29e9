"""Weights and paths: the weights' SHA-256 is recorded and checked on resume; exports stay in their
folder whatever the image names (or a tampered store) say; .pt files are pickles that run code."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import IMGSZ, write_images

import musseltools as mt
from musseltools.cli import main

#: starts processes, kernels or models: left out of `make test-fast`
pytestmark = pytest.mark.slow

KW = {"imgsz": IMGSZ, "quiet": True, "store": "store"}


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    monkeypatch.setenv("MUSSELTOOLS_TORCH_THREADS", "1")


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_weights_sha256_is_recorded_everywhere_results_come_from(images, tiny_model):
    run = mt.run(images, model=tiny_model, **KW)
    digest = _sha256(tiny_model)
    assert run.meta["model"]["fingerprint"] == digest
    settings = json.loads((run.store.results_dir(run.meta["inference_key"]) / "settings.json").read_text())
    assert settings["model"]["fingerprint"] == digest
    assert run.cube().attrs["model_sha256"] == digest


def test_resuming_with_changed_weights_is_refused(tmp_path, images, model_factory, capsys):
    weights = tmp_path / "model.pt"
    shutil.copy(model_factory("detect", 0), weights)
    original = _sha256(weights)
    write_images(images, 4, seed=9, start=100)
    # interrupted after the first unit (a model crash), so there is something to resume
    from musseltools.models import YoloPredictor

    calls = {"n": 0}
    orig = YoloPredictor.predict

    def crash_later(self, batch):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("simulated crash")
        return orig(self, batch)

    YoloPredictor.predict = crash_later
    try:
        with pytest.raises(mt.InferenceError):
            mt.run(images, model=weights, commit_every=2, **KW)
    finally:
        YoloPredictor.predict = orig
    run_id = mt.list_runs(store="store").iloc[0]["run_id"]
    kept = mt.open_run(run_id, store="store").per_image()["processed_at"].notna().sum()
    assert kept == 2

    shutil.copy(model_factory("detect", 1), weights)  # other weights under the same name
    changed = _sha256(weights)
    with pytest.raises(mt.ModelChangedError) as err:
        mt.run(images, model=weights, commit_every=2, **KW)
    msg = str(err.value)
    assert f"run {run_id}" in msg and original[:12] in msg and changed[:12] in msg
    assert "restore the original weights" in msg and "its results are kept" in msg
    run = mt.open_run(run_id, store="store")
    assert run.per_image()["processed_at"].notna().sum() == kept  # nothing mixed in, nothing lost
    assert run.meta["model"]["fingerprint"] == original

    # the command line refuses in one line, exit status 1
    assert main(["run", str(images), "--model", str(weights), "--imgsz", str(IMGSZ), "--store", "store"]) == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith("musseltools: error: weights file") and "\n" not in line

    # the original content resumes where it stopped; the new one, under a new name, is a new run
    shutil.copy(model_factory("detect", 0), weights)
    resumed = mt.run(images, model=weights, commit_every=2, **KW)
    assert resumed.run_id == run_id and resumed.meta["inferred_this_call"] == 10 - kept
    other = tmp_path / "model-v2.pt"
    shutil.copy(model_factory("detect", 1), other)
    fresh = mt.run(images, model=other, **KW)
    assert fresh.run_id != run_id and fresh.meta["model"]["fingerprint"] == changed
    assert fresh.meta["inference_key"] != resumed.meta["inference_key"]  # results never shared across weights


def test_same_weights_under_another_name_share_results(tmp_path, images, tiny_model):
    first = mt.run(images, model=tiny_model, **KW)
    copy = tmp_path / "renamed.pt"
    shutil.copy(tiny_model, copy)
    second = mt.run(images, model=copy, **KW)
    assert second.run_id != first.run_id
    assert second.meta["inference_key"] == first.meta["inference_key"]
    assert second.meta["inferred_this_call"] == 0


HOSTILE = [
    "../../escaped.jpg", "/etc/cron.d/evil.jpg", "sub/../../../up.jpg", "..\\..\\windows.jpg", "C:\\Windows\\x.jpg",
    "nul\x00byte.jpg", "new\nline.jpg", "..", ".", "", "~/home.jpg", "//server/share/x.jpg", "a/./b/../../../c.jpg",
    "x" * 400 + ".jpg", "é" * 200 + ".jpg",
]


def test_exports_stay_in_their_folder_whatever_the_store_says(tmp_path, images, tiny_model):
    """A store may come from someone else: its image paths are data, never a place to write to."""
    run = mt.run(images, model=tiny_model, **KW)
    coll_path = run.store.run_dir(run.run_id) / "collection.parquet"
    pristine = pd.read_parquet(coll_path)
    root = run.meta["collection"]["source"]["root"]
    n = len(pristine)
    for k in range(0, len(HOSTILE), n):  # every hostile name, as a path in and outside the folder
        for inside in (True, False):
            coll = pristine.copy()
            names = (HOSTILE[k:k + n] + HOSTILE[:n])[:n]
            coll["path"] = [f"{root}/{name}" if inside else name for name in names]
            coll.to_parquet(coll_path)
            out = tmp_path / f"out{k}{inside}" / "polygons"
            files = run.export_polygons(out)
            assert len(files) == n
            assert all(Path(f).resolve().is_relative_to(out.resolve()) for f in files)
            written = [p for p in out.parent.rglob("*") if p.is_file()]
            assert sorted(written) == sorted(Path(f) for f in files)  # nothing written anywhere else
            assert all(len(p.name.encode("utf-8", "surrogateescape")) <= 255 for p in written)
    assert not (tmp_path / "escaped.json").exists() and not Path("/etc/cron.d/evil.json").exists()


def test_every_hostile_name_is_written_inside(tmp_path):
    from musseltools.runs.run import _safe_relative

    for name in HOSTILE:
        for root in (None, "/data/survey"):
            for path in (name, f"/data/survey/{name}"):
                rel = _safe_relative(path, root)
                assert not rel.is_absolute(), (path, rel)
                assert ".." not in rel.parts and rel.suffix == ".json", (path, rel)
                assert all(len(p.encode("utf-8", "surrogateescape")) <= 255 for p in rel.parts)
                assert "\x00" not in str(rel) and "\n" not in str(rel)
                target = (tmp_path / "out" / rel).resolve()
                assert target.is_relative_to((tmp_path / "out").resolve()), (path, rel)


def test_symlinked_subfolder_in_the_output_folder_is_refused(tmp_path, tiny_model):
    survey = tmp_path / "survey"
    write_images(survey / "site", 2)
    run = mt.run(survey, model=tiny_model, **KW)
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    os.symlink(outside, out / "site")
    with pytest.raises(mt.MusselToolsError, match=r"refusing to write .* outside the output folder"):
        run.export_polygons(out)
    assert list(outside.iterdir()) == []


def test_two_images_with_one_export_name_get_two_files(tmp_path, tiny_model):
    survey = tmp_path / "survey"
    write_images(survey, 1, ext="jpg")
    write_images(survey, 1, ext="png", seed=5)  # img0000.jpg and img0000.png -> img0000.json twice
    run = mt.run(survey, model=tiny_model, **KW)
    files = run.export_polygons(tmp_path / "out")
    assert len({Path(f).name for f in files}) == 2
    assert {json.loads(Path(f).read_text())["image"] for f in files} == {str(survey / "img0000.jpg"),
                                                                        str(survey / "img0000.png")}


def test_pt_files_are_pickles_that_run_code_so_load_only_trusted_weights(tmp_path):
    """Why the README warns: loading a .pt file runs whatever its pickle says, before any check. Here a
    harmless one creates a file; a hostile one could do anything the user can."""
    import torch

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": Payload()}, tmp_path / "hostile.pt")
    with pytest.raises(mt.ModelLoadError):
        mt.run(tmp_path, model=tmp_path / "hostile.pt", **KW)
    assert marker.exists(), "loading the weights executed code from the file"
