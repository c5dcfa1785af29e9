"""Runs on a Dask cluster (a LocalCluster of worker processes on 127.0.0.1): deterministic task keys, a
worker killed mid-run, a cancelled run that keeps its finished parts and resumes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import IMGSZ, write_images
from contract import assert_same_results
from distributed.diagnostics.plugin import SchedulerPlugin

import musseltools as mt

pytestmark = pytest.mark.slow

N = 12
PREFIX = "musseltools-unit-"


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    monkeypatch.setenv("MUSSELTOOLS_TORCH_THREADS", "1")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("dask") / "images"
    write_images(f, N, seed=21)
    return f


@pytest.fixture(scope="module")
def reference(folder, tiny_model, tmp_path_factory):
    return mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path_factory.mktemp("ref") / "store", workers=1,
                  quiet=True)


class KeyLog(SchedulerPlugin):
    """A scheduler plugin that records every task key the scheduler is given, and how many times each
    task was sent to a worker (more than once: the task was run again after its worker was lost)."""

    name = "musseltools-test-keys"

    def __init__(self) -> None:
        self.keys: list = []
        self.sent: dict = {}

    def update_graph(self, scheduler, *, keys=(), **kwargs) -> None:
        self.keys.extend(keys)

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "processing":
            self.sent[key] = self.sent.get(key, 0) + 1


def _cluster(**kw):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, **kw)
    client = Client(cluster)
    client.run_on_scheduler(_install_key_log)
    return cluster, client


def _install_key_log(dask_scheduler) -> None:
    dask_scheduler.add_plugin(KeyLog(), name=KeyLog.name)


def _key_log(client) -> tuple[list, dict]:
    def read(dask_scheduler):
        log = dask_scheduler.plugins[KeyLog.name]
        keys, sent = list(log.keys), dict(log.sent)
        log.keys.clear()
        log.sent.clear()
        return keys, sent

    return client.run_on_scheduler(read)


def _parts(store: Path) -> set[str]:
    return {p.stem.removeprefix("part-") for p in store.rglob("images/part-*.parquet")}


@pytest.fixture(scope="module")
def client():
    cluster, client = _cluster()
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def test_every_task_key_is_the_units_own_and_the_same_in_another_run(folder, tiny_model, reference, client,
                                                                      tmp_path):
    seen = []
    for store in (tmp_path / "one", tmp_path / "two"):
        _key_log(client)  # forget the keys of the module's other runs on this cluster (tests run in any order)
        r = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=store, quiet=True, commit_every=2, client=client)
        assert r.meta["executor"].startswith("DaskExecutor(") and r.meta["inferred_this_call"] == N
        assert_same_results(r, reference)
        keys, _ = _key_log(client)
        # every key the scheduler was given, unfiltered: one per commit unit, named after the unit's part
        assert sorted(keys) == sorted(PREFIX + k for k in _parts(store)), keys
        assert len(keys) == N // 2
        seen.append(sorted(keys))
    assert seen[0] == seen[1]  # the same units, the same keys: nothing random in them


def test_a_cancelled_dask_run_keeps_its_finished_parts_and_a_resume_completes(tiny_model, client, tmp_path):
    many = tmp_path / "many"
    write_images(many, 60, seed=5)
    store = tmp_path / "store"
    handle = mt.run(many, model=tiny_model, imgsz=IMGSZ, store=store, quiet=True, commit_every=2, client=client,
                    background=True)
    deadline = time.monotonic() + 120
    while not _parts(store) and time.monotonic() < deadline:
        time.sleep(0.01)
    handle.cancel()
    r = handle.wait(timeout=120)
    assert r.status == "cancelled"
    # a task already running (or already handed to a worker) when cancelled still commits its unit: wait
    # until the scheduler holds no task that could still run
    deadline = time.monotonic() + 60
    while (client.run_on_scheduler(_unfinished_tasks) or any(client.run(_executing).values())) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    _key_log(client)
    kept = int(r.per_image()["processed_at"].notna().sum())
    assert 0 < kept < 60 and kept == 2 * len(_parts(store))  # whole units, each committed once
    done = mt.run(many, model=tiny_model, imgsz=IMGSZ, store=store, quiet=True, commit_every=2, client=client)
    assert done.status == "completed" and done.meta["inferred_this_call"] == 60 - kept
    keys, _ = _key_log(client)
    assert len(keys) == (60 - kept) // 2  # only the units not committed were sent again
    ref = mt.run(many, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "fresh", quiet=True, workers=1)
    assert_same_results(done, ref)


def test_a_dask_worker_killed_mid_run_has_its_unit_run_again(folder, tiny_model, reference, tmp_path, monkeypatch):
    # the workers first started die on their third image (in their second unit); the nannies restart
    # them without the failpoint (a worker process reads the environment when it starts)
    monkeypatch.setenv("MUSSELTOOLS_FAILPOINTS", "image-read@3")
    cluster, client = _cluster()
    try:
        monkeypatch.delenv("MUSSELTOOLS_FAILPOINTS")
        before = set(client.run(_pid).values())
        r = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", quiet=True, commit_every=2,
                   client=client)
        _, sent = _key_log(client)
        after = set(client.run(_pid).values())
    finally:
        client.close()
        cluster.close()
    assert before.isdisjoint(after)  # both first workers died
    assert any(n > 1 for n in sent.values()), sent  # the unit a dying worker held was run again
    assert r.status == "completed" and r.meta["failed_count"] == 0
    assert_same_results(r, reference)  # every image, none twice


def _unfinished_tasks(dask_scheduler) -> int:
    """How many tasks the scheduler could still start."""
    return sum(ts.state in ("waiting", "no-worker", "queued", "processing") for ts in dask_scheduler.tasks.values())


def _executing(dask_worker) -> int:
    """How many tasks a worker is running: a task cancelled while it runs is released at the scheduler, but its
    thread goes on (and commits its unit) until the function returns."""
    return len(dask_worker.state.all_running_tasks)


def _pid() -> int:
    import os

    return os.getpid()



def test_a_dask_worker_gets_its_hosts_cores_among_the_workers_threads_as_a_worker_process_does(
        folder, tiny_model, tmp_path, monkeypatch):
    # one worker of one thread: all the host's cores, as ProcessExecutor gives cores // workers (it took all
    # cores but one, whatever the number of workers, before); the nanny's OMP_NUM_THREADS=1 does not decide
    monkeypatch.delenv("MUSSELTOOLS_TORCH_THREADS")
    from distributed import Client, LocalCluster

    from musseltools.executors import cpu_cores

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        r = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", quiet=True, client=client)
        assert r.status == "completed"
        assert list(client.run(_torch_threads).values()) == [cpu_cores()]


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def test_a_nanny_started_worker_reuses_freed_tensor_memory_instead_of_mapping_it_afresh(folder, tiny_model, client,
                                                                                       tmp_path):
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536: glibc then maps every buffer over 128 KiB
    # anew (fresh zeroed pages for each tensor, 25-30% fewer images/s); a run's first task undoes it
    r = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", quiet=True, client=client)
    assert r.status == "completed"
    probes = client.run(_one_mib_buffer_is_mapped)
    assert probes and all(env for env, _ in probes.values())  # the nanny did set it: the check means something
    assert not any(mapped for _, mapped in probes.values()), probes


def _one_mib_buffer_is_mapped() -> tuple[bool, bool]:
    """(MALLOC_TRIM_THRESHOLD_ is set here, a 1 MiB malloc here is a fresh mmap rather than heap memory)."""
    import ctypes
    import ctypes.util
    import os

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    before = libc.mallinfo2().hblks
    buffer = libc.malloc(1 << 20)
    mapped = libc.mallinfo2().hblks > before
    libc.free(ctypes.c_void_p(buffer))
    return bool(os.environ.get("MALLOC_TRIM_THRESHOLD_")), mapped
