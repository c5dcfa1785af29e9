"""Every core and clusters: worker processes and Dask give the results of a one-process run, and survive
cancelling, killed workers, units that always fail, and a scheduler that goes away."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import IMGSZ, write_images
from contract import assert_same_results
from procs import still_alive

import musseltools as mt
from musseltools.executors import MAX_ATTEMPTS, LocalExecutor, ProcessExecutor, choose_executor

pytestmark = pytest.mark.slow

N = 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("parallel") / "images"
    write_images(f, N, seed=21)
    return f


@pytest.fixture(scope="module")
def reference(folder, tiny_model, tmp_path_factory):
    """The same survey in one process (the reference every other way must equal)."""
    return mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path_factory.mktemp("ref") / "store",
                  workers=1, quiet=True)


def _run(folder, model, store, **kw):
    return mt.run(folder, model=model, imgsz=IMGSZ, store=store, quiet=True, commit_every=2, **kw)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_worker_processes_give_the_one_process_results(folder, tiny_model, reference, tmp_path, backend):
    if backend != "torch":  # the one-process run on the same backend (ONNX Runtime's results are its own)
        reference = _run(folder, tiny_model, tmp_path / "ref", workers=1, backend=backend)
    r = _run(folder, tiny_model, tmp_path / "store", workers=2, backend=backend)
    assert r.meta["executor"] == "ProcessExecutor(workers=2, threads=1)"
    assert r.meta["inferred_this_call"] == N and r.status == "completed"
    assert_same_results(r, reference)
    assert r.counts() == reference.counts() and r.meta["counts"] == reference.meta["counts"]
    runtime = {"torch": "torch", "onnx": "onnxruntime"}[backend]  # what ran in the workers, as they report it
    assert r.meta["inferred_with"] == reference.meta["inferred_with"] == [f"cpu, 1 {runtime} threads, batch 1"]
    again = _run(folder, tiny_model, tmp_path / "store", workers=2, backend=backend)  # a resume infers nothing
    assert again.meta["inferred_this_call"] == 0


def test_the_default_uses_processes_only_when_they_pay_back():
    assert isinstance(choose_executor(workers=None, client=None, device="cpu", n_images=10), LocalExecutor)
    many = choose_executor(workers=None, client=None, device="cpu", n_images=10_000)
    cores = len(os.sched_getaffinity(0))
    assert isinstance(many, ProcessExecutor if cores > 1 else LocalExecutor)
    assert isinstance(choose_executor(workers=None, client=None, device="cuda:0", n_images=10_000), LocalExecutor)
    assert isinstance(choose_executor(workers=1, client=None, device="cpu", n_images=10_000), LocalExecutor)


def _workers() -> list:
    """The worker processes of this process's runs (children of its fork server), running now."""
    import psutil

    servers = [p for p in psutil.Process().children() if "multiprocessing.forkserver" in " ".join(p.cmdline())]
    return still_alive([w for s in servers for w in s.children()])


def test_a_worker_killed_mid_run_costs_nothing(tiny_model, tmp_path):
    """One worker process SIGKILLed (as the out-of-memory killer would) once the run has committed a unit:
    it is dead, the units it and its pool left are run again in new workers, and the run completes with
    every image, as a run that was never disturbed."""
    import psutil

    folder = tmp_path / "many"
    write_images(folder, 40, seed=7)
    reference = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "ref", workers=1, quiet=True)
    store = tmp_path / "store"
    handle = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=store, quiet=True, commit_every=2, workers=2,
                    background=True)
    deadline = time.monotonic() + 120
    while not (list(store.rglob("images/part-*.parquet")) and len(_workers()) == 2):
        assert time.monotonic() < deadline and not handle.done(), "no worker ran a unit"
        time.sleep(0.005)
    victim = _workers()[0]
    victim.kill()
    parts_at_kill = len(list(store.rglob("images/part-*.parquet")))
    gone, alive = psutil.wait_procs([victim], timeout=30)
    assert not alive or still_alive(alive) == [], "the worker was not killed"
    r = handle.wait(timeout=240)
    assert parts_at_kill < 20  # the kill landed mid-run: the pool it broke had units left
    assert r.status == "completed" and r.meta["failed_count"] == 0
    assert r.meta["processed_count"] == 40 and r.meta["inferred_this_call"] == 40
    assert victim.pid not in {w.pid for w in _workers()}
    assert_same_results(r, reference)  # nothing lost, no image twice


