"""Concurrency: one writer per set of results, clear errors naming the holder, waiting on request,
recovery from a killed holder, and readers that never see partial data while a run commits."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import IMGSZ, write_images
from contract import comparable
from procs import Zygote

import musseltools as mt
from musseltools.store.store import Store

#: starts processes, kernels or models: left out of `make test-fast`
pytestmark = pytest.mark.slow

COMMIT_EVERY = 2
N_IMAGES = 14


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    monkeypatch.setenv("MUSSELTOOLS_TORCH_THREADS", "1")


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("concurrency") / "survey"
    write_images(folder, N_IMAGES, seed=31)
    return folder


def _argv(survey, model, store, *extra):
    return ["run", str(survey), "--model", str(model), "--imgsz", str(IMGSZ), "--store", str(store),
            "--commit-every", str(COMMIT_EVERY), "--batch-size", "1", "--json", *extra]


def _kw(store, **extra):
    return {"imgsz": IMGSZ, "quiet": True, "store": store, "commit_every": COMMIT_EVERY, "batch_size": 1, **extra}


def _wait_for_lock(store: Path, pid: int, timeout: float = 120) -> dict:
    """Wait until process ``pid`` holds the lock of the store's (only) inference key; its holder record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for info in store.glob("results/*/.lock.json"):
            holder = json.loads(info.read_text())
            if holder["pid"] == pid:
                return holder
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never took the lock")


def test_second_process_gets_a_clear_error_naming_the_holder_or_waits(survey, tiny_model, zygote, tmp_path):
    store = tmp_path / "store"
    pid, out = zygote.start(_argv(survey, tiny_model, store), cwd=tmp_path)
    holder = _wait_for_lock(store, pid)
    os.kill(pid, signal.SIGSTOP)  # hold the lock as long as the test needs
    parts_when_stopped = _parts(store)
    try:
        host = socket.gethostname()
        assert holder["host"] == host
        with pytest.raises(mt.RunLockedError, match=rf"run {holder['run_id']} holds the results of .*: pid {pid} on "
                                                     rf"host {host} since .* wait for it to finish, or ask to wait"):
            mt.run(survey, model=tiny_model, **_kw(store))
        # another question (threshold) over the same results is refused too: one writer per results
        with pytest.raises(mt.RunLockedError, match=rf"pid {pid}"):
            mt.run(survey, model=tiny_model, **_kw(store, threshold=0.2))
        t0 = time.monotonic()
        with pytest.raises(mt.RunLockedError):  # waiting a bounded time, then the same clear error
            mt.run(survey, model=tiny_model, **_kw(store, wait=1.0))
        assert time.monotonic() - t0 >= 1.0
        # the command line says the same in one line and exits 1
        refused = zygote.run(_argv(survey, tiny_model, store), cwd=tmp_path)
        assert refused["rc"] == 1
        assert refused["output"].strip().splitlines()[-1].startswith("musseltools: error: run ")
        assert f"pid {pid} on host {host}" in refused["output"]

        # asked to wait, it waits for the holder and then finds everything done
        waiter, wait_out = zygote.start(_argv(survey, tiny_model, store, "--wait"), cwd=tmp_path)
        result: dict = {}
        in_process = threading.Thread(
            target=lambda: result.setdefault("run", mt.run(survey, model=tiny_model, **_kw(store, wait=True))))
        time.sleep(1.0)
        in_process.start()
        time.sleep(1.0)
        # both waiters are still waiting, and neither has run anything: the holder's run.json and parts
        # are exactly as they were when it was stopped
        assert in_process.is_alive() and "run" not in result
        assert _running(waiter), wait_out.read_text()
        assert wait_out.read_text() == ""  # no JSON result printed yet
        assert _parts(store) == parts_when_stopped
    finally:
        os.kill(pid, signal.SIGCONT)
    assert zygote.wait(pid)["rc"] == 0, out.read_text()
    assert zygote.wait(waiter)["rc"] == 0, wait_out.read_text()
    assert json.loads(wait_out.read_text())["inferred_this_call"] == 0
    in_process.join(120)
    assert result["run"].status == "completed" and result["run"].meta["inferred_this_call"] == 0


def _parts(store: Path) -> list[str]:
    return sorted(p.name for p in store.glob("results/*/images/part-*.parquet"))


def test_lock_of_a_killed_process_is_recovered(survey, tiny_model, zygote, tmp_path):
    store = tmp_path / "store"
    pid, _ = zygote.start(_argv(survey, tiny_model, store), cwd=tmp_path)
    _wait_for_lock(store, pid)
    os.kill(pid, signal.SIGKILL)
    assert zygote.wait(pid)["signal"] == signal.SIGKILL
    stale = next(store.glob("results/*/.lock.json"))
    assert json.loads(stale.read_text())["pid"] == pid  # the record of the dead holder is still there ...
    t0 = time.monotonic()
    run = mt.run(survey, model=tiny_model, **_kw(store))  # ... but the lock is free: no wait, no error
    assert run.status == "completed" and run.meta["processed_count"] == N_IMAGES
    assert json.loads(stale.read_text())["pid"] == os.getpid()
    assert time.monotonic() - t0 < 120


