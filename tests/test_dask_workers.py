"""How a run shares a Dask cluster's cores among its workers, and what it says of workers that share a process
(no cluster started here: the cluster tests are in test_dask.py)."""

from __future__ import annotations

from musseltools.executors.dask import shared_processes, threads_by_worker


def test_each_hosts_cores_are_shared_among_the_task_threads_of_its_workers():
    layout = {"tcp://a:1": ("a", 10, 16), "tcp://a:2": ("a", 11, 16), "tcp://b:1": ("b", 10, 8),
              "tcp://c:1": ("c", 5, 2)}
    nthreads = {"tcp://a:1": 1, "tcp://a:2": 3, "tcp://b:1": 2, "tcp://c:1": 4}
    # a: 4 task threads on 16 cores; b: 2 on 8; c: more task threads than cores still gets one
    assert threads_by_worker(layout, nthreads) == {"tcp://a:1": 4, "tcp://a:2": 4, "tcp://b:1": 4, "tcp://c:1": 1}


def test_workers_that_share_a_python_process_are_named_with_the_way_out():
    apart = {"tcp://a:1": ("a", 10, 2), "tcp://a:2": ("a", 11, 2), "tcp://b:1": ("b", 10, 2)}  # pid 10 twice, two hosts
    assert shared_processes(apart) is None
    together = {"tcp://a:1": ("a", 10, 2), "tcp://a:2": ("a", 10, 2)}
    message = shared_processes(together)
    assert message is not None and "2 Dask workers run in 1 Python process" in message
    assert "worker_class=distributed.Worker" in message and "nanny" in message
