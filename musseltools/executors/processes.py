"""Every core of a machine: commit units run in worker processes, one per core by default.

Each worker process loads the model once (the task's per-process cache, keyed by the weights' SHA-256),
gets ``cores / workers`` torch threads, and decodes, infers and commits the units it is given. The
parent process plans, follows progress (image by image, through a pipe), and alone writes the run's
metadata (the engine does that with the summaries yielded here).

Cancelling (``handle.cancel()``, or Ctrl-C in the parent) sets a shared event: each worker commits the
images of its unit that it has inferred as a smaller part of their own and stops; units not started are
dropped. Worker processes ignore SIGINT, so a Ctrl-C reaches them only through the parent. A worker that
dies (killed, out of memory) breaks the pool: the units not yet committed are run again in a new pool; a
unit that was in progress when workers died :data:`MAX_ATTEMPTS` times is committed as failed, with the
reason on each image (the next run tries its images again), so a run never loops. Workers tell the parent
that a unit started, and how many images are done, by single writes to a pipe (no lock, no feeder thread),
so a worker killed right after starting a unit cannot lose that message (the unit's attempts are exact).

Workers die with the run: the parent holds the only write end of a pipe whose read end each worker
watches (a thread, and a check right before each commit). When the parent goes (SIGKILL, the out-of-memory
killer, a killed Jupyter kernel) or ends the run, the pipe gives end-of-file and each worker exits at once,
without committing; the fork server then exits, as its last client is gone, and so does the resource
tracker. A pipe works on every POSIX system, whatever process forked the workers (here the fork server,
so ``PR_SET_PDEATHSIG``, which watches the direct parent, would not see the run's process die).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..errors import RunCancelled
from ..machine import cpu_cores
from .base import UnitTask
from .planning import Unit, UnitSummary
from .server import context, main_module_hidden

__all__ = ["ProcessExecutor", "MAX_ATTEMPTS", "cpu_cores"]

log = logging.getLogger(__name__)

#: Tries of a unit whose worker process died before it was committed; then its images fail.
MAX_ATTEMPTS = 3
#: Seconds the workers get to commit what they inferred once a run is cancelled.
CANCEL_GRACE_S = 60.0
#: Exit status of a worker that left because the process that started it is gone.
EXIT_PARENT_GONE = 75

# the worker process's side: set by the pool's initializer
_progress: Any = None  # the write end of the parent's progress pipe
_stop: Any = None  # a shared flag, read without a lock (a killed worker cannot leave a lock held)
_parent: Any = None  # the read end of the pipe only the parent writes to: end-of-file when it is gone


#: Environment variables a worker takes from the parent when it starts: musseltools' and Ultralytics'
#: settings, and the credentials and endpoint of an object store (AWS_*, fsspec's FSSPEC_*).
_SHARED_ENV = ("MUSSELTOOLS_", "YOLO_", "AWS_", "FSSPEC_")


def _environment() -> tuple[str, dict[str, str]]:
    """The parent's folder and settings that a worker must share (workers fork from a server started once,
    which kept the folder and environment of its first use)."""
    return os.getcwd(), {k: v for k, v in os.environ.items() if k.startswith(_SHARED_ENV)}


def _init_worker(progress: Any, stop: Any, threads: int, environment: tuple[str, dict[str, str]],
                 parent: Any) -> None:
    global _progress, _stop, _parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what a Ctrl-C means
    _progress, _stop, _parent = progress, stop, parent
    threading.Thread(target=_exit_when_parent_gone, name="musseltools-parent-watch", daemon=True).start()
    cwd, env = environment
    for k in [k for k in os.environ if k.startswith(_SHARED_ENV) and k not in env]:
        del os.environ[k]
    os.environ.update(env)
    os.chdir(cwd)
    if "torch" in sys.modules:  # preloaded by the server; a worker that needs it later pins it before each forward
        sys.modules["torch"].set_num_threads(threads)


def _parent_gone() -> bool:
    """Whether the run's process is gone (or ended the run): it never writes, so readable means end-of-file."""
    try:
        return bool(_parent.poll())
    except (OSError, EOFError, ValueError):
        return True


def _leave() -> None:
    """Exit this worker now, committing nothing more (the run's process is gone)."""
    with contextlib.suppress(OSError):
        os.write(2, (f"musseltools worker {os.getpid()}: the run that started this worker process has ended "
                     "(its process died or gave up on it); exiting without committing — run the same command "
                     "again to resume\n").encode())
    os._exit(EXIT_PARENT_GONE)


def _exit_when_parent_gone() -> None:
    """The watching thread of a worker: wait for the end-of-file of the parent's pipe, then exit."""
    with contextlib.suppress(OSError, EOFError, ValueError):
        _parent.poll(None)
    _leave()


def _commit_only_for_a_live_parent() -> None:
    """Called right before a worker commits a part: no part is committed once the run's process is gone."""
    if _parent_gone():
        _leave()


def _tell(kind: str, value: Any) -> None:
    _progress.send((kind, value))  # one write of a few bytes to a pipe: atomic, whole or not at all


def _tell_images(n: int) -> None:
    _tell("images", n)


def _stopping() -> bool:
    return bool(_stop.value)