def test_readers_never_see_partial_data_while_a_run_commits(tiny_model, zygote, tmp_path):
    """A notebook reading (status, counts, per-image table) while another process writes: every view
    is made of whole committed units whose rows are already final, and only ever grows. (40 images: a
    reader must see the writer between units; on a busy machine 14 were written between two reads.)"""
    n_images = 40
    survey = tmp_path / "survey"
    write_images(survey, n_images, seed=31)
    store = tmp_path / "store"
    reference = mt.run(survey, model=tiny_model, **_kw(tmp_path / "reference"))
    final_rows = reference.per_image(0.5).set_index("image_id")
    final_dets = reference.detections(reference.conf_floor)
    pid, out = zygote.start(_argv(survey, tiny_model, store), cwd=tmp_path)
    status_pid = None
    observations, last_total, last_done, saved = [], -1, -1, False
    last_listed, listed_states = 0, set()
    run_id = reference.run_id
    while True:
        finished = not _running(pid)  # observe once more after the writer ended
        try:
            listed = mt.list_runs(store=store)  # what a notebook's run list shows meanwhile
            run = mt.open_run(run_id, store=Store(store))  # a fresh reader each time: nothing cached
            meta = run.meta  # read in this order: each later view may only know more, never less
            dets = run.detections(run.conf_floor)
            table = run.per_image(0.5)  # a fixed threshold: thresholds are saved meanwhile
        except (mt.RunNotFoundError, mt.StoreError):  # not created yet (no run.json / collection table)
            assert not finished, out.read_text()
            time.sleep(0.01)
            continue
        done = table[table["processed_at"].notna()]
        # whole units only, each row already the final one, with all of its detections
        assert len(done) % COMMIT_EVERY == 0 or len(done) == n_images
        cols = ["n_detections", "live", "dead", "width", "height"]
        got = done.set_index("image_id")[cols].astype("int64")
        pd.testing.assert_frame_equal(got, final_rows.loc[got.index, cols].astype("int64"))
        # the detections (read just before) are those of whole committed images: all of them, final
        assert set(dets["image_id"]) <= set(got.index)
        per_image_dets = dets.groupby("image_id").size()
        assert (per_image_dets == final_rows.loc[per_image_dets.index, "n_detections"]).all()
        assert len(dets) == len(final_dets[final_dets["image_id"].isin(per_image_dets.index)])
        # status never runs ahead of the committed parts; totals only grow
        assert meta["processed_count"] <= len(done)
        # mt.list_runs (read first) shows this one run, in a valid state, never ahead of what it saw next
        if len(listed):
            assert listed["run_id"].tolist() == [run_id], listed
            row = listed.iloc[0]
            assert row["status"] in ("pending", "running", "completed"), row["status"]
            assert row["total_images"] in (None, n_images) or pd.isna(row["total_images"])
            assert last_listed <= row["processed_count"] <= meta["processed_count"] <= len(done)
            last_listed = row["processed_count"]
            listed_states.add((row["status"], row["processed_count"]))
        else:
            assert last_listed == 0, "a run vanished from list_runs"
        total = sum(run.counts(0.5).values())
        assert total >= last_total and len(done) >= last_done
        last_total, last_done = total, len(done)
        observations.append(len(done))
        if len(done) >= n_images // 2 and not saved:  # another process's status/threshold edits meanwhile
            run.save_thresholds({"live": 0.4, "dead": 0.6})
            status_pid, status_out = zygote.start(["status", run_id, "--store", str(store), "--json"], cwd=tmp_path)
            saved = True
        if finished:
            break
    assert zygote.wait(pid)["rc"] == 0, out.read_text()
    if status_pid is not None:
        assert zygote.wait(status_pid)["rc"] == 0
        assert json.loads(status_out.read_text())["run_id"] == run_id
    assert len(set(observations)) >= 3, f"the reader saw too few states to mean anything: {observations}"
    assert any(s == "running" and 0 < n < n_images for s, n in listed_states), listed_states
    listed = mt.list_runs(store=store).iloc[0]
    assert (listed["status"], listed["processed_count"], listed["total_images"]) == ("completed", n_images, n_images)
    final = mt.open_run(run_id, store=store)
    saved_t = {"live": 0.4, "dead": 0.6}
    assert final.meta["saved_thresholds"] == saved_t, "the writer lost a concurrent update of run.json"
    assert final.meta["counts"] == final.totals == reference.counts(saved_t)
    for got, want in zip(comparable(final), comparable(reference)):
        pd.testing.assert_frame_equal(got, want)


def _running(pid: int) -> bool:
    """Whether a child of the zygote is still running (not yet exited: no zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_status_counts_follow_saved_thresholds(survey, tiny_model, tmp_path):
    """run.json's counts (what ``musseltools status`` prints) always match the thresholds in effect."""
    run = mt.run(survey, model=tiny_model, **_kw(tmp_path / "store"))
    assert run.meta["counts"] == run.counts(0.5)
    run.save_thresholds(0.7)
    assert run.meta["threshold"] == 0.7 and run.meta["counts"] == run.counts(0.7) != run.counts(0.5)
    run.save_thresholds({"live": 0.3, "dead": 0.9})
    assert run.meta["counts"] == run.totals == run.counts({"live": 0.3, "dead": 0.9})
