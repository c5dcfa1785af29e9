"""Start the worker processes' server while the collection is scanned, when process workers will likely run.

A cold ``musseltools run`` spent about 3.5 s between "300 of 300 images to process" and its first inferred
image: the fork server that worker processes fork from was started only then, and imported torch,
torchvision and Ultralytics before the first worker could load the model. Started at the beginning of the
run instead, its imports overlap this process's own work (reading and hashing the weights, scanning and
hashing the collection, planning), and the workers fork from a server that is ready, or nearly.

It is started only when :func:`~musseltools.executors.choose_executor` would choose worker processes for
the whole collection (a quick count of its image files, stopped at the number needed), on a machine
without a GPU (known without importing torch). A run that then has less to infer (a resume) leaves the
server idle; it serves this process's later runs and exits with it.

What the server imports depends on the run: torch, torchvision and Ultralytics, unless the workers will
likely infer without torch (:func:`lean_workers_likely`: a graph of these weights checked with the
torch-free predictor is in the store's cache), when it imports ONNX Runtime and cv2 only.

While the workers start and infer, this process mostly waits. :func:`import_in_background` uses that time
for the imports the end of the run needs (the Zarr cube: xarray, which imports dask.array when Dask is
installed, and zarr; about 1 s on this project's 2 cores, once per process), which a cold
``musseltools run`` otherwise paid after its last image.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ..images.suffixes import IMAGE_SUFFIXES
from ..machine import cpu_cores, cuda_possible
from .server import start_server, started

__all__ = ["start_early", "count_images", "import_in_background", "CUBE_MODULES", "lean_workers_likely"]

#: What writing a run's cube imports: xarray, zarr, and dask.array when Dask is installed (xarray then looks
#: for Dask arrays among the cube's data).
CUBE_MODULES = ("xarray", "zarr", "dask.array")


def count_images(images: Any, limit: int) -> int:
    """Image files of a local folder (recursively) or a list of paths, counted up to ``limit``; 0 for anything
    else (an object store, a Collection)."""
    if isinstance(images, (list, tuple)):
        return min(len(images), limit)
    if not isinstance(images, (str, os.PathLike)) or "://" in str(images) or not os.path.isdir(images):
        return 0
    n = 0
    for _, _, files in os.walk(images):
        n += sum(os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES for f in files)
        if n >= limit:
            return limit
    return n


def start_early(images: Any, options: Mapping[str, Any], *, executor: Any = None, client: Any = None) -> bool:
    """Start the workers' server now when the run will likely use worker processes; whether it was started."""
    from . import MIN_IMAGES_PER_WORKER  # the package's rule for choosing workers

    if started():  # by the command, from its options, before this run was opened: nothing to decide again
        return True
    if executor is not None or client is not None or options.get("scheduler") or options.get("scheduler_file"):
        return False
    workers, device = options.get("workers"), options.get("device")
    if workers == 1 or (device and not str(device).startswith("cpu")) or (device is None and cuda_possible()):
        return False
    if workers is None:
        weight = 20 if options.get("tile") not in (None, "none") else 1
        if cpu_cores() < 2 or count_images(images, 2 * MIN_IMAGES_PER_WORKER) * weight < 2 * MIN_IMAGES_PER_WORKER:
            return False
    return start_server(lean=lean_workers_likely(options))


def lean_workers_likely(options: Mapping[str, Any]) -> bool:
    """Whether a run's workers will likely infer without torch: its settings (given, else the weights' card's)
    ask for ONNX Runtime on a CPU, whole images, and the graph cache its workers will use holds a graph of
    these weights whose torch-free predictor passed its check (:func:`~musseltools.models.onnx_lean.lean_graph_checked`).
    A wrong guess costs time only: a worker that needs torch imports it."""
    if options.get("backend") in (None, "torch"):  # a card recommends no backend: torch, known without imports
        return False
    from ..models.base import fingerprint
    from ..models.card import read_card, resolve_settings
    from ..models.onnx import backend_in_use
    from ..models.onnx_lean import lean_graph_checked
    from ..store.store import Store
    from .task import graph_cache

    try:
        values = resolve_settings(options, read_card(options["model"])).values
        if values.get("tile") is not None or backend_in_use(values["backend"] or "torch",
                                                            str(options.get("device") or "cpu")) != "onnx":
            return False
        store = options.get("store")
        return lean_graph_checked(graph_cache(store if isinstance(store, Store) else Store(store)),
                                  fingerprint(options["model"]))
    except Exception:  # noqa: BLE001 - a guess: the run itself reports what is wrong
        return False


def import_in_background(modules: Sequence[str] = CUBE_MODULES) -> threading.Thread | None:
    """Import ``modules`` (those installed and not imported yet) in a daemon thread; the thread, or None when
    there is nothing to import. Meant for a process that waits on worker processes: the imports take no time
    from inference in this process. Join the thread before using the modules' results in earnest: a module
    imported at the same time by two threads is complete when its import returns in either."""
    todo = [m for m in modules if m not in sys.modules and importlib.util.find_spec(m.partition(".")[0]) is not None]
    if not todo:
        return None

    def run() -> None:
        for name in todo:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the import is tried again, and its error shown, where it is used
                return

    thread = threading.Thread(target=run, name="musseltools-imports", daemon=True)
    thread.start()
    return thread
