"""The store: atomic parts, de-duplicated reads, layout readable with ordinary tools."""

from __future__ import annotations

import pandas as pd

import musseltools as mt
from musseltools.store.store import Store


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


def test_an_image_committed_in_several_parts_is_read_once(images, tiny_model):
    """The same images committed again under other units (a unit retried after the plan changed, or by a
    second worker) reach the de-duplication in ``Store.read_results``: each image is read once, its
    latest successful result wins over an earlier one and over a later error, and only the detections
    of the chosen part are kept."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    r = mt.run(images, model=tiny_model, imgsz=128, quiet=True, commit_every=3)
    store, key = r.store, r.meta["inference_key"]
    imgs, dets = store.read_results(key)
    part = sorted((store.results_dir(key) / "images").glob("part-*.parquet"))[0]
    it, dt = pq.read_table(part), pq.read_table(store.results_dir(key) / "detections" / part.name)
    assert len(dt) > 0, "the unit needs detections to tell the parts apart"
    later = pa.array([t + pd.Timedelta(seconds=60) for t in it["processed_at"].to_pylist()], it.schema.field("processed_at").type)
    # a retry whose detections are shifted by one pixel (so that the kept part can be told)
    shifted = dt.set_column(dt.schema.get_field_index("x1"), "x1", pa.compute.add(dt["x1"], 1.0))
    store.commit_part(key, "zz-retry", it.set_column(it.schema.get_field_index("processed_at"), "processed_at", later),
                      shifted)
    # an even later failed attempt of the same images: an error never replaces a result
    even_later = pa.array([t + pd.Timedelta(seconds=120) for t in it["processed_at"].to_pylist()], later.type)
    failed = it.set_column(it.schema.get_field_index("processed_at"), "processed_at", even_later)
    failed = failed.set_column(failed.schema.get_field_index("error"), "error", pa.array(["boom"] * len(it), pa.string()))
    failed = failed.set_column(failed.schema.get_field_index("n_detections"), "n_detections",
                               pa.array([0] * len(it), failed.schema.field("n_detections").type))
    store.commit_part(key, "zzz-failed", failed, dt.slice(0, 0))
    assert len(list((store.results_dir(key) / "images").glob("part-*.parquet"))) == 4  # 2 units + 2 retries

    imgs2, dets2 = Store(store.root).read_results(key)
    assert len(imgs2) == len(imgs) and imgs2["image_id"].is_unique
    assert len(dets2) == len(dets)
    assert imgs2["error"].isna().all()
    retried = set(it["image_id"].to_pylist())
    mine = dets2[dets2["image_id"].isin(retried)].sort_values(["image_id", "confidence"]).reset_index(drop=True)
    want = dets[dets["image_id"].isin(retried)].sort_values(["image_id", "confidence"]).reset_index(drop=True)
    assert (mine["x1"] - want["x1"]).round(3).eq(1.0).all()  # the later successful retry's detections
    chosen = imgs2.set_index("image_id").loc[sorted(retried), "processed_at"]
    assert (chosen > imgs.set_index("image_id").loc[sorted(retried), "processed_at"]).all()
