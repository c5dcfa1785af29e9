"""A run's life: the engine that plans and drives a run (:func:`run`, :class:`RunHandle`), its progress and
tally, and the :class:`Run` view that every notebook, widget and report reads."""

from __future__ import annotations

from .engine import RunHandle, run
from .run import Run, list_runs, open_run

__all__ = ["run", "RunHandle", "Run", "open_run", "list_runs"]
