"""Follow a run from a notebook: :class:`RunMonitor` polls the run's ``run.json``.

It works across processes (a run started with ``musseltools run`` in a terminal) and, given a
:class:`~musseltools.runs.handle.RunHandle`, follows that handle until its thread ends, so a monitor made
straight after resuming a cancelled or failed run never stops on the old status. A monitor follows its
run id through resumes: when ``run()`` starts the run again in this process, a monitor that had stopped
polls again (with the new call's handle), counting the run's images, those before this call included.

One progress display per run: a monitor made for a run that an older monitor in this process shows (a resume
cell that shows its own handle) takes over, and the older one stops and says that a later display follows
the run.
"""

from __future__ import annotations

import html
import os
import threading
import weakref
from typing import Any

import ipywidgets as widgets

from ..errors import MusselToolsError
from ..runs.progress import off_start, on_start, progress_summary
from ..runs.run import TERMINAL, Run
from ..store.store import Store

__all__ = ["RunMonitor", "progress_text"]

_STYLES = {"completed": "success", "failed": "danger", "cancelled": "warning"}

#: The newest monitor of each run in this process: (store location, run id) -> monitor, held weakly.
_NEWEST: dict[tuple[str, str], weakref.ReferenceType] = {}


def progress_text(run_id: str, p: dict[str, Any]) -> tuple[int, int, str]:
    """Images done (inferred, committed or not), total, and the status line of a run's ``run.json``."""
    total = int(p.get("total_images") or 0)
    committed = int(p.get("processed_count") or 0)
    status = p.get("status") or "unknown"
    inferred = int(p.get("inferred_count") or 0) if status == "running" else 0
    done = min(max(committed, inferred), total) if total else max(committed, inferred)
    text = (f"run <code>{html.escape(run_id)}</code>: <b>{html.escape(status)}</b> — "
            f"<span class='mt-run-progress'>{html.escape(progress_summary({**p, 'inferred_count': done}, committed))}"
            "</span>")
    if status == "running" and p.get("phase"):
        text += f" — <i>{html.escape(str(p['phase']))}</i>"
    if p.get("error"):
        text += f" — {html.escape(str(p['error']))}"
    return done, total, text


class RunMonitor(widgets.VBox):
    """Status and progress of a run, polled from its ``run.json`` (works across processes).

    The bar counts images as they are inferred (``inferred_count``, written at most twice a second),
    not only when a commit unit is saved; the label says what the run is doing meanwhile (``phase``:
    "loading model", "measuring batch size", "starting 2 worker processes", "inferring").

    Polling runs in a daemon thread every ``interval`` seconds. Given a
    :class:`~musseltools.runs.handle.RunHandle`, it follows that handle until the handle's thread ends
    (whatever status ``run.json`` still holds from an earlier call); given a run or a run id, until
    the run ends (completed, failed or cancelled). :meth:`stop` stops it, :meth:`refresh` updates once.

    Parameters
    ----------
    run_or_id : Run, RunHandle or str
        The run, a background handle, or a run id (with ``store``).
    store : path or Store, optional
        The store of a run given by id.
    interval : float
        Seconds between polls.
    start : bool
        Start polling now.

    Examples
    --------
    >>> handle = mt.run("data/demo/images", model="data/models/mussel-demo.pt", background=True)  # doctest: +SKIP
    >>> RunMonitor(handle)                                              # doctest: +SKIP
    """

    def __init__(self, run_or_id: Any, store: str | os.PathLike | Store | None = None, interval: float = 1.0,
                 *, start: bool = True) -> None:
        self.handle: Any = None
        if isinstance(run_or_id, Run):
            self.run = run_or_id
        elif isinstance(run_or_id, str):
            self.run = Run(store, run_or_id)
        elif hasattr(run_or_id, "run") and hasattr(run_or_id, "done"):  # a RunHandle
            self.handle = run_or_id
            self.run = run_or_id.run
        else:
            raise TypeError(f"RunMonitor takes a Run, a RunHandle or a run id, not {type(run_or_id).__name__}")
        self.interval = float(interval)
        self.bar = widgets.IntProgress(value=0, min=0, max=1, description="images", bar_style="info")
        self.label = widgets.HTML()
        self.label.add_class("mt-run-status")
        super().__init__([self.label, self.bar])
        self.add_class("mt-run-monitor")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._old_start: Any = None  # run.json's started_at of a call that has ended before a resume
        self._restarted = False  # run_started() came while the polling thread was deciding to stop
        self.handed_over = False  # a newer monitor of the same run follows it now
        self.last: dict[str, Any] = {}
        self.refresh()
        key = (self.run.store.location, self.run.run_id)
        older = _NEWEST.get(key, lambda: None)()
        if older is not None and older is not self:
            older.hand_over()
        _NEWEST[key] = weakref.ref(self)
        on_start(self.run.store, self.run.run_id, self)
        if start and not self._ended():
            self._start_polling()

    def _start_polling(self) -> None:
        with self._lock:
            if self.polling:  # a polling thread sees a resume's _restarted and goes on
                return
            self._restarted = False
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name=f"musseltools-monitor-{self.run.run_id}",
                                            daemon=True)
            self._thread.start()

    def hand_over(self) -> None:
        """A newer monitor of this run took over (see the module's docstring): stop polling, stop following
        resumes, and say so under the last state shown."""
        self.handed_over = True
        off_start(self.run.store, self.run.run_id, self)
        self.stop()
        self.label.value += " — <i>a newer display of this run, in a later cell, follows it from here</i>"

    def run_started(self, handle: Any) -> None:
        """``run()`` starts this monitor's run again (a resume): follow the new call (its handle, if any)."""
        if self.handed_over:
            return
        with self._lock:
            self._old_start = self.last.get("started_at")
            self.handle = handle
            self._restarted = True
        self._start_polling()

    @property
    def polling(self) -> bool:
        """Whether the polling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _ended(self) -> bool:
        """A handle's run has ended when its thread has; another run when ``run.json`` says so."""
        if self.handle is not None:
            return bool(self.handle.done())
        return self.last.get("status") in TERMINAL and self.last.get("started_at") != self._old_start

    def refresh(self) -> dict[str, Any]:
        """Read the run's progress once and update the widget; returns ``run.progress``."""
        p = self.run.progress
        status = p.get("status") or "unknown"
        done, total, text = progress_text(self.run.run_id, p)
        self.bar.max = max(total, 1)
        self.bar.value = min(done, self.bar.max)
        self.bar.bar_style = _STYLES.get(status, "info")
        self.label.value = text
        self.last = p
        return p

    def _poll(self) -> None:
        while not self._stop.is_set():
            ended = self._ended()  # read before the refresh: the last refresh then sees the final state
            try:
                self.refresh()
            except MusselToolsError as exc:  # e.g. run.json briefly unreadable: say so, keep polling
                self.label.value = f"cannot read run {html.escape(self.run.run_id)}: {html.escape(str(exc))}"
            with self._lock:  # stop, unless a resume came meanwhile (run_started then starts no thread)
                if self._restarted:
                    self._restarted = False
                    continue
                if ended or self._ended() and self.handle is None:
                    self._thread = None
                    return
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """Stop polling (the widget keeps its last state)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(2.0, 2 * self.interval))
