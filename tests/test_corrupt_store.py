"""Corrupt store: damaged parts and metadata are detected, reported, quarantined and redone.

Numbers are never silently wrong: an image whose stored result was lost says so in its row until
the run is repeated, and the repeated run gives exactly the numbers of the undamaged store.
"""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import IMGSZ, write_images
from contract import assert_same_results

import musseltools as mt

#: starts processes, kernels or models: left out of `make test-fast`
pytestmark = pytest.mark.slow

KW = {"imgsz": IMGSZ, "quiet": True, "commit_every": 3}


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    monkeypatch.setenv("MUSSELTOOLS_TORCH_THREADS", "1")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model):
    """A completed run (9 images, 3 parts) in a pristine store, copied by each test before damaging it."""
    root = tmp_path_factory.mktemp("reference")
    write_images(root / "survey", 9, seed=21)
    with pytest.MonkeyPatch.context() as mp:  # the same torch threads as the tests: bit-identical floats
        mp.setenv("MUSSELTOOLS_TORCH_THREADS", "1")
        mp.setenv("MUSSELTOOLS_BATCH_SIZE", "1")
        run = mt.run(root / "survey", model=tiny_model, store=root / "store", **KW)
    assert run.status == "completed"
    return run


def _copy(reference, tmp_path) -> mt.Run:
    shutil.copytree(reference.store.root, tmp_path / "store")
    return mt.open_run(reference.run_id, store=tmp_path / "store")


def _parts(run: mt.Run, sub: str = "images"):
    return sorted((run.store.results_dir(run.meta["inference_key"]) / sub).glob("part-*.parquet"))


def _rewrite_n_detections(path):
    t = pq.read_table(path)
    n = pa.compute.add(t["n_detections"], pa.scalar(1, pa.int32()))
    pq.write_table(t.set_column(t.schema.get_field_index("n_detections"), "n_detections", n), path)


DAMAGE = {
    "truncated images part": lambda p, d: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbage images part": lambda p, d: p.write_bytes(b"PAR1 this is not parquet at all PAR1"),
    "empty images part": lambda p, d: p.write_bytes(b""),
    "truncated detections part": lambda p, d: d.write_bytes(d.read_bytes()[:100]),
    "missing detections part": lambda p, d: d.unlink(),
    "foreign parquet file": lambda p, d: pq.write_table(pa.table({"x": [1, 2, 3]}), p),
    "detections that do not add up": lambda p, d: _rewrite_n_detections(p),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_part_is_quarantined_reported_and_redone(damage, reference, tiny_model, tmp_path, caplog):
    run = _copy(reference, tmp_path)
    victim = _parts(run)[1]
    lost_ids = set(pq.read_table(_parts(reference)[1])["image_id"].to_pylist())
    DAMAGE[damage](victim, victim.parent.parent / "detections" / victim.name)

    # a reader notices: the part goes to quarantine, with a note, and a warning names it
    with caplog.at_level(logging.WARNING, logger="musseltools"):
        table = run.per_image()
    assert f"damaged part {victim.name}" in caplog.text and "moved to quarantine" in caplog.text
    qdir = run.store.results_dir(run.meta["inference_key"]) / "quarantine"
    notes = list(qdir.glob("*.txt"))
    assert len(notes) == 1 and notes[0].read_text().strip()
    assert not victim.exists()

    # its images are not silently counted as 0: their rows say what happened and what to do
    lost = table[table["image_id"].isin(lost_ids)]
    assert len(lost) == 3
    assert lost["error"].str.contains("damaged results part.*run the same run again", regex=True).all()
    kept = table[~table["image_id"].isin(lost_ids)]
    assert kept["error"].isna().all()
    ref = reference.per_image()
    pd.testing.assert_frame_equal(kept.reset_index(drop=True),
                                  ref[~ref["image_id"].isin(lost_ids)].reset_index(drop=True),
                                  check_dtype=False)  # integer columns hold NaN for the lost rows

    # the run again: only the lost images are inferred, and every number is the undamaged one
    again = mt.run(reference.meta["collection"]["source"]["root"], model=tiny_model, store=tmp_path / "store", **KW)
    assert again.run_id == reference.run_id
    assert again.meta["inferred_this_call"] == 3
    assert_same_results(again, reference)
    assert again.totals == reference.totals


def test_garbage_run_metadata_is_reported_then_rebuilt(reference, tiny_model, tmp_path, caplog):
    run = _copy(reference, tmp_path)
    meta_path = run.store.run_dir(run.run_id) / "run.json"
    meta_path.write_text('{"run_id": "' + run.run_id + '", "status": "compl')  # cut short
    with pytest.raises(mt.CorruptStoreError, match=r"run metadata .*run\.json.* is damaged .*results themselves are "
                                                    r"safe.*run `musseltools run` .* again"):
        mt.open_run(run.run_id, store=tmp_path / "store")
    with caplog.at_level(logging.WARNING, logger="musseltools"):
        assert mt.list_runs(store=tmp_path / "store").empty
    assert "left out of the list" in caplog.text
    again = mt.run(reference.meta["collection"]["source"]["root"], model=tiny_model, store=tmp_path / "store", **KW)
    assert again.meta["inferred_this_call"] == 0  # the results were safe: nothing is inferred again
    assert_same_results(again, reference)
    assert list(meta_path.parent.glob("run.json.damaged-*")), "the damaged metadata is kept aside for inspection"


@pytest.mark.parametrize("content", [
    "[]", "null", '{"run_id": "someone-else"}', '{"status": "completed"}', "\udcff".encode("utf-8", "surrogateescape"),
])
def test_run_metadata_that_is_valid_json_but_not_a_run_is_corrupt(content, reference, tiny_model, tmp_path):
    run = _copy(reference, tmp_path)
    meta_path = run.store.run_dir(run.run_id) / "run.json"
    if isinstance(content, bytes):
        meta_path.write_bytes(content)
    elif content == '{"status": "completed"}':
        meta_path.write_text(json.dumps({"run_id": run.run_id, "status": "completed"}))
    else:
        meta_path.write_text(content)
    with pytest.raises(mt.CorruptStoreError, match="is damaged"):
        _ = mt.open_run(run.run_id, store=tmp_path / "store").totals
    again = mt.run(reference.meta["collection"]["source"]["root"], model=tiny_model, store=tmp_path / "store", **KW)
    assert_same_results(again, reference)


def test_damaged_collection_table_cube_and_scan_cache_are_rebuilt(reference, tiny_model, tmp_path):
    run = _copy(reference, tmp_path)
    (run.store.run_dir(run.run_id) / "collection.parquet").write_bytes(b"garbage")
    with pytest.raises(mt.CorruptStoreError, match="collection table of run .* is damaged .* run it again"):
        run.per_image()
    cube_meta = run.store.run_dir(run.run_id) / "cube.zarr" / "zarr.json"
    cube_meta.write_text("{ not json")
    (tmp_path / "store" / "cache" / "scan.parquet").write_bytes(b"garbage")
    again = mt.run(reference.meta["collection"]["source"]["root"], model=tiny_model, store=tmp_path / "store", **KW)
    assert again.meta["inferred_this_call"] == 0
    assert_same_results(again, reference)
    cube = again.cube()
    assert int(cube["count"].sel(threshold=again.threshold).sum()) == sum(reference.totals.values())
    cube_meta.write_text("{ not json")  # damaged after the run: a reader rebuilds it from Parquet
    assert int(again.cube()["count"].sel(threshold=again.threshold).sum()) == sum(reference.totals.values())
