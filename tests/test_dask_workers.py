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


def test_a_run_in_a_process_started_with_dasks_malloc_setting_reuses_freed_tensor_memory(tmp_path, tiny_model):
    # starting a LocalCluster puts the nanny's MALLOC_TRIM_THRESHOLD_=65536 in the client's environment, so a
    # process started after it (a worker pool, a kernel) maps every buffer over 128 KiB afresh; a unit's task
    # undoes it in whatever process runs it (here: this subprocess, workers=1)
    import os
    import subprocess
    import sys

    from conftest import IMGSZ, write_images

    write_images(tmp_path / "images", 2)
    probe = (
        "import ctypes, ctypes.util, musseltools as mt\n"
        "class M(ctypes.Structure):\n"
        "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',"
        " 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c')); libc.mallinfo2.restype = M\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "def mapped():\n"
        "    before = libc.mallinfo2().hblks; b = libc.malloc(1 << 20); m = libc.mallinfo2().hblks > before\n"
        "    libc.free(ctypes.c_void_p(b)); return m\n"
        "first = mapped()\n"
        f"mt.run({str(tmp_path / 'images')!r}, model={str(tiny_model)!r}, imgsz={IMGSZ}, workers=1, quiet=True,"
        f" store={str(tmp_path / 'store')!r})\n"
        "print(first, mapped())\n")
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536", "YOLO_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"], out.stdout  # mapped afresh before the run, reused after
