"""The state of a run kept up to date from the units a call commits (see :class:`Tally`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..executors.planning import UnitSummary
from ..executors.task import RunTask
from ..store.corrections_log import NO_CORRECTIONS, corrections_signature
from ..store.store import Store

__all__ = ["Tally"]


@dataclass
class Tally:
    """The run's state kept up to date from the summaries of the units this call commits, so that a completed
    run need not read every result back to count it (memory flat in the collection's size).

    Exact only when the state it started from was, and nothing but this call changed the results: no
    image that had failed is tried again (it would be counted twice), no correction exists (they change
    counts), the thresholds stayed those the units were counted at, no minimum shell length applies (the units'
    counts know no lengths), and the run completed (a unit a
    worker committed after its run failed sends no summary). Otherwise the run is counted from the store.
    """

    processed: int
    failed: int
    counts: dict[str, int]
    cap_hit: list[str]
    corrections: str

    @classmethod
    def start(cls, before: Mapping[str, Any], store: Store) -> Tally | None:
        if before["failed"] or corrections_signature(store) != NO_CORRECTIONS:
            return None
        return cls(before["processed"], 0, dict(before["counts"]), list(before.get("cap_hit") or []), NO_CORRECTIONS)

    def add(self, summary: UnitSummary) -> None:
        self.processed += summary.n_images
        self.failed += summary.n_failed
        for c, k in summary.counts.items():
            self.counts[c] = self.counts.get(c, 0) + k
        self.cap_hit.extend(summary.cap_hit)

    def still_exact(self, meta: Mapping[str, Any], task: RunTask) -> bool:
        thresholds = (meta.get("saved_thresholds") or float(meta["threshold"]), float(meta["threshold"]))
        return (thresholds == (task.thresholds, task.threshold) and not meta.get("min_length_mm")
                and corrections_signature(task.store) == self.corrections)

    def state(self, signature: str) -> dict[str, Any]:
        return {"processed": self.processed, "failed": self.failed, "counts": dict(self.counts),
                "signature": signature, "cap_hit": sorted(self.cap_hit)}
