"""Executors: how commit units get processed. Local (decode threads + the model) now; the same
protocol lets a multi-process or distributed executor (Dask) run each unit as an idempotent task.

An executor receives a *task* (a :class:`UnitTask`) and the *units* to process, and yields one
summary per committed unit. The task knows how to ``load`` one image (decode + prepare, thread-safe),
``predict`` a batch, and ``commit`` a unit; calling the task on a unit does all three (what a remote
worker does). Tasks are picklable and load their model lazily where they run. Run semantics (plan,
status, counts) stay in the engine, whatever the executor.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .errors import RunCancelled
from .planning import ImageRef, Unit, UnitSummary

__all__ = ["Executor", "LocalExecutor", "UnitTask", "default_decode_workers"]

log = logging.getLogger(__name__)


class UnitTask(Protocol):
    """What an executor may ask of a run's task (implemented by :class:`musseltools.task.RunTask`).

    Attributes
    ----------
    batch_size : int or None
        The model batch size, when known (given, or chosen by :meth:`choose_batch_size`).
    inferred : int
        Images inferred so far by this task object.
    """

    batch_size: int | None
    inferred: int

    def load(self, ref: ImageRef) -> Any:
        """Read, verify, decode and prepare one image: a prepared image, or an error message (str)."""
        ...

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        """Detections of a batch of prepared images, in order."""
        ...

    def commit(self, unit: Unit, outcomes: list[tuple[ImageRef, Any, str | None]]) -> UnitSummary:
        """Commit a unit's outcomes, ``(image, detections or None, error or None)``, as one part."""
        ...

    def choose_batch_size(self, sample: Any) -> int:
        """The model batch size (measured on a prepared sample when not known)."""
        ...

    def images_per_call(self, batch_size: int) -> int:
        """How many images to hand to :meth:`predict` at once for a model batch size."""
        ...

    def __call__(self, unit: Unit) -> UnitSummary:
        """Process one unit from start to commit in the calling process."""
        ...


class Executor(Protocol):
    """Processes units with a task; yields one :class:`UnitSummary` per committed unit, in any order.

    ``cancel`` set: stop after the current batch and raise :class:`RunCancelled` (committed units are
    kept). ``on_progress(n)``: ``n`` more images are done (inferred or failed).
    """

    def process(
        self,
        task: UnitTask,
        units: Sequence[Unit],
        *,
        cancel: threading.Event,
        on_progress: Callable[[int], None] = ...,
    ) -> Iterator[UnitSummary]: ...


_END_UNIT = object()
_DONE = object()


def default_decode_workers() -> int:
    """Decode threads: ``$MUSSELTOOLS_DECODE_WORKERS``, else 1 (2 with 8 or more cores).

    On 2 cores one decode thread beside one torch thread was fastest (16.9 against 14.9 images/s with
    two decode threads, demo collection)."""
    env = os.environ.get("MUSSELTOOLS_DECODE_WORKERS")
    if env:
        return max(1, int(env))
    return 2 if (os.cpu_count() or 1) >= 8 else 1


class _Decoder:
    """Loads (reads, checks, decodes, prepares) the units' images in order, in worker threads, into a
    queue at most ``prefetch`` items deep; after each unit's images comes an end-of-unit marker."""

    def __init__(self, task: UnitTask, units: Sequence[Unit], prefetch: int, workers: int) -> None:
        self.task, self.units, self.workers = task, units, workers
        self.queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="musseltools-decode", daemon=True)

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        in_flight: collections.deque = collections.deque()
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="musseltools-decode")
        try:
            for unit in self.units:
                for ref in unit.images:
                    if self.stop.is_set():
                        return
                    in_flight.append((ref, pool.submit(self.task.load, ref)))
                    if len(in_flight) > self.workers:  # keep the workers busy, in order
                        done_ref, fut = in_flight.popleft()
                        if not self._put((done_ref, fut.result())):
                            return
                while in_flight:
                    done_ref, fut = in_flight.popleft()
                    if not self._put((done_ref, fut.result())):
                        return
                if not self._put((None, _END_UNIT)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises
            self._put((None, exc))
        finally:
            for _, fut in in_flight:
                fut.cancel()
            pool.shutdown(wait=True)
            self._put((None, _DONE))

    def get(self, cancel: threading.Event) -> tuple[Any, Any]:
        """The next (image, prepared image or error message) or marker; RunCancelled when ``cancel`` is set."""
        while True:
            if cancel.is_set():
                raise RunCancelled("cancelled")
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise RuntimeError("the decode thread stopped unexpectedly") from None

    def close(self) -> None:
        self.stop.set()
        while True:  # unblock the producer
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join(timeout=10)


class LocalExecutor:
    """Process units in this process: worker threads decode ahead while the model runs.

    Decoding (read, hash check, decode, letterbox) runs in ``workers`` threads, in order, at most
    ``prefetch`` images ahead of the model, so memory stays flat whatever the collection.

    Parameters
    ----------
    prefetch : int
        Decoded images held ahead of the model at most (bounds memory whatever the collection).
    workers : int, optional
        Decode threads (see :func:`default_decode_workers`).
    """

    def __init__(self, prefetch: int = 8, workers: int | None = None) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.prefetch = prefetch
        self.workers = workers or default_decode_workers()

    def process(
        self,
        task: UnitTask,
        units: Sequence[Unit],
        *,
        cancel: threading.Event,
        on_progress: Callable[[int], None] = lambda n: None,
    ) -> Iterator[UnitSummary]:
        """Decode ahead, infer in batches, commit unit by unit; yields each unit's summary once committed."""
        decoder = _Decoder(task, units, self.prefetch, self.workers)
        decoder.thread.start()

        def flush(pending: list[tuple[Any, Any]], outcomes: list[tuple[Any, Any, str | None]]) -> None:
            dets = task.predict([p for _, p in pending])
            outcomes.extend((ref, d, None) for (ref, _), d in zip(pending, dets))
            on_progress(len(pending))
            pending.clear()

        per_call: int | None = None  # images per predict call, known once the first image is decoded
        try:
            for unit in units:
                outcomes: list[tuple[Any, Any, str | None]] = []
                pending: list[tuple[Any, Any]] = []
                while True:
                    ref, item = decoder.get(cancel)
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
                    if per_call is None:
                        per_call = task.images_per_call(task.choose_batch_size(item))
                    pending.append((ref, item))
                    # a full batch goes at once; a partial one too when nothing more is decoded yet, so the
                    # model never idles waiting to fill a batch (results do not depend on the batch)
                    if len(pending) >= per_call or decoder.queue.empty():
                        flush(pending, outcomes)
                        if cancel.is_set():
                            raise RunCancelled("cancelled")
                if pending:
                    flush(pending, outcomes)
                yield task.commit(unit, outcomes)
        finally:
            decoder.close()
