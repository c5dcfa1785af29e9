"""A run in a background thread (``mt.run(..., background=True)``): its handle, and the runs this process has running.

A notebook stays responsive while a run goes on; the handle cancels it, waits for it and shows its progress
where it is displayed. A second ``run()`` of a run this process already has running gets its handle (or a plain
error) rather than the lock's "held by pid ..." of its own kernel.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..errors import RunCancelled, RunLockedError
from ..store.store import Store
from .progress import announce_start, progress_summary, show_in_notebook
from .run import Run

__all__ = ["RunHandle", "already_running"]

log = logging.getLogger(__name__)


class RunHandle:
    """A run executing in a background thread (``mt.run(..., background=True)``).

    The notebook stays responsive; ``handle.cancel()`` stops it after the current batch (committed
    work is kept), ``handle.wait()`` blocks until it ends and returns the :class:`Run`.
    """

    def __init__(self, store: Store, run_id: str, cancel: threading.Event) -> None:
        self.store, self.run_id, self._cancel = store, run_id, cancel
        self._thread: threading.Thread | None = None
        # set when the run's thread ends: an interrupted Thread.join() (Ctrl-C in handle.wait()) can leave
        # is_alive() False and later joins returning at once while the thread still runs
        self._ended = threading.Event()
        self.exception: BaseException | None = None
        self.started: float | None = None  # time.time() when start() was called

    @property
    def run(self) -> Run:
        return Run(self.store, self.run_id)

    @property
    def status(self) -> str:
        return self.run.status

    def done(self) -> bool:
        return self._ended.is_set()

    def cancel(self) -> None:
        """Ask the run to stop after the current batch."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> Run:
        """Wait for the run to end; re-raises its error (not a cancellation)."""
        if self._thread is not None:
            self._ended.wait(timeout)
        if self.exception is not None and not isinstance(self.exception, RunCancelled):
            raise self.exception
        return self.run

    def start(self, job: Any) -> None:
        """Execute ``job`` in a daemon thread; its exception is kept for :meth:`wait`."""

        def target() -> None:
            try:
                job.execute()
            except BaseException as exc:  # noqa: BLE001 - kept on the handle, re-raised by wait()
                self.exception = exc
            finally:
                with _RUNNING_LOCK:
                    if _RUNNING.get(slot) is self:
                        del _RUNNING[slot]
                self._ended.set()

        slot = _running_slot(job)
        self.started = time.time()
        announce_start(self.store, self.run_id, self)
        with _RUNNING_LOCK:
            _RUNNING[slot] = self
        self._thread = threading.Thread(target=target, name=f"musseltools-run-{self.run_id}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:  # the handle's state, not run.json's status (the last call's till this one starts)
        p = self.run.progress
        state = f"done ({p.get('status')})" if self.done() else "running"
        return f"<RunHandle {self.run_id} {state}: {progress_summary(p)}>"

    _ipython_display_ = show_in_notebook  # a notebook shows the run's progress where the handle is shown


#: Background runs executing in this process, by (store folder, inference key): a second ``run()`` of
#: one of them gets its handle (or a plain error) instead of the lock's "held by pid …" of its own kernel.
_RUNNING: dict[tuple[str, str], RunHandle] = {}
_RUNNING_LOCK = threading.Lock()


def _running_slot(job: Any) -> tuple[str, str]:
    return job.store.location, job.key


def already_running(job: Any, background: bool) -> RunHandle | None:
    """The handle of this run when it already runs in this process (``background``); else a plain error.
    A run being cancelled is waited for (a batch at most): this call then resumes it."""
    with _RUNNING_LOCK:
        handle = _RUNNING.get(_running_slot(job))
    if handle is not None and handle._cancel.is_set():
        handle._ended.wait()
    if handle is None or handle.done():
        return None
    if background and handle.run_id == job.run_id:
        log.info("[run %s] already running in this process; returning its handle", job.run_id)
        return handle
    when = time.strftime("%H:%M", time.localtime(handle.started or time.time()))
    same = "run " + job.run_id if handle.run_id == job.run_id else f"run {handle.run_id} (same model and settings)"
    raise RunLockedError(
        f"{same} is already running in this notebook (started {when}) — use the handle it returned: "
        "handle.wait() for the run, handle.cancel() to stop it; or run again once it has ended"
    )
