"""Compaction merges many small parts into few; readers never see an image missing or doubled, not even
while it runs or after it is killed in the middle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
from conftest import IMGSZ, write_images
from contract import assert_same_results, comparable

import musseltools as mt
from musseltools import cli
from musseltools.store.store import Store

N = 24


@pytest.fixture
def run(tmp_path, tiny_model):
    folder = tmp_path / "images"
    write_images(folder, N, seed=8)
    return mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", quiet=True, commit_every=1,
                  workers=1)


def _parts(run) -> int:
    return len(run.store.part_files(run.meta["inference_key"]))


def test_compact_merges_parts_and_changes_no_result(run, capsys):
    before = comparable(run)
    assert _parts(run) == N
    assert cli.main(["compact", run.run_id, "--store", str(run.store.root), "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done == [{"inference_key": run.meta["inference_key"], "parts_before": N, "parts_after": 1, "images": N}]
    fresh = mt.open_run(run.run_id, store=run.store.root)
    after = comparable(fresh)
    assert before[0].equals(after[0]) and before[1].equals(after[1])
    assert fresh.counts() == run.counts()


@pytest.mark.slow
def test_readers_never_see_an_image_missing_or_doubled_during_compaction(run):
    key = run.meta["inference_key"]
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            images, _ = Store(run.store.root).read_results(key)
            seen.append((len(images), images["image_id"].is_unique))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(3):  # new parts between compactions, so each one has work
            write_images(run.store.root.parent / "images", 2, seed=100 + i, start=1000 + 2 * i)
            mt.run(run.store.root.parent / "images", model=run.meta["model"]["path"], imgsz=IMGSZ,
                   store=run.store.root, quiet=True, commit_every=1, workers=1)
            mt.open_run(run.run_id, store=run.store.root)
            from musseltools.store.compaction import compact

            before = len(seen)
            compact(run.store, run.run_id)
            deadline = time.monotonic() + 60  # the reader reads on (a fast compaction may leave it no turn)
            while len(seen) < before + 2 and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        stop.set()
        t.join()
    assert len(seen) > 5
    assert all(unique for _, unique in seen)
    assert all(n >= N for n, _ in seen) and max(n for n, _ in seen) == N + 6


@pytest.mark.slow
def test_a_compaction_killed_in_the_middle_loses_and_doubles_nothing(run, tmp_path):
    before = comparable(run)
    env = {**os.environ, "MUSSELTOOLS_FAILPOINTS": "compaction-merged"}
    proc = subprocess.run([sys.executable, "-m", "musseltools", "compact", run.run_id, "--store", str(run.store.root)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr  # killed between writing the merged part and removing the old
    assert _parts(run) == N + 1  # both the old parts and the merged one are on disk
    middle = comparable(mt.open_run(run.run_id, store=run.store.root))
    assert before[0].equals(middle[0]) and before[1].equals(middle[1])
    from musseltools.store.compaction import compact

    assert compact(run.store, run.run_id)["parts_after"] == 1
    assert_same_results(mt.open_run(run.run_id, store=run.store.root), run)


def test_compact_needs_a_run_or_all(capsys, tmp_path):
    assert cli.main(["compact", "--store", str(tmp_path / "s")]) == 1
    assert "give a RUN_ID or --all" in capsys.readouterr().err


@pytest.mark.slow
def test_a_reader_during_the_deletions_of_a_compaction_sees_every_image_once(run):
    """Each moment of the deletions frozen (a compaction killed after removing the k-th old part's images
    part, before its detections), then a reader whose listing is taken just before a compaction deletes
    every part it listed: the same results, every image exactly once."""
    from musseltools.store.compaction import compact

    key = run.meta["inference_key"]
    before = comparable(run)
    for k in (1, N // 2):
        env = {**os.environ, "MUSSELTOOLS_FAILPOINTS": f"compaction-removed@{k}"}
        proc = subprocess.run([sys.executable, "-m", "musseltools", "compact", run.run_id, "--store",
                               str(run.store.root)], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == -9, proc.stderr
        base = run.store.results_dir(key)
        assert len(list((base / "images").glob("part-*"))) < len(list((base / "detections").glob("part-*")))
        middle = comparable(mt.open_run(run.run_id, store=run.store.root))
        assert before[0].equals(middle[0]) and before[1].equals(middle[1])
    listed: list[list[str]] = []

    class ListsBeforeACompaction(Store):
        def part_files(self, key):
            parts = super().part_files(key)
            if not listed:  # the first listing only: a compaction deletes these parts before they are read
                listed.append([p.name for p in parts])
                compact(Store(run.store.root), run.run_id)
            return parts

    images, dets = ListsBeforeACompaction(run.store.root).read_results(key)
    assert len(listed[0]) > 1 and not set(listed[0]) & {p.name for p in run.store.part_files(key)}
    assert images["image_id"].is_unique and len(images) == N
    assert sorted(images["image_id"]) == sorted(before[0]["image_id"]) and len(dets) == len(before[1])
    assert _parts(run) == 1 and len(list((run.store.results_dir(key) / "detections").glob("part-*"))) == 1
    after = comparable(mt.open_run(run.run_id, store=run.store.root))
    assert before[0].equals(after[0]) and before[1].equals(after[1])


# Compaction over hand-built stores (no model): the tests that judge store/compaction.py in mutation testing
# (`-k hand_built`, docs/testing.md).
def _hb_parts(store, key="k1"):
    from hand_built_store import commit, detections_part, images_part, write_run

    coll = pd.DataFrame({"image_id": ["a", "b", "c"], "path": ["/s/a.jpg", "/s/b.jpg", "/s/c.jpg"]})
    write_run(store, "r1", key, coll)
    commit(store, key, "u1", images_part(["a"], n=[1], at="2026-01-01"), detections_part([("a", 0, "mussel", 0.9, 1.0)]))
    commit(store, key, "u2", images_part(["b", "c"], n=[2, 0], at="2026-01-02"),
           detections_part([("b", 0, "mussel", 0.8, 2.0), ("b", 1, "gaping", 0.4, 9.0)]))
    # a redone image: its later result is the one readers keep, and the one compaction keeps
    commit(store, key, "u3", images_part(["a"], n=[0], at="2026-01-03"), detections_part([]))


def _hb_read(store, key="k1"):
    images, dets = store.read_results(key)
    images = images.sort_values("image_id").reset_index(drop=True)
    return images, dets.sort_values(["image_id", "x1"]).reset_index(drop=True)


def test_hand_built_compaction_merges_every_part_into_one_named_from_them_and_changes_no_result(tmp_path, caplog):
    import hashlib
    import logging

    from musseltools.store.compaction import compact, read_part_rows

    store = Store(tmp_path / "store")
    _hb_parts(store)
    before = _hb_read(store)
    assert before[0]["n_detections"].tolist() == [0, 2, 0]  # a's redo counts, not its first result
    names = [p.name for p in store.part_files("k1")]
    with caplog.at_level(logging.INFO, logger="musseltools.store.compaction"):
        done = compact(store, "r1")
    assert done == {"inference_key": "k1", "parts_before": 3, "parts_after": 1, "images": 3}
    merged = hashlib.sha256("\n".join(names).encode()).hexdigest()[:20]
    assert [p.name for p in store.part_files("k1")] == [f"part-compact-{merged}-0.parquet"]
    assert sorted(p.name for p in (store.results_dir("k1") / "detections").glob("*")) == [f"part-compact-{merged}-0.parquet"]
    assert read_part_rows(store.part_files("k1")[0]) == 3  # each image once: the kept result only
    after = _hb_read(store)
    pd.testing.assert_frame_equal(before[0], after[0])
    pd.testing.assert_frame_equal(before[1], after[1])
    assert caplog.messages == ["compacted results k1: 3 parts -> 1 (3 images)"]
    again = compact(store, "r1")  # one part: nothing to do
    assert again == {"inference_key": "k1", "parts_before": 1, "parts_after": 1, "images": None}
    assert [p.name for p in store.part_files("k1")] == [f"part-compact-{merged}-0.parquet"]


def test_hand_built_compaction_of_no_part_does_nothing_and_a_big_one_is_cut_in_parts_of_rows_per_part(
        tmp_path, monkeypatch):
    from hand_built_store import write_run

    from musseltools.store import compaction

    store = Store(tmp_path / "store")
    write_run(store, "r0", "k0", pd.DataFrame({"image_id": ["a"], "path": ["/s/a.jpg"]}))
    assert compaction.compact(store, "r0") == {"inference_key": "k0", "parts_before": 0, "parts_after": 0,
                                               "images": None}
    _hb_parts(store)
    before = _hb_read(store)
    monkeypatch.setattr(compaction, "ROWS_PER_PART", 2)
    done = compaction.compact(store, "r1")
    assert done == {"inference_key": "k1", "parts_before": 3, "parts_after": 2, "images": 3}
    parts = store.part_files("k1")
    assert [p.name.rsplit("-", 1)[-1] for p in parts] == ["0.parquet", "1.parquet"]
    assert [compaction.read_part_rows(p) for p in parts] == [2, 1]
    after = _hb_read(store)
    pd.testing.assert_frame_equal(before[0], after[0])
    pd.testing.assert_frame_equal(before[1], after[1])


def test_hand_built_compaction_removes_temporaries_and_orphans_and_old_parts_a_killed_one_left(tmp_path):
    from hand_built_store import commit

    from musseltools.store.backends import TMP_SUFFIX
    from musseltools.store.compaction import compact

    store = Store(tmp_path / "store")
    _hb_parts(store)
    before = _hb_read(store)
    tmp = store.results_dir("k1") / "images" / f".part-x.parquet{TMP_SUFFIX}"
    tmp.write_bytes(b"half")
    # what a compaction killed before its removals leaves: a merged part beside the old ones
    images, dets = store.read_results("k1")
    commit(store, "k1", "compact-old-0", images, dets)
    orphan = store.results_dir("k1") / "detections" / "part-never.parquet"
    orphan.write_bytes(b"no images part")
    assert compact(store, "r1")["parts_before"] == 4
    assert not tmp.exists() and not orphan.exists()
    assert len(store.part_files("k1")) == 1 and "compact-old" not in store.part_files("k1")[0].name
    after = _hb_read(store)
    pd.testing.assert_frame_equal(before[0], after[0])
    pd.testing.assert_frame_equal(before[1], after[1])


def test_hand_built_compaction_waits_for_or_refuses_a_run_writing_the_results(tmp_path):
    from musseltools.errors import RunLockedError
    from musseltools.store.compaction import compact, compact_all, compact_key

    store = Store(tmp_path / "store")
    _hb_parts(store)
    with store.lock("k1", run_id="writer"):
        with pytest.raises(RunLockedError, match="writer"):
            compact(store, "r1")
        with pytest.raises(RunLockedError):
            compact(store, "r1", wait=0.2)
        with pytest.raises(RunLockedError):
            compact_all(store, wait=0.2)
        with pytest.raises(RunLockedError):  # by default, neither waits
            compact_all(store)
        with pytest.raises(RunLockedError):
            compact_key(store, "k1", run_id="r1")
    holder = []

    class Watched(Store):
        def lock(self, key, *, run_id, wait=False):
            holder.append((key, run_id, wait))
            return super().lock(key, run_id=run_id, wait=wait)

    assert compact(Watched(store.root), "r1", wait=3)["parts_after"] == 1
    assert holder == [("k1", "r1", 3)]


def test_hand_built_compact_all_compacts_each_inference_key_once(tmp_path):
    from hand_built_store import commit, detections_part, images_part, write_run

    from musseltools.store.compaction import compact_all

    store = Store(tmp_path / "store")
    _hb_parts(store)
    coll = pd.DataFrame({"image_id": ["a"], "path": ["/s/a.jpg"]})
    write_run(store, "r2", "k1", coll, created_at="2026-01-02T00:00:00")  # the same results as r1
    write_run(store, "r3", "k2", coll, created_at="2026-01-03T00:00:00")
    for unit in ("u1", "u2"):
        commit(store, "k2", unit, images_part(["a"]), detections_part([]))
    meta = store.read_run("r3")
    store.write_run({**{k: v for k, v in meta.items() if k != "inference_key"}, "run_id": "r4"})  # no results yet
    seen = []

    class Watched(Store):
        def lock(self, key, *, run_id, wait=False):
            seen.append((key, run_id, wait))
            return super().lock(key, run_id=run_id, wait=wait)

    done = compact_all(Watched(store.root), wait=2)
    assert sorted(d["inference_key"] for d in done) == ["k1", "k2"]
    assert {d["inference_key"]: (d["parts_before"], d["parts_after"]) for d in done} == {"k1": (3, 1), "k2": (2, 1)}
    assert sorted(seen) == [("k1", "r1", 2), ("k2", "r3", 2)]
    assert compact_all(store) == [{"inference_key": k, "parts_before": 1, "parts_after": 1, "images": None}
                                  for k in [d["inference_key"] for d in done]]


def test_hand_built_compaction_of_an_object_store_names_parts_from_their_urls(tmp_path):
    import uuid

    from musseltools.store.compaction import compact

    store = Store(f"memory://compaction-{uuid.uuid4().hex}/store")
    _hb_parts(store)
    before = _hb_read(store)
    assert compact(store, "r1") == {"inference_key": "k1", "parts_before": 3, "parts_after": 1, "images": 3}
    (part,) = store.part_files("k1")
    assert str(part).startswith("memory://") and str(part).rsplit("/", 1)[-1].startswith("part-compact-")
    after = _hb_read(store)
    pd.testing.assert_frame_equal(before[0], after[0])
    pd.testing.assert_frame_equal(before[1], after[1])


def test_hand_built_compaction_killed_after_its_merge_leaves_old_parts_beside_the_merged_one_and_no_change(tmp_path):
    from musseltools.store.compaction import compact

    store = Store(tmp_path / "store")
    _hb_parts(store)
    before = _hb_read(store)
    code = f"from musseltools.store.compaction import compact; from musseltools.store.store import Store; " \
           f"compact(Store({str(store.root)!r}), 'r1')"
    package_root = os.path.dirname(os.path.dirname(mt.__file__))  # the musseltools this test imported
    env = {**os.environ, "MUSSELTOOLS_FAILPOINTS": "compaction-merged", "PYTHONPATH": package_root}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # killed at the failpoint: merged, nothing removed yet
    names = [p.name for p in store.part_files("k1")]
    assert len(names) == 4 and sum(n.startswith("part-compact-") for n in names) == 1
    middle = _hb_read(store)
    pd.testing.assert_frame_equal(before[0], middle[0])
    pd.testing.assert_frame_equal(before[1], middle[1])
    assert compact(store, "r1")["parts_after"] == 1
