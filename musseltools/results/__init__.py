"""The results view: a run's stored model results with its hand corrections applied
(:mod:`~musseltools.results.view`), and the threshold views over them: counts, totals, the count cube and the
polygon documents (:mod:`~musseltools.results.views`)."""

from __future__ import annotations

from .view import RunResults, load_counting, load_results

__all__ = ["RunResults", "load_results", "load_counting"]
