"""Object storage: a store at ``s3://bucket/prefix`` and images under ``s3://``, against a real S3 API
server (moto in server mode) on 127.0.0.1: the same results as a local run, resumes that infer nothing,
no lost run-metadata updates under concurrent writers, and worker processes that share no folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import IMGSZ, write_images
from contract import assert_same_results, comparable
from procs import still_alive

import musseltools as mt
from musseltools.store.runmeta import update_run_meta
from musseltools.store.store import Store

pytest.importorskip("s3fs")
pytest.importorskip("moto")
pytestmark = pytest.mark.slow

N = 8
BUCKET = "survey"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free loopback port, with the standard AWS environment pointing at it."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL": endpoint,
           "AWS_DEFAULT_REGION": "us-east-1"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    yield fs
    mp.undo()
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("objects") / "images"
    write_images(f, N, seed=33)
    return f


@pytest.fixture(scope="module")
def s3_images(s3, folder) -> str:
    for p in sorted(folder.iterdir()):
        s3.pipe_file(f"{BUCKET}/images/{p.name}", p.read_bytes())
    return f"s3://{BUCKET}/images/"


def _by_name(run) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's tables (as :func:`contract.comparable`) with paths as file names: the same store's results before
    and after a compaction compare exactly (no inference in between)."""
    table, dets = comparable(run)
    for t in (table, dets):
        if "path" in t:
            t["path"] = t["path"].map(lambda p: p.rsplit("/", 1)[-1])
    return table.sort_values(["image_id", "path"]).reset_index(drop=True), dets


def test_a_run_to_s3_with_s3_images_equals_a_local_run_and_resumes(s3, s3_images, folder, tiny_model, tmp_path):
    local = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", workers=1, quiet=True)
    url = f"s3://{BUCKET}/stores/a"
    remote = mt.run(s3_images, model=tiny_model, imgsz=IMGSZ, store=url, workers=1, quiet=True, commit_every=3)
    assert remote.status == "completed"
    assert remote.meta["inferred_this_call"] == N
    # parts are whole objects in the bucket, images parts beside their detections parts
    images_parts = s3.glob(f"{BUCKET}/stores/a/results/*/images/part-*.parquet")
    dets_parts = s3.glob(f"{BUCKET}/stores/a/results/*/detections/part-*.parquet")
    assert len(images_parts) == len(dets_parts) == 3
    assert_same_results(remote, local, by_name=True)
    # a resume infers nothing
    again = mt.run(s3_images, model=tiny_model, imgsz=IMGSZ, store=url, workers=1, quiet=True, commit_every=3)
    assert again.run_id == remote.run_id and again.meta["inferred_this_call"] == 0
    # counts, the cube and the export read back from S3, in a fresh Store
    back = mt.open_run(remote.run_id, store=url)
    assert back.counts(0.3) == local.counts(0.3) and back.counts(0.6) == local.counts(0.6)
    cube, local_cube = back.cube(), local.cube()
    assert s3.exists(f"{BUCKET}/stores/a/runs/{remote.run_id}/cube.zarr/zarr.json")
    for var in local_cube.data_vars:
        assert (cube[var].values == local_cube[var].values).all()
    out = back.export_polygons(tmp_path / "export")
    ref = local.export_polygons(tmp_path / "export-local")
    assert sorted(p.name for p in out) == sorted(p.name for p in ref)
    assert all(a.read_text().replace(s3_images, "") == b.read_text().replace(str(folder) + "/", "")
               for a, b in zip(sorted(out), sorted(ref)))
    assert [r["run_id"] for r in Store(url).list_runs()] == [remote.run_id]


def test_worker_processes_against_s3(s3, s3_images, folder, tiny_model, tmp_path):
    local = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", workers=1, quiet=True)
    url = f"s3://{BUCKET}/stores/workers"
    remote = mt.run(s3_images, model=tiny_model, imgsz=IMGSZ, store=url, workers=2, quiet=True, commit_every=2)
    assert remote.status == "completed" and remote.meta["inferred_this_call"] == N
    assert_same_results(remote, local, by_name=True)


