"""Hand corrections on a run: recording them (:mod:`~musseltools.corrections.api`, the methods of
:class:`musseltools.Run`), checking them (:mod:`~musseltools.corrections.check`), the review queue, the CSV
format and the training-data export. The log itself is stored by :mod:`musseltools.store.corrections_log`,
and the results view applies it (:mod:`musseltools.results.corrected`)."""

from __future__ import annotations

from ..store.corrections_log import compact_corrections, read_corrections
from .annotations import export_predictions, import_annotations
from .csv import export_corrections_csv, import_corrections_csv
from .dataset import export_dataset
from .review import review_queue, verified_labels

__all__ = [
    "read_corrections", "compact_corrections", "review_queue", "verified_labels", "export_corrections_csv",
    "import_corrections_csv", "export_dataset", "export_predictions", "import_annotations",
]
