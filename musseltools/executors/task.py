"""The unit task of a run: decode, infer and commit commit units, in whatever process runs it.

:class:`RunTask` implements :class:`~musseltools.executors.UnitTask`. It is picklable and holds plain
settings only; its model is loaded lazily, in the process that runs it, so that an executor may ship
it to other processes or machines (each loads the model once and keeps it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .._failpoints import failpoint
from ..core.detections import DETECTIONS_SCHEMA, Detections
from ..core.thresholds import Thresholds
from ..errors import InferenceError, MusselToolsError
from ..images.decode import decode_image, read_regular_file
from ..machine import keep_freed_memory_for_reuse
from ..models import (
    InferenceSettings,
    LoadedModel,
    ModelInfo,
    Predictor,
    Prepared,
    default_device,
    load_model,
    make_predictor,
)
from ..models.onnx import runtimes_used
from ..models.onnx_lean import lean_predictor
from ..store.store import IMAGES_SCHEMA, Store, atomic_write_bytes, utcnow
from .planning import ImageRef, Unit, UnitSummary, sub_unit

__all__ = ["RunTask", "Outcome", "PREDICTORS", "graph_cache", "user_cache_dir"]

log = logging.getLogger(__name__)

#: What became of one image of a unit: (image, detections or None, error message or None).
Outcome = tuple[ImageRef, Any, "str | None"]


def user_cache_dir() -> Path:
    """Per-user cache (``$MUSSELTOOLS_CACHE``, else ``$XDG_CACHE_HOME/musseltools``, else ``~/.cache/musseltools``)."""
    if os.environ.get("MUSSELTOOLS_CACHE"):
        return Path(os.environ["MUSSELTOOLS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "musseltools"


def graph_cache(store: Store) -> Path:
    """Where a run's ONNX graphs are cached: the store's cache when it is a writable local folder, else the machine's."""
    if not store.remote and os.access(store.root if store.root.exists() else store.root.parent, os.W_OK):
        return store.root / "cache" / "onnx"
    return user_cache_dir() / "onnx"


def _read_json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