def test_the_command_line_runs_and_counts_on_s3(s3, s3_images, folder, tiny_model, tmp_path, capsys):
    from musseltools import cli

    local = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", workers=1, quiet=True)
    url = f"s3://{BUCKET}/stores/cli"
    args = ["run", s3_images, "--model", str(tiny_model), "--imgsz", str(IMGSZ), "--store", url, "--workers", "1",
            "--json"]
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "completed" and out["inferred_this_call"] == N and out["counts"] == local.meta["counts"]
    assert cli.main(args) == 0 and json.loads(capsys.readouterr().out)["inferred_this_call"] == 0  # resumes
    assert cli.main(["counts", out["run_id"], "--threshold", "0.3", "--store", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == local.counts(0.3)
    assert cli.main(["status", out["run_id"], "--store", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"


def test_a_worker_killed_mid_run_on_s3_costs_nothing(s3, s3_images, folder, tiny_model, tmp_path, monkeypatch):
    local = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", workers=1, quiet=True)
    url = f"s3://{BUCKET}/stores/killed"
    kills = tmp_path / "kills.log"
    monkeypatch.setenv("MUSSELTOOLS_FAILPOINTS", "image-read@3")  # each first worker dies on its third image
    monkeypatch.setenv("MUSSELTOOLS_FAILPOINTS_LOG", str(kills))  # each kill is logged: name, pid, image
    handle = mt.run(s3_images, model=tiny_model, imgsz=IMGSZ, store=url, workers=2, commit_every=2, quiet=True,
                    background=True)
    threading.Event().wait(0.5)
    monkeypatch.delenv("MUSSELTOOLS_FAILPOINTS")  # workers started after that are left alone
    remote = handle.wait(timeout=240)
    killed = [int(line.split()[1]) for line in kills.read_text().splitlines() if line.startswith("image-read ")]
    assert killed, "no worker was killed: the test proved nothing"
    assert not still_alive([psutil.Process(pid) for pid in killed if psutil.pid_exists(pid)])
    assert remote.status == "completed" and remote.meta["failed_count"] == 0
    assert_same_results(remote, local, by_name=True)  # nothing lost, no image twice


def test_concurrent_run_metadata_updates_lose_nothing(s3):
    """Conditional PUTs (If-Match / If-None-Match): every increment of every writer survives."""
    url = f"s3://{BUCKET}/stores/meta"
    writers, each = 4, 10

    def bump(meta):
        return {"n": meta.get("n", 0) + 1}

    def writer(i: int) -> None:
        store = Store(url)
        for _ in range(each):
            update_run_meta(store, "r1", bump, **{f"w{i}": True})

    update_run_meta(Store(url), "r1", status="running", threshold=0.5, settings={}, model={"fingerprint": "x"},
                    inference_key="k", collection={})
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    raw = Store(url).objects.read("runs/r1/run.json")
    meta = json.loads(raw)
    assert meta["n"] == writers * each
    assert all(meta[f"w{i}"] for i in range(writers))


def test_the_key_lock_is_a_lease_object(s3):
    url = f"s3://{BUCKET}/stores/lock"
    a, b = Store(url), Store(url)
    with a.lock("k", run_id="r-a"):
        assert b.lock_holder("k")["run_id"] == "r-a"
        with pytest.raises(mt.RunLockedError, match="r-a"), b.lock("k", run_id="r-b"):
            pass
    with b.lock("k", run_id="r-b", wait=5):
        pass
    assert b.lock_holder("k") is None


_HOLDER = """
import sys, time
from musseltools.store import Store
with Store(sys.argv[1]).lock("k", run_id=sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
print("released", flush=True)
"""


def _holder(url: str, run_id: str, seconds: float) -> subprocess.Popen:
    """Another process that holds the key lock ``k`` for ``seconds`` (as a run or a compaction does)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, url, run_id, str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_dead_holders_lease_is_free_once_it_expires_and_not_before(s3, monkeypatch):
    ttl = 6.0
    monkeypatch.setenv("MUSSELTOOLS_LEASE_SECONDS", str(ttl))  # the holder process inherits it
    url = f"s3://{BUCKET}/stores/lease-dead"
    other = Store(url)
    holder = _holder(url, "r-dead", 600)
    holder.kill()  # SIGKILL: no release, no more renewals
    holder.wait()
    holder.stdout.close()
    expires = other.lock_holder("k")["expires"]  # as the dead holder last renewed it
    with pytest.raises(mt.RunLockedError, match="r-dead"), other.lock("k", run_id="r-b"):
        pass  # not before it expires
    with other.lock("k", run_id="r-b", wait=4 * ttl):
        taken = time.time()
        assert other.lock_holder("k")["run_id"] == "r-b"
    assert taken >= expires
    assert other.lock_holder("k") is None


def test_a_holder_longer_than_the_lease_lifetime_keeps_it_renewed(s3, monkeypatch):
    ttl = 2.0
    monkeypatch.setenv("MUSSELTOOLS_LEASE_SECONDS", str(ttl))
    url = f"s3://{BUCKET}/stores/lease-long"
    other = Store(url)
    holder = _holder(url, "r-long", 4 * ttl)  # holds for four lifetimes
    held_at, first = time.time(), other.lock_holder("k")["expires"]
    tries = 0
    while time.time() < held_at + 3 * ttl:  # tries on, well past the first expiry, while the holder works
        with pytest.raises(mt.RunLockedError, match="r-long"), other.lock("k", run_id="r-b"):
            pass
        tries += 1
        time.sleep(0.1)
    assert tries > 3 and other.lock_holder("k")["expires"] > first + ttl  # renewed meanwhile
    assert holder.wait(timeout=60) == 0 and holder.stdout.read().strip() == "released"
    holder.stdout.close()
    with other.lock("k", run_id="r-b"):  # released at its end: free at once
        pass


def test_a_lease_lifetime_that_is_no_number_of_seconds_says_so(s3, monkeypatch):
    monkeypatch.setenv("MUSSELTOOLS_LEASE_SECONDS", "soon")
    with pytest.raises(mt.MusselToolsError, match="MUSSELTOOLS_LEASE_SECONDS='soon'"), \
            Store(f"s3://{BUCKET}/stores/lease-bad").lock("k", run_id="r"):
        pass


def test_a_local_store_is_still_the_default(tmp_path):
    s = Store(tmp_path / "store")
    assert not s.remote and s.location == str((tmp_path / "store").resolve())
    assert os.fspath(s.root) == str(tmp_path / "store")


# ------------------------------------------------------------------------------------------------ compaction
def _s3_run(s3_images, tiny_model, url, commit_every):
    return mt.run(s3_images, model=tiny_model, imgsz=IMGSZ, store=url, workers=1, quiet=True,
                  commit_every=commit_every)


def _objects(s3, url: str, sub: str) -> list[str]:
    s3.invalidate_cache()
    return s3.glob(f"{url.split('://', 1)[1]}/results/*/{sub}/part-*.parquet")


def test_compact_on_s3_from_the_command_line_changes_no_result(s3, s3_images, tiny_model, capsys):
    from musseltools import cli

    url = f"s3://{BUCKET}/stores/compact-cli"
    run = _s3_run(s3_images, tiny_model, url, commit_every=2)
    key = run.meta["inference_key"]
    before = _by_name(run)
    assert len(_objects(s3, url, "images")) == len(_objects(s3, url, "detections")) == N // 2
    assert cli.main(["compact", run.run_id, "--store", url, "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done == [{"inference_key": key, "parts_before": N // 2, "parts_after": 1, "images": N}]
    assert len(_objects(s3, url, "images")) == len(_objects(s3, url, "detections")) == 1  # old objects deleted
    fresh = mt.open_run(run.run_id, store=url)
    after = _by_name(fresh)
    pd.testing.assert_frame_equal(after[0], before[0])
    pd.testing.assert_frame_equal(after[1], before[1])
    assert fresh.counts() == run.counts() and fresh.counts(0.6) == run.counts(0.6)


def test_a_compaction_on_s3_killed_while_deleting_and_a_reader_overlapping_it(s3, s3_images, tiny_model, monkeypatch):
    """Killed after removing old parts one by one (each moment frozen by a failpoint), then a reader whose
    listing is taken before a compaction deletes every part it listed: every image exactly once."""
    from musseltools.store.compaction import compact

    monkeypatch.setenv("MUSSELTOOLS_LEASE_SECONDS", "2")  # the killed compaction's lease frees in 2 s
    url = f"s3://{BUCKET}/stores/compact-killed"
    run = _s3_run(s3_images, tiny_model, url, commit_every=1)
    key = run.meta["inference_key"]
    before = _by_name(run)
    for k in (1, 4):  # the k-th old part's images object removed, its detections object not yet
        env = {**os.environ, "MUSSELTOOLS_FAILPOINTS": f"compaction-removed@{k}"}
        proc = subprocess.run([sys.executable, "-m", "musseltools", "compact", run.run_id, "--store", url,
                               "--wait"], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == -9, proc.stderr
        assert len(_objects(s3, url, "images")) < len(_objects(s3, url, "detections"))  # frozen mid-deletion
        middle = _by_name(mt.open_run(run.run_id, store=url))
        pd.testing.assert_frame_equal(middle[0], before[0])
        pd.testing.assert_frame_equal(middle[1], before[1])
    listed: list[list[str]] = []

    class ListsBeforeACompaction(Store):
        def part_files(self, key):
            parts = super().part_files(key)
            if not listed:  # the first listing only: a compaction deletes these parts before they are read
                listed.append([str(p) for p in parts])
                compact(Store(url), run.run_id, wait=30)
            return parts

    images, dets = ListsBeforeACompaction(url).read_results(key)
    assert len(listed[0]) > 1 and not set(listed[0]) & {str(p) for p in Store(url).part_files(key)}
    assert images["image_id"].is_unique and len(images) == N
    assert sorted(images["image_id"]) == sorted(before[0]["image_id"]) and len(dets) == len(before[1])
    # nothing left behind: one images object, one detections object (the orphan of the kill removed)
    assert len(_objects(s3, url, "images")) == len(_objects(s3, url, "detections")) == 1
    after = _by_name(mt.open_run(run.run_id, store=url))
    pd.testing.assert_frame_equal(after[0], before[0])
    pd.testing.assert_frame_equal(after[1], before[1])
