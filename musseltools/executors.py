"""Executors: how commit units get processed. Local (a decode thread + the model) now; the same
interface lets a distributed executor (Dask) run each unit as an idempotent task later.

An executor receives a *task* and the *units* to process, and yields one summary per committed
unit. The task knows how to ``load`` one image (decode + prepare, thread-safe), ``predict`` a batch,
and ``commit`` a unit; calling the task on a unit does all three (what a remote worker would do).
Run semantics (plan, status, counts) stay in the engine, whatever the executor.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from .errors import RunCancelled

__all__ = ["Executor", "LocalExecutor", "UnitTaskLike"]

log = logging.getLogger(__name__)


class UnitTaskLike(Protocol):
    def load(self, ref: Any) -> Any: ...  # Prepared, or an error message (str)
    def predict(self, batch: Sequence[Any]) -> list[Any]: ...
    def commit(self, unit: Any, outcomes: list[tuple[Any, Any, str | None]]) -> Any: ...
    def choose_batch_size(self, sample: Any) -> int: ...
    def __call__(self, unit: Any) -> Any: ...


class Executor(Protocol):
    def process(
        self,
        task: UnitTaskLike,
        units: Sequence[Any],
        *,
        cancel: threading.Event,
        on_progress: Callable[[int], None] = ...,
    ) -> Iterator[Any]: ...


_END_UNIT = object()
_DONE = object()


class LocalExecutor:
    """Process units in this process: a worker thread decodes ahead while the model runs.

    Parameters
    ----------
    prefetch : int
        Decoded images held ahead of the model at most (bounds memory whatever the collection).
    """

    def __init__(self, prefetch: int = 8) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.prefetch = prefetch

    def process(
        self,
        task: UnitTaskLike,
        units: Sequence[Any],
        *,
        cancel: threading.Event,
        on_progress: Callable[[int], None] = lambda n: None,
    ) -> Iterator[Any]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for unit in units:
                    for ref in unit.images:
                        if stop.is_set() or not put((ref, task.load(ref))):
                            return
                    if not put((None, _END_UNIT)):
                        return
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises
                put((None, exc))
            finally:
                put((None, _DONE))

        worker = threading.Thread(target=produce, name="musseltools-decode", daemon=True)
        worker.start()

        def get() -> tuple[Any, Any]:
            while True:
                if cancel.is_set():
                    raise RunCancelled("cancelled")
                try:
                    return q.get(timeout=0.1)
                except queue.Empty:
                    if not worker.is_alive() and q.empty():
                        raise RuntimeError("the decode thread stopped unexpectedly") from None

        def flush(pending: list[tuple[Any, Any]], outcomes: list[tuple[Any, Any, str | None]]) -> None:
            dets = task.predict([p for _, p in pending])
            outcomes.extend((ref, d, None) for (ref, _), d in zip(pending, dets))
            on_progress(len(pending))
            pending.clear()

        batch_size = getattr(task, "batch_size", None)
        try:
            for unit in units:
                outcomes: list[tuple[Any, Any, str | None]] = []
                pending: list[tuple[Any, Any]] = []


                while True:
                    ref, item = get()
                    if item is _END_UNIT:
                        break
                    if item is _DONE:
                        raise RuntimeError("the decode thread ended before all units were read")
                    if isinstance(item, BaseException):
                        raise item
                    if isinstance(item, str):
                        outcomes.append((ref, None, item))
                        on_progress(1)
                        continue
                    if batch_size is None:
                        batch_size = task.choose_batch_size(item)
                    pending.append((ref, item))
                    if len(pending) >= batch_size:
                        flush(pending, outcomes)
                        if cancel.is_set():
                            raise RunCancelled("cancelled")
                if pending:
                    flush(pending, outcomes)
                yield task.commit(unit, outcomes)
        finally:
            stop.set()
            while True:  # unblock the producer
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
            worker.join(timeout=10)