class RunTask:
    """Decode, infer and commit the commit units of one run.

    Picklable: a task holds only plain settings (the store's folder; the model's path, SHA-256, family,
    classes and class map as a :class:`~musseltools.models.ModelInfo`; the inference settings and key;
    the thresholds in effect as a plain value, and the run's own threshold; the device and model batch
    size). Its model is loaded lazily, in the process that runs the task, from the bytes that were
    hashed: a weights file whose SHA-256 is no longer the recorded one is refused
    (:class:`~musseltools.errors.ModelChangedError`). A model already built in this process may be
    handed over (``model=LoadedModel``); it is used here and never pickled, nor is the predictor.

    Parameters
    ----------
    store : Store or path
    model : ModelInfo or LoadedModel
    settings : InferenceSettings
    inference_key : str
    thresholds : float or mapping of str to float
        The thresholds in effect (saved per-class thresholds, else the run's threshold): the counts of
        each committed unit are at these.
    threshold : float
        The run's threshold: a class the thresholds leave out keeps it.
    device : str, optional
    batch_size : int, optional
        The model batch size; measured on the first image when None.

    Examples
    --------
    >>> import pickle                                                               # doctest: +SKIP
    >>> task = pickle.loads(pickle.dumps(task))                                     # doctest: +SKIP
    >>> task(unit)  # reads, infers and commits one part, in this process            # doctest: +SKIP
    UnitSummary(key='...', n_images=32, n_failed=0, n_inferred=32, counts={'live': 7, 'dead': 2})
    """

    def __init__(
        self,
        *,
        store: Store | str | os.PathLike,
        model: ModelInfo | LoadedModel,
        settings: InferenceSettings,
        inference_key: str,
        thresholds: float | Mapping[str, float],
        threshold: float,
        device: str | None = None,
        batch_size: int | None = None,
        threads: int | None = None,
    ) -> None:
        # the same store from a worker in another folder (or on another machine, for an object store)
        self.store_root = (store if isinstance(store, Store) else Store(store)).location
        self.info = model.info if isinstance(model, LoadedModel) else model
        self.settings = settings
        self.inference_key = inference_key
        self.thresholds = thresholds
        self.threshold = float(threshold)
        self.device = device
        self.batch_size = batch_size
        self.threads = threads
        self.inferred = 0
        self._start(store if isinstance(store, Store) else None,
                    model if isinstance(model, LoadedModel) and model.model is not None else None)

    def _start(self, store: Store | None = None, model: LoadedModel | None = None) -> None:
        """The state a task builds in the process that runs it (never pickled)."""
        self._store = store
        self._model = model
        self._predictor: Predictor | None = None
        self._lock = threading.Lock()
        self._rule: tuple[str, Thresholds] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start()

    # -- what the task builds where it runs -----------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.store_root)
        return self._store

    @property
    def predictor(self) -> Predictor:
        """The model's predictor, built on first use (the model loaded first when it is not built yet).

        A model not built yet whose graph was checked by an earlier run with the torch-free predictor
        (:func:`~musseltools.models.onnx_lean.lean_predictor`) is not loaded at all: its card's class names
        and task are all that predictor needs, so this process never imports torch."""
        keep_freed_memory_for_reuse()  # in whatever process infers: a Dask nanny's worker, a pool after a cluster
        with self._lock:
            if self._predictor is None:
                key = self._cache_key()
                cached = PREDICTORS.get(key) if self._model is None else None
                if cached is None and self._model is None:
                    cached = lean_predictor(self.info, self.settings, graph_cache(self.store),
                                            device=self.device or default_device(), threads=self.threads)
                    if cached is not None:
                        PREDICTORS.clear()
                        PREDICTORS[key] = cached
                if cached is None:
                    if self._model is None:
                        info = self.info
                        self._model = load_model(info.path, class_map=info.class_map, family=info.family,
                                                 sha256=info.fingerprint, trust_pickle=info.trust_pickle)
                    cached = make_predictor(self._model, self.settings, device=self.device, threads=self.threads,
                                            cache=graph_cache(self.store))
                    PREDICTORS.clear()  # one model per worker process: a new run's model replaces the last
                    PREDICTORS[key] = cached
                self._predictor = cached
                self._predictor.batch_size = self.batch_size
            return self._predictor

    def _cache_key(self) -> str:
        """What identifies a predictor in this process: the weights' SHA-256, family, settings and device."""
        return json.dumps([self.info.fingerprint, self.info.family, self.info.class_map, self.settings.to_dict(),
                           self.device, self.threads], sort_keys=True, default=str)

    @property
    def rule(self) -> Thresholds:
        """:attr:`thresholds` as :class:`~musseltools.core.thresholds.Thresholds` (a class left out keeps the run's)."""
        plain = json.dumps(self.thresholds, sort_keys=True)
        if self._rule is None or self._rule[0] != plain:
            t = Thresholds.parse(self.thresholds, default=self.threshold, floor=self.settings.conf_floor,
                                 classes=self.info.classes)
            self._rule = (plain, t)
        return self._rule[1]

    # -- the steps ------------------------------------------------------------------------------------
    def load(self, ref: ImageRef) -> Prepared | str:
        """Read, verify and decode one image; an error message (str) when it cannot be used."""
        if ref.error:
            return ref.error
        try:
            data = read_regular_file(ref.fspath, ref.path)
        except FileNotFoundError:
            return (f"file not found: {ref.path} (removed after it was scanned, or not visible from the worker on "
                    f"{socket.gethostname()}: workers must reach the images by the same path)")
        except IsADirectoryError:
            return f"{ref.path} is a directory, not an image file"
        except OSError as exc:
            return f"cannot read {ref.path}: {exc.strerror or exc}"
        if hashlib.sha256(data).hexdigest() != ref.image_id:
            return f"file changed after it was scanned: {ref.path} — it is a new image; run again to process it"
        try:
            image = decode_image(data)
        except ValueError as exc:
            return f"cannot decode {ref.path}: {exc}"
        del data
        return self.predictor.prepare(image)

    def predict(self, batch: Sequence[Prepared]) -> list[Detections]:
        """Detections of a batch of prepared images; a model failure is an :class:`InferenceError`."""
        try:
            dets = self.predictor.predict(batch)
        except MusselToolsError:
            raise
        except Exception as exc:
            raise InferenceError(
                f"the model failed during inference: {type(exc).__name__}: {exc} — committed results are kept; "
                "run again to resume"
            ) from exc
        self.inferred += len(batch)
        return dets

    def images_per_call(self, batch_size: int) -> int:
        """Images handed to :meth:`predict` at once for a model batch size (the predictor says)."""
        return self.predictor.images_per_call(batch_size)

    def choose_batch_size(self, sample: Prepared) -> int:
        """The model batch size: measured once per device, model and input shape, then remembered."""
        p = self.predictor
        if self.batch_size:
            return self.batch_size
        s = self.settings
        cache_key = f"{p.device}|{self.info.fingerprint}|{s.imgsz}|{s.tile}|{sample.input_shape}"
        # remembered in the store and per machine (a new store on the same machine need not measure again)
        cache = self.store.read_json_cache("batch_size.json")
        machine = _read_json(user_cache_dir() / "batch_size.json")
        known = cache.get(cache_key, machine.get(cache_key))
        if known is not None:
            self.batch_size = int(known)
        else:
            self.batch_size = p.measure_batch_size(sample)
            log.info("model batch size %d measured on %s", self.batch_size, p.device)
        p.batch_size = self.batch_size
        for table, write in ((cache, lambda d: self.store.write_json_cache("batch_size.json", d)),
                             (machine, lambda d: atomic_write_bytes(user_cache_dir() / "batch_size.json",
                                                                    json.dumps(d, indent=2).encode()))):
            if table.get(cache_key) != self.batch_size:
                table[cache_key] = self.batch_size
                with contextlib.suppress(OSError):
                    write(table)
        return self.batch_size

    def inferred_with(self, threads: int | None, runtimes: Sequence[str] = ("torch",)) -> list[str]:
        """What this task's results depend on beyond the weights and settings, as recorded on the run
        (``run.meta["inferred_with"]``): the device, what ran the network and with how many threads per
        forward pass on CPU (``runtimes``: those a unit's summary says ran, ``torch`` or ``onnxruntime``;
        ``threads``: None when this process cannot know them, as for Dask workers) and the model batch size
        (None when each worker measures its own). Results are bit-identical only between runs inferred with
        one such value, on CPU, at batch 1 (docs/what-survives-what.md, "Determinism")."""
        device = self.device or default_device()
        if not device.startswith("cpu"):
            return [f"{device}, batch {self.batch_size or 'unknown'}"]
        return [f"{device}, {threads or 'unknown'} {runtime} threads, batch {self.batch_size or 'unknown'}"
                for runtime in runtimes]

    def commit(self, unit: Unit, outcomes: Sequence[Outcome]) -> UnitSummary:
        """Write one unit's results as one committed part; its counts are at :attr:`rule`."""
        now = utcnow()
        by_id = {ref.image_id: (ref, det, err) for ref, det, err in outcomes}
        rows: dict[str, list] = {f: [] for f in IMAGES_SCHEMA.names}
        det_tables = []
        counts: dict[str, int] = {}
        n_failed = 0
        rule, classes = self.rule, self.info.classes
        for ref in unit.images:
            _, det, err = by_id[ref.image_id]
            if det is None and err is None:  # never silently a zero count
                err = "the model gave no result for this image — run again to retry it"
            h = w = None
            if err is None:
                w, h = det.image_size or (None, None)
                det_tables.append(det.to_arrow(ref.image_id, ref.path))
                names = np.asarray(det.class_names, dtype=object)
                for name in names[rule.keep(det.confidence, names)]:
                    cat = classes.category(name)
                    counts[cat] = counts.get(cat, 0) + 1
            else:
                n_failed += 1
            rows["image_id"].append(ref.image_id)
            rows["path"].append(ref.path)
            rows["width"].append(w)
            rows["height"].append(h)
            rows["n_detections"].append(0 if det is None else len(det))
            rows["cap_hit"].append(bool(det is not None and len(det) >= self.settings.max_det))
            rows["error"].append(err)
            rows["processed_at"].append(now)
        images = pa.table(rows, schema=IMAGES_SCHEMA)
        dets = pa.concat_tables(det_tables) if det_tables else DETECTIONS_SCHEMA.empty_table()
        self.store.commit_part(self.inference_key, unit.key, images, dets)
        n_inferred = len(unit.images) - n_failed
        capped = tuple(str(path) for path, hit in zip(rows["path"], rows["cap_hit"]) if hit)
        ran = runtimes_used(self._predictor) if n_inferred and self._predictor is not None else ()
        return UnitSummary(unit.key, len(unit.images), n_failed, n_inferred, counts, cap_hit=capped, runtimes=ran)

    def __call__(self, unit: Unit, *, on_image: Callable[[int], None] | None = None,
                 stop: Callable[[], bool] | None = None,
                 before_commit: Callable[[], None] | None = None) -> UnitSummary:
        """Process one unit from start to commit, in this process (what a worker process runs).

        Images are read and inferred a model call at a time (memory stays flat whatever the unit).
        ``on_image(n)`` is told as images are done; when ``stop()`` turns true, the images done so far
        are committed as a smaller part of their own (:func:`~musseltools.executors.planning.sub_unit`) and the
        summary says ``complete=False``. ``before_commit()`` is called right before a part is committed
        (a worker process exits there when the run's process is gone).
        """
        outcomes: list[Outcome] = []
        pending: list[tuple[ImageRef, Prepared]] = []
        per_call: int | None = None

        def flush() -> None:
            dets = self.predict([p for _, p in pending])
            outcomes.extend((r, d, None) for (r, _), d in zip(pending, dets))
            if on_image is not None:
                on_image(len(pending))
            pending.clear()

        for ref in unit.images:
            if stop is not None and stop():
                if before_commit is not None:
                    before_commit()
                return self.commit_partial(unit, outcomes)
            item = self.load(ref)
            failpoint("image-read", ref.path)  # a worker killed as it works (crash tests)
            if isinstance(item, str):
                outcomes.append((ref, None, item))
                if on_image is not None:
                    on_image(1)
                continue
            if per_call is None:
                per_call = self.images_per_call(self.choose_batch_size(item))
            pending.append((ref, item))
            if len(pending) >= per_call:
                flush()
        if pending:
            flush()
        if before_commit is not None:
            before_commit()
        return self.commit(unit, outcomes)

    def commit_partial(self, unit: Unit, outcomes: Sequence[Outcome]) -> UnitSummary:
        """Commit the outcomes of part of a unit (a cancelled run keeps what it inferred)."""
        part = sub_unit(unit, [ref.image_id for ref, _, _ in outcomes], self.inference_key)
        if not part.images:
            return UnitSummary(part.key, 0, 0, 0, {}, complete=False)
        summary = self.commit(part, outcomes)
        summary.complete = False
        return summary

    def commit_failed(self, unit: Unit, reason: str) -> UnitSummary:
        """Commit every image of a unit as failed with ``reason`` (a unit no worker could finish); the next
        run tries them again."""
        return self.commit(unit, [(ref, None, reason) for ref in unit.images])


#: This process's predictor, by :meth:`RunTask._cache_key`: a worker process loads its model once and
#: keeps it for every unit it runs (tasks arrive pickled, one object per unit).
PREDICTORS: dict[str, Predictor] = {}
