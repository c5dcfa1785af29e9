"""Compaction merges many small parts into few; readers never see an image missing or doubled, not even
while it runs or after it is killed in the middle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

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