def test_a_unit_that_kills_every_worker_is_reported_not_retried_for_ever(tiny_model, tmp_path, monkeypatch):
    """Each worker dies on the first image it reads: every unit is tried exactly MAX_ATTEMPTS times (counted
    by the kills themselves, one worker at a time), then its images are committed as failed; the next
    run tries them again."""
    folder = tmp_path / "four"
    write_images(folder, 4, seed=3)  # two units of two
    kills = tmp_path / "kills.log"
    monkeypatch.setenv("MUSSELTOOLS_FAILPOINTS", "image-read@1")
    monkeypatch.setenv("MUSSELTOOLS_FAILPOINTS_LOG", str(kills))
    r = _run(folder, tiny_model, tmp_path / "store", executor=ProcessExecutor(1))
    assert r.status == "completed"
    records = [line.split(" ", 2) for line in kills.read_text().splitlines()]
    per_image = Counter(path for _, _, path in records)  # each attempt dies on its unit's first image
    assert len(per_image) == 2 and set(per_image.values()) == {MAX_ATTEMPTS}, per_image
    pids = [int(pid) for _, pid, _ in records]
    assert len(set(pids)) == 2 * MAX_ATTEMPTS  # a new worker process for each attempt ...
    assert [pid for pid in pids if not _dead(pid)] == []  # ... and each of them really died
    table = r.per_image()
    assert table["error"].notna().all() and table["processed_at"].notna().all()
    assert r.meta["failed_count"] == 4 and r.meta["processed_count"] == 4
    monkeypatch.delenv("MUSSELTOOLS_FAILPOINTS")
    again = _run(folder, tiny_model, tmp_path / "store", workers=2)  # failed images are tried again
    assert again.meta["failed_count"] == 0 and again.meta["inferred_this_call"] == 4


def _dead(pid: int) -> bool:
    import psutil

    try:
        return still_alive([psutil.Process(pid)]) == []
    except psutil.NoSuchProcess:
        return True


def test_cancel_stops_every_worker_and_keeps_what_they_inferred(tiny_model, tmp_path):
    folder = tmp_path / "many"
    write_images(folder, 60, seed=5)
    handle = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", quiet=True, commit_every=2,
                    workers=2, background=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "store").rglob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.01)
    handle.cancel()
    r = handle.wait(timeout=120)
    assert r.status == "cancelled"
    table = r.per_image()
    kept = int(table["processed_at"].notna().sum())
    assert 0 < kept < 60 and r.meta["processed_count"] == kept  # what was committed is counted, no more
    done = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", quiet=True, workers=1)
    assert done.status == "completed" and done.meta["inferred_this_call"] == 60 - kept
    ref = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "fresh", quiet=True, workers=1)
    assert_same_results(done, ref)


