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

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import MusselToolsError, RunCancelled
from .base import UnitTask
from .planning import Unit, UnitSummary

__all__ = ["DaskExecutor", "connect"]

log = logging.getLogger(__name__)


def run_unit_on_worker(task: UnitTask, unit: Unit) -> UnitSummary:
    """What a Dask worker runs for one unit (module level: pickled by reference, cache kept per worker)."""
    return task(unit)


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

        by_key = {f"musseltools-unit-{u.key}": u for u in units}
        futures = [self.client.submit(run_unit_on_worker, task, u, key=k, pure=False) for k, u in by_key.items()]
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
