"""The store: atomic parts, de-duplicated reads, layout readable with ordinary tools."""

from __future__ import annotations

import pandas as pd

import musseltools as mt
from musseltools.store import Store


def test_layout_is_readable_with_pandas(images, tiny_model):
    r = mt.run(images, model=tiny_model, imgsz=128, quiet=True, commit_every=4)
    key = r.meta["inference_key"]
    root = r.store.root / "results" / key
    per_image = pd.read_parquet(root / "images")
    dets = pd.read_parquet(root / "detections")
    assert len(per_image) == 6 and per_image["image_id"].is_unique
    assert {"image_id", "path", "width", "height", "n_detections", "error", "processed_at", "cap_hit"} <= set(
        per_image.columns)
    assert {"image_id", "path", "class_id", "class_name", "confidence", "x1", "y1", "x2", "y2", "polygon"} <= set(
        dets.columns)
    assert per_image["n_detections"].sum() == len(dets)
    assert (r.store.root / "runs" / r.run_id / "run.json").is_file()
    assert (root / "settings.json").is_file()
    assert not list(root.rglob("*.tmp"))


def test_default_store_is_data_store_under_cwd_or_env(tmp_path, monkeypatch, images, tiny_model):
    r = mt.run(images, model=tiny_model, imgsz=128, quiet=True, store=None)
    assert r.store.root == tmp_path / "data" / "store"
    monkeypatch.setenv("MUSSELTOOLS_STORE", str(tmp_path / "elsewhere"))
    assert Store().root == tmp_path / "elsewhere"


def test_retried_unit_overwrites_its_part_without_duplicates(images, tiny_model):
    r = mt.run(images, model=tiny_model, imgsz=128, quiet=True, commit_every=3)
    store, key = r.store, r.meta["inference_key"]
    imgs, dets = store.read_results(key)
    part = sorted((store.results_dir(key) / "images").glob("part-*.parquet"))[0]
    # commit the same unit again, as a retried task would
    import pyarrow.parquet as pq

    store.commit_part(key, part.stem.removeprefix("part-"), pq.read_table(part),
                      pq.read_table(store.results_dir(key) / "detections" / part.name))
    imgs2, dets2 = Store(store.root).read_results(key)
    assert len(imgs2) == len(imgs) and len(dets2) == len(dets)
