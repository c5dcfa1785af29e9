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

from .core.detections import Detections  # noqa: E402
from .errors import (
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
from .evaluation import evaluate  # noqa: E402
from .evaluation.calibrate import Calibration, calibrate  # noqa: E402
from .evaluation.compare import Comparison, compare  # noqa: E402
from .images.collection import Collection, scan  # noqa: E402
from .models import InferenceSettings, load_model  # noqa: E402
from .reports.report import report  # noqa: E402 - papermill and nbconvert load only when a report is made
from .runs.engine import RunHandle, run  # noqa: E402
from .runs.run import Run, list_runs, open_run  # noqa: E402
from .store.store import Store  # noqa: E402

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
