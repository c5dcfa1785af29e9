"""Clusters through Dask: each commit unit is one Dask task with a deterministic key.

``mt.run(..., client=distributed.Client(...))``, or ``musseltools run ... --scheduler tcp://HOST:PORT``
/ ``--scheduler-file F``. A task is the picklable :class:`~musseltools.executors.task.RunTask` applied to one
unit: the worker loads the model once (cached in the worker process by the weights' SHA-256), decodes,
infers and commits the unit's part to the store every worker can reach. The coordinator (the process
that called ``run``) follows ``as_completed`` for progress and alone writes the run's metadata.

Dask may run a task twice (a worker lost after it committed): the part's name comes from the unit's
key, so the second commit writes the same part again and nothing is doubled. A task that kills its
worker every time ends as ``KilledWorker`` after Dask's allowed failures: its images are committed as
failed with the reason (the next run tries them again), and the run goes on. A scheduler that goes
away ends the run with a clear error; committed units are kept and the next run resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..errors import MusselToolsError, RunCancelled
from ..machine import cpu_cores
from .base import UnitTask
from .planning import Unit, UnitSummary

__all__ = ["DaskExecutor", "connect", "threads_by_worker", "shared_processes"]

log = logging.getLogger(__name__)


def run_unit_on_worker(task: UnitTask, unit: Unit, threads: Mapping[str, int] | None = None) -> UnitSummary:
    """What a Dask worker runs for one unit (module level: pickled by reference, cache kept per worker).

    ``threads``: torch threads by worker address (:func:`threads_by_worker`); ``$MUSSELTOOLS_TORCH_THREADS``
    on the worker, or threads set on the task, win."""
    if threads and getattr(task, "threads", 1) is None and not os.environ.get("MUSSELTOOLS_TORCH_THREADS"):
        from distributed import get_worker

        with contextlib.suppress(ValueError):  # not on a worker (a test calling it directly)
            task.threads = threads.get(get_worker().address)  # type: ignore[attr-defined]
    return task(unit)


def worker_process() -> tuple[str, int, int]:
    """(host name, process id, cores) of the Dask worker that runs it (``client.run``)."""
    return socket.gethostname(), os.getpid(), cpu_cores()


def threads_by_worker(layout: Mapping[str, tuple[str, int, int]], nthreads: Mapping[str, int]) -> dict[str, int]:
    """torch threads for each worker: its host's cores shared among the task threads of every worker on that
    host (as process workers get ``cores // workers``). Without it each worker process took all cores but
    one, and N workers on a host ran N x (cores - 1) threads on its cores.

    >>> threads_by_worker({"a": ("h", 1, 16), "b": ("h", 2, 16)}, {"a": 1, "b": 1})
    {'a': 8, 'b': 8}
    """
    per_host: dict[str, int] = {}
    for addr, (host, _, _) in layout.items():
        per_host[host] = per_host.get(host, 0) + max(1, int(nthreads.get(addr, 1)))
    return {addr: max(1, cores // per_host[host]) for addr, (host, _, cores) in layout.items()}


def shared_processes(layout: Mapping[str, tuple[str, int, int]]) -> str | None:
    """A warning when Dask workers share a Python process (``LocalCluster(worker_class=distributed.Worker)``
    runs them inside the client's): they infer about as fast as one worker, whatever their number."""
    processes = {(host, pid) for host, pid, _ in layout.values()}
    if len(processes) >= len(layout):
        return None
    return (f"{len(layout)} Dask workers run in {len(processes)} Python process(es): workers that share a process "
            "share its interpreter lock, and infer about as fast as one (LocalCluster(worker_class=distributed."
            "Worker) starts its workers inside this process) — start one process per worker: LocalCluster's "
            "default nanny, or `dask worker` processes")


def _layout(client: Any) -> tuple[dict[str, int] | None, str | None]:
    """Threads by worker and a warning about shared processes, from the workers now connected."""
    try:
        layout = {addr: tuple(v) for addr, v in client.run(worker_process).items()}
        nthreads = client.nthreads()
    except Exception as exc:  # noqa: BLE001 - workers as they come: each then picks its own threads
        log.debug("could not ask the Dask workers for their processes: %s", exc)
        return None, None
    return threads_by_worker(layout, nthreads), shared_processes(layout)


def connect(scheduler: str | None = None, scheduler_file: str | None = None) -> Any:
    """A ``distributed.Client`` for ``--scheduler tcp://HOST:PORT`` or ``--scheduler-file F``."""
    from distributed import Client

    try:
        if scheduler_file:
            return Client(scheduler_file=str(scheduler_file), timeout="30s")
        return Client(scheduler, timeout="30s")
    except (OSError, TimeoutError, ValueError) as exc:
        where = scheduler_file or scheduler
        raise MusselToolsError(
            f"cannot reach the Dask scheduler at {where} ({type(exc).__name__}: {exc}) — expected a running "
            "`dask scheduler` — start it (and workers), or check the address or scheduler file"
        ) from None


class DaskExecutor:
    """Run commit units as tasks on a Dask cluster (see the module docstring).

    Parameters
    ----------
    client : distributed.Client
        Connected to the cluster. Its workers must reach the images and the store by the same paths
        (a shared file system or an object store).
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def __repr__(self) -> str:
        return f"DaskExecutor({self.client.scheduler.address if self.client.scheduler else self.client!r})"

    def process(
        self,
        task: UnitTask,
        units: Sequence[Unit],
        *,
        cancel: threading.Event,
        on_progress: Callable[[int], None] = lambda n: None,
    ) -> Iterator[UnitSummary]:
        """Submit every unit; yield each summary as its task completes (in completion order)."""
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        lost = _connection_lost()

        threads, warning = _layout(self.client)
        if warning:
            log.warning("%s", warning)
        by_key = {f"musseltools-unit-{u.key}": u for u in units}
        futures = [self.client.submit(run_unit_on_worker, task, u, threads, key=k, pure=False)
                   for k, u in by_key.items()]
        try:
            for fut in as_completed(futures):
                if cancel.is_set():
                    raise RunCancelled("cancelled")
                unit = by_key[fut.key]
                try:
                    summary = fut.result()
                except KilledWorker as exc:
                    log.error("unit %s killed its workers (%s): its %d images are marked failed", unit.key, exc,
                              len(unit.images))
                    summary = task.commit_failed(unit, (
                        "the Dask workers processing this image's commit unit died every time (out of memory? an "
                        "image that crashes the decoder?) — run again to retry"))
                except (OSError, TimeoutError, *lost) as exc:
                    raise _lost(self.client, exc) from None
                on_progress(summary.n_images)
                yield summary
        except (OSError, TimeoutError, *lost) as exc:
            raise _lost(self.client, exc) from None
        finally:
            self.client.cancel([f for f in futures if not f.done()])


def _connection_lost() -> tuple[type[BaseException], ...]:
    """What a task's result raises when the client lost its scheduler: distributed cancels every future
    ("cancelled for reason: scheduler-connection-lost")."""
    try:
        from distributed.client import FutureCancelledError
    except ImportError:  # older distributed: the plain cancellation
        from asyncio import CancelledError as FutureCancelledError
    return (FutureCancelledError,)


def _lost(client: Any, exc: BaseException) -> MusselToolsError:
    return MusselToolsError(
        f"lost the Dask scheduler ({type(exc).__name__}: {exc}) — committed units are kept — restart the "
        "scheduler and workers, then run again to resume"
    )
