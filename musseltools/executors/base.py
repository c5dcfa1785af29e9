"""The two protocols of execution: a unit task, and an executor that runs it over commit units.

An executor receives a *task* (a :class:`UnitTask`) and the *units* to process, and yields one
summary per committed unit. The task knows how to ``load`` one image (decode + prepare, thread-safe),
``predict`` a batch, and ``commit`` a unit; calling the task on a unit does all three (what a worker
process or a Dask worker does). Tasks are picklable and load their model lazily where they run. Run
semantics (plan, status, counts, run metadata) stay in the engine, whatever the executor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from .planning import ImageRef, Unit, UnitSummary

__all__ = ["Executor", "UnitTask"]


class UnitTask(Protocol):
    """What an executor may ask of a run's task (implemented by :class:`musseltools.executors.task.RunTask`).

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

    def commit_partial(self, unit: Unit, outcomes: list[tuple[ImageRef, Any, str | None]]) -> UnitSummary:
        """Commit the outcomes of part of a unit as a smaller part of its own (a cancelled run)."""
        ...

    def commit_failed(self, unit: Unit, reason: str) -> UnitSummary:
        """Commit every image of a unit as failed with ``reason`` (no worker could finish the unit)."""
        ...

    def __call__(self, unit: Unit, *, on_image: Callable[[int], None] | None = None,
                 stop: Callable[[], bool] | None = None,
                 before_commit: Callable[[], None] | None = None) -> UnitSummary:
        """Process one unit from start to commit in the calling process; ``on_image(n)``: n more images
        done; ``stop()`` true: commit what is done as a smaller part and return; ``before_commit()``:
        called right before each part is committed (it may exit the process instead)."""
        ...


class Executor(Protocol):
    """Processes units with a task; yields one :class:`UnitSummary` per committed unit, in any order.

    ``cancel`` set: stop after the current batch, commit what is inferred of the units in progress as
    smaller parts (yielded with ``complete=False``), then raise :class:`RunCancelled`. ``on_progress(n)``: ``n`` more images are done (inferred or failed).
    """

    def process(
        self,
        task: UnitTask,
        units: Sequence[Unit],
        *,
        cancel: threading.Event,
        on_progress: Callable[[int], None] = ...,
    ) -> Iterator[UnitSummary]: ...
