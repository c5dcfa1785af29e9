"""What a run tells while and after it runs, apart from what it commits.

- :func:`write_progress`: the phase of a running run and how many images it has inferred, committed or
  not, in ``cache/progress-RUN_ID.json`` (``run.json`` records only what is committed);
- :class:`InferredCounter`: the executors' ``on_progress``, feeding the progress bar and that file;
- :func:`cap_hit_message`: which images reached the detection cap, and what to do about it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from ..errors import MusselToolsError
from ..executors import Executor, LocalExecutor, ProcessExecutor
from ..store.store import Store, utcnow
from ..executors.task import RunTask

__all__ = ["InferredCounter", "cap_hit_message", "phase_before_inference", "write_progress"]


def phase_before_inference(executor: Executor, task: RunTask) -> str:
    """What a run does before its first image is inferred (``phase`` in ``run.json``)."""
    if isinstance(executor, ProcessExecutor):
        return f"starting {executor.workers} worker processes"
    if isinstance(executor, LocalExecutor):
        return "loading model" + (" and measuring batch size" if task.batch_size is None else "")
    return "sending tasks to the cluster"


def write_progress(store: Store, run_id: str, **progress: Any) -> None:
    """What a running run is doing (``phase``) and how many images it has inferred, committed or not:
    in ``cache/progress-RUN_ID.json``, apart from ``run.json`` (volatile, written up to twice a second,
    never the record of what is committed). A failed write never fails the run."""
    with contextlib.suppress(OSError, MusselToolsError):
        store.write_json_cache(f"progress-{run_id}.json", {**progress, "at": utcnow().isoformat()})


class InferredCounter:
    """``on_progress`` of the executors: the progress bar, and ``inferred_count`` in ``run.json`` (images
    with a result, committed or still in the unit in flight), written at most every ``every`` seconds."""

    def __init__(self, store: Store, run_id: str, before: int, total: int, bar: Callable[[int], Any],
                 every: float = 0.5) -> None:
        self.store, self.run_id, self.count, self.total, self.bar, self.every = store, run_id, before, total, bar, every
        self.written_at = float("-inf")

    def __call__(self, n: int) -> None:
        import time

        self.bar(n)
        self.count += n
        now = time.monotonic()
        if now - self.written_at >= self.every:
            self.written_at = now
            write_progress(self.store, self.run_id, inferred_count=min(self.count, self.total), phase="inferring")


def cap_hit_message(images: list[str], max_det: int) -> str:
    """What a run says when images reached the detection cap: which ones, and what to do.

    >>> cap_hit_message(["q/a.jpg"], 10000)  # doctest: +ELLIPSIS
    '1 image reached the detection cap (max_det 10000), so its counts may be too low: q/a.jpg — ...'
    """
    n = len(images)
    names = ", ".join(images[:5]) + (f" and {n - 5} more" if n > 5 else "")
    return (f"{n} image{'s' if n > 1 else ''} reached the detection cap (max_det {max_det}), so "
            f"{'their' if n > 1 else 'its'} counts may be too low: {names} — for large photographs use tiles "
            "(--tile auto, tile='auto'), else raise the cap (--max-det N, max_det=N)")