def test_dask_local_cluster_gives_the_one_process_results(folder, tiny_model, reference, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        r = _run(folder, tiny_model, tmp_path / "store", client=client)
        assert r.meta["executor"].startswith("DaskExecutor(")
        assert_same_results(r, reference)  # its task keys: tests/test_dask.py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask(*args, cwd, log):
    return subprocess.Popen([str(Path(sys.executable).with_name("dask")), *args], cwd=cwd, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_real_dask_scheduler_and_workers_via_the_command_line(folder, tiny_model, reference, tmp_path):
    port = _free_port()
    log = open(tmp_path / "dask.log", "w")  # noqa: SIM115 - closed below
    sched = _dask("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard", cwd=tmp_path, log=log)
    workers = [_dask("worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--no-dashboard", "--no-nanny",
                     "--host", "127.0.0.1", cwd=tmp_path, log=log) for _ in range(2)]
    try:
        from musseltools import cli

        code = cli.main(["run", str(folder), "--model", str(tiny_model), "--imgsz", str(IMGSZ), "--store",
                         str(tmp_path / "store"), "--commit-every", "2", "--scheduler", f"tcp://127.0.0.1:{port}",
                         "--quiet"])
        assert code == 0, (tmp_path / "dask.log").read_text()[-3000:]
        r = mt.list_runs(store=tmp_path / "store")
        got = mt.open_run(r["run_id"].iloc[0], store=tmp_path / "store")
        assert got.meta["executor"].startswith("DaskExecutor(")
        assert_same_results(got, reference)

        # the scheduler goes away: a clear error, then a later run resumes
        _stop(sched)
        for w in workers:
            _stop(w)
        write_images(folder.parent / "more", 4, seed=99)
        with pytest.raises(mt.MusselToolsError, match="Dask scheduler"):
            mt.run(folder.parent / "more", model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store",
                   scheduler=f"tcp://127.0.0.1:{port}", quiet=True)
        later = mt.run(folder.parent / "more", model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", workers=1,
                       quiet=True)
        assert later.status == "completed" and later.meta["failed_count"] == 0
    finally:
        for p in (sched, *workers):
            _stop(p)
        log.close()


def test_the_scheduler_going_away_mid_run_fails_clearly_and_the_run_resumes(tiny_model, tmp_path):
    from distributed import Client

    many = tmp_path / "many"
    write_images(many, 60, seed=5)
    reference = mt.run(many, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "ref", workers=1, quiet=True)
    port = _free_port()
    log = open(tmp_path / "dask.log", "w")  # noqa: SIM115 - closed below
    sched = _dask("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard", cwd=tmp_path, log=log)
    worker = _dask("worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--no-dashboard", "--no-nanny",
                   "--host", "127.0.0.1", cwd=tmp_path, log=log)
    client = None
    try:
        client = Client(f"tcp://127.0.0.1:{port}", timeout="30s")
        client.wait_for_workers(1, timeout=60)
        handle = mt.run(many, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", commit_every=1, client=client,
                        quiet=True, background=True)
        deadline = time.monotonic() + 120
        while (handle.run.meta.get("processed_count") or 0) < 1 and not handle.done():
            assert time.monotonic() < deadline, (tmp_path / "dask.log").read_text()[-3000:]
            time.sleep(0.02)
        _stop(sched)  # mid-run: units committed, others not
        with pytest.raises(mt.MusselToolsError, match="Dask scheduler"):
            handle.wait(timeout=180)
        assert handle.done()
        kept = handle.run.meta["processed_count"]
        assert 1 <= kept < 60
    finally:
        for p in (sched, worker):
            _stop(p)
        if client is not None:
            client.close(timeout=5)
        log.close()
    later = mt.run(many, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", workers=1, quiet=True)
    assert later.status == "completed" and later.meta["inferred_this_call"] <= 60 - kept  # committed work kept
    assert_same_results(later, reference)


def test_a_cluster_object_as_an_hpc_user_makes_it(folder, tiny_model, reference, tmp_path):
    """The README's dask-jobqueue example: ``mt.run(..., client=SLURMCluster(...))``. There is no SLURM
    here, so a ``dask worker`` started by hand stands in for the batch job the cluster would submit."""
    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(cores=1, memory="2GB", processes=1, walltime="00:30:00",
                           scheduler_options={"host": "127.0.0.1", "dashboard_address": None})
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = _dask("worker", cluster.scheduler_address, "--nthreads", "1", "--no-dashboard", "--no-nanny",
                   "--host", "127.0.0.1", cwd=tmp_path, log=log)
    try:
        r = _run(folder, tiny_model, tmp_path / "store", client=cluster)
        assert r.meta["executor"].startswith("DaskExecutor(")
        assert_same_results(r, reference)
    finally:
        _stop(worker)
        cluster.close()
        log.close()


def test_a_worker_that_cannot_see_the_images_gives_per_image_errors_not_a_hang(folder, tiny_model, tmp_path):
    """The worker runs in a mount namespace where the images' folder is an empty tmpfs, as on a cluster
    node without the survey's file system."""
    port = _free_port()
    log = open(tmp_path / "dask.log", "w")  # noqa: SIM115 - closed below
    sched = _dask("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard", cwd=tmp_path, log=log)
    dask_exe = Path(sys.executable).with_name("dask")
    blind = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'mount -t tmpfs tmpfs "{folder}" && exec "{dask_exe}" worker tcp://127.0.0.1:{port} --nthreads 1 '
         "--no-dashboard --no-nanny --host 127.0.0.1"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        r = _run(folder, tiny_model, tmp_path / "store", scheduler=f"tcp://127.0.0.1:{port}")
        assert r.status == "completed" and r.meta["failed_count"] == N
        errors = r.per_image()["error"]
        assert errors.str.contains("not visible from the worker").all()
        again = _run(folder, tiny_model, tmp_path / "store", workers=1)  # where the images are visible
        assert again.meta["failed_count"] == 0 and again.meta["inferred_this_call"] == N
    finally:
        for p in (sched, blind):
            _stop(p)
        log.close()