def run_unit_in_worker(task: UnitTask, unit: Unit) -> UnitSummary:
    """What a worker process runs for one unit (module level, so it pickles by reference)."""
    _tell("start", unit.key)  # in the parent's pipe before the unit's first image is read
    return task(unit, on_image=_tell_images, stop=_stopping, before_commit=_commit_only_for_a_live_parent)


class ProcessExecutor:
    """Run commit units in ``workers`` processes (see the module docstring).

    Parameters
    ----------
    workers : int
        Worker processes (``--workers N``); each gets ``threads`` torch threads.
    threads : int, optional
        torch threads per worker: ``cores // workers`` (at least 1) by default.
    """

    def __init__(self, workers: int, threads: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.threads = threads or max(1, cpu_cores() // workers)

    def __repr__(self) -> str:
        return f"ProcessExecutor(workers={self.workers}, threads={self.threads})"

    def process(
        self,
        task: UnitTask,
        units: Sequence[Unit],
        *,
        cancel: threading.Event,
        on_progress: Callable[[int], None] = lambda n: None,
    ) -> Iterator[UnitSummary]:
        """Run the units in worker processes; yields each unit's summary as it is committed."""
        ctx = context()
        progress_r, progress_w = ctx.Pipe(duplex=False)
        alive_r, alive_w = ctx.Pipe(duplex=False)  # this process holds the only write end: see the module doc
        stop = ctx.RawValue("b", 0)
        attempts: dict[str, int] = {}
        started: set[str] = set()
        todo = list(units)
        try:
            while todo:
                todo = yield from self._one_pool(ctx, task, todo, (progress_r, progress_w, alive_r), stop, cancel,
                                                 on_progress, attempts, started)
        finally:  # workers still running (a cancel past its grace, an abandoned run) see end-of-file and exit
            for conn in (alive_w, alive_r, progress_w, progress_r):
                conn.close()

    def _one_pool(self, ctx: Any, task: UnitTask, units: list[Unit], pipes: tuple[Any, Any, Any], stop: Any,
                  cancel: threading.Event, on_progress: Callable[[int], None], attempts: dict[str, int],
                  started: set[str]) -> Iterator[UnitSummary]:
        """Run ``units`` in one pool; returns the units to run again when a worker died. ``pipes``: the
        progress pipe's two ends and the read end of the parent's pipe."""
        progress, progress_w, alive_r = pipes
        pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(progress_w, stop, self.threads, _environment(), alive_r))
        with main_module_hidden():  # workers start here: they need musseltools, never the caller's script
            futures: dict[Future, Unit] = {pool.submit(run_unit_in_worker, task, u): u for u in units}
        broken: list[Unit] = []
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                _drain(progress, on_progress, started)
                for fut in done:
                    try:
                        yield fut.result()
                    except BrokenProcessPool:
                        broken.append(futures[fut])
                if cancel.is_set():
                    raise RunCancelled("cancelled")
        except (RunCancelled, KeyboardInterrupt):
            yield from self._cancel(futures, pending, stop, progress, on_progress)
            raise
        finally:
            pool.shutdown(wait=not (stop.value or broken), cancel_futures=True)
        if not broken:
            return []
        again, failed = self._retry(task, broken, attempts, started)
        yield from failed
        return again

    def _cancel(self, futures: dict[Future, Unit], pending: set[Future], stop: Any, progress: Any,
                on_progress: Callable[[int], None]) -> Iterator[UnitSummary]:
        """Tell the workers to stop; yield the partial parts they commit (units not started are dropped)."""
        stop.value = 1
        for fut in pending:
            fut.cancel()
        running = {f for f in pending if not f.cancelled()}
        done, _ = wait(running, timeout=CANCEL_GRACE_S)
        _drain(progress, on_progress, set())
        for fut in done:
            try:
                yield fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died while stopping: its unit is redone
                log.warning("a worker failed while stopping (%s); its unit %s will be done again", exc,
                            futures[fut].key)

    def _retry(self, task: UnitTask, broken: list[Unit], attempts: dict[str, int],
               started: set[str]) -> tuple[list[Unit], list[UnitSummary]]:
        """After a worker died: the units to run again, and the summaries of those committed as failed
        (started and lost :data:`MAX_ATTEMPTS` times; units that never started are not counted)."""
        again, failed = [], []
        for unit in broken:
            if unit.key not in started:
                again.append(unit)
                continue
            started.discard(unit.key)
            attempts[unit.key] = attempts.get(unit.key, 0) + 1
            if attempts[unit.key] >= MAX_ATTEMPTS:
                reason = (f"a worker process died {MAX_ATTEMPTS} times while this image's commit unit was being "
                          "processed (out of memory? an image that crashes the decoder?) — run again to retry, "
                          "or run with --workers 1 to see the error")
                log.error("unit %s failed %d times: its %d images are marked failed", unit.key, MAX_ATTEMPTS,
                          len(unit.images))
                failed.append(task.commit_failed(unit, reason))
            else:
                again.append(unit)
        log.warning("a worker process died; %d commit units will run again in new workers", len(again))
        return again, failed


def _drain(progress: Any, on_progress: Callable[[int], None], started: set[str]) -> None:
    """Take the workers' messages: images done (told to ``on_progress``) and units started."""
    n = 0
    while True:
        try:
            if not progress.poll():
                break
            kind, value = progress.recv()
        except (OSError, ValueError, EOFError):
            break
        if kind == "images":
            n += value
        else:
            started.add(value)
    if n:
        on_progress(n)
