"""musseltools: count live and dead mussels in survey photographs with YOLO.

Batched, resumable runs over image collections; results in Parquet and an xarray/Zarr cube of counts
against threshold; notebooks, widgets and reports for JupyterLab.

>>> import musseltools as mt                                                        # doctest: +SKIP
>>> run = mt.run("data/demo/images", model="data/models/mussel-demo.pt")            # doctest: +SKIP
>>> run.totals, run.per_image(threshold=0.6)                                        # doctest: +SKIP
"""

from __future__ import annotations

import os as _os
from importlib import metadata as _metadata

_os.environ.setdefault("YOLO_OFFLINE", "1")  # Ultralytics must never reach for the network

from .errors import (  # noqa: E402 - light: the errors every caller may catch
    CollectionError,
    CorrectionError,
    CorruptStoreError,
    InferenceError,
    ModelChangedError,
    ModelLoadError,
    MusselToolsError,
    RunCancelled,
    RunLockedError,
    RunNotFoundError,
    StoreError,
    ThresholdError,
)

#: Where each public name lives: imported on first use (PEP 562), so that ``import musseltools`` alone takes
#: milliseconds, not the 0.55 s of pandas, pyarrow and the rest. ``musseltools run`` starts its workers' server
#: before those load (:func:`musseltools.cli.runs.start_workers_early`).
_PUBLIC = {
    "Detections": "core.detections",
    "evaluate": "evaluation",
    "Calibration": "evaluation.calibrate", "calibrate": "evaluation.calibrate",
    "Comparison": "evaluation.compare", "compare": "evaluation.compare",
    "Collection": "images.collection", "scan": "images.collection",
    "InferenceSettings": "models", "load_model": "models",
    "report": "reports.report",  # papermill and nbconvert load only when a report is made
    "RunHandle": "runs.engine", "run": "runs.engine",
    "Run": "runs.run", "list_runs": "runs.run", "open_run": "runs.run",
    "Store": "store.store",
}


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'musseltools' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


try:
    __version__ = _metadata.version("musseltools")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"


__all__ = [
    "__version__",
    "run",
    "open_run",
    "list_runs",
    "report",
    "evaluate",
    "calibrate",
    "Calibration",
    "compare",
    "Comparison",
    "scan",
    "load_model",
    "Run",
    "RunHandle",
    "Store",
    "Collection",
    "Detections",
    "InferenceSettings",
    "MusselToolsError",
    "CollectionError",
    "CorrectionError",
    "ModelLoadError",
    "ModelChangedError",
    "StoreError",
    "CorruptStoreError",
    "RunNotFoundError",
    "RunLockedError",
    "ThresholdError",
    "InferenceError",
    "RunCancelled",
]
