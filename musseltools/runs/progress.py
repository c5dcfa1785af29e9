"""What a run tells while and after it runs, apart from what it commits.

- :func:`write_progress`: the phase of a running run and how many images it has inferred, committed or
  not, in ``cache/progress-RUN_ID.json`` (``run.json`` records only what is committed);
- :class:`InferredCounter`: the executors' ``on_progress``, feeding the progress bar and that file;
- :func:`cap_hit_message`: which images reached the detection cap, and what to do about it;
- :func:`progress_summary`: a run's images done, of which before this call, and its counts, in a line;
- :func:`on_start` / :func:`announce_start`: displays (a notebook's ``RunMonitor``) follow a run id
  through resumes: a call of ``run()`` in this process tells them it started;
- :func:`show_in_notebook`: a background run's handle shown in a notebook shows its run's progress there.
"""

from __future__ import annotations

import contextlib
import importlib
import weakref
from collections.abc import Callable
from typing import Any

from ..errors import MusselToolsError
from ..executors import Executor, LocalExecutor, ProcessExecutor
from ..executors.task import RunTask
from ..store.store import Store, utcnow

__all__ = ["InferredCounter", "announce_start", "cap_hit_message", "off_start", "on_start", "phase_before_inference",
           "progress_summary", "show_in_notebook", "write_progress"]

#: What a background run's handle shows in a notebook, as "module:callable", imported when first shown (this
#: layer never imports musseltools.jupyter): called with the handle, it returns a widget following the run.
NOTEBOOK_DISPLAY = "musseltools.jupyter.monitor:RunMonitor"

#: Who follows which run: (store location, run id) -> callbacks(handle or None), held weakly.
_FOLLOWERS: dict[tuple[str, str], weakref.WeakSet] = {}


def on_start(store: Store, run_id: str, follower: Any) -> None:
    """Call ``follower.run_started(handle)`` each time a call of ``run()`` in this process starts
    ``run_id`` (a resume too; ``handle`` is the :class:`~musseltools.runs.handle.RunHandle` of a
    background call, else None). Held weakly: a follower that is garbage collected is forgotten."""
    _FOLLOWERS.setdefault((store.location, run_id), weakref.WeakSet()).add(follower)


def off_start(store: Store, run_id: str, follower: Any) -> None:
    """Stop calling ``follower`` when ``run_id`` starts (see :func:`on_start`)."""
    _FOLLOWERS.get((store.location, run_id), weakref.WeakSet()).discard(follower)


def announce_start(store: Store, run_id: str, handle: Any) -> None:
    """Tell the followers of ``run_id`` that a call of ``run()`` starts it (see :func:`on_start`)."""
    for follower in list(_FOLLOWERS.get((store.location, run_id), ())):
        follower.run_started(handle)


def show_in_notebook(handle: Any) -> None:
    """``RunHandle._ipython_display_``: a handle shown in a notebook (a cell's last line, ``display(handle)``)
    shows its run's progress in that output area: one widget per handle (``handle.progress_display``), made
    by :data:`NOTEBOOK_DISPLAY` when first shown, following the run through resumes. Text without ipywidgets."""
    from IPython.display import display

    widget = getattr(handle, "progress_display", None)
    if widget is None:
        module, _, name = NOTEBOOK_DISPLAY.partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except ImportError:  # ipywidgets missing: the handle's state, as text
            display({"text/plain": repr(handle)}, raw=True)
            return
        widget = handle.progress_display = factory(handle)
    display(widget)


def progress_summary(p: dict[str, Any], saved: int | None = None) -> str:
    """``90/120 images (60 before this call), 2 failed; live 310, dead 42`` from ``run.progress``; given
    ``saved`` (images committed) under the images done, ``90/120 images, 80 of them saved (60 before …``."""
    total = int(p.get("total_images") or 0)
    done = int(p.get("inferred_count") or p.get("processed_count") or 0)
    done = min(done, total) if total else done
    text = f"{done}/{total} images"
    if saved is not None and saved < done:
        text += f", {saved} of them saved"
    before = p.get("processed_before_call")
    if before:
        text += f" ({before} before this call)"
    if p.get("failed_count"):
        text += f", {int(p['failed_count'])} failed"
    counts = p.get("counts") or {}
    order = sorted(counts, key=lambda k: (k != "live", k != "dead", k))  # live and dead first, as everywhere
    return text + ("; " + ", ".join(f"{k} {int(counts[k])}" for k in order) if counts else "")


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
