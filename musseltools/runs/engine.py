"""The engine: plan what has no result, process it in commit units, keep run status.

``run()`` is the researcher's entry point: it scans the collection, finds the images without a
cached result for this model and inference settings, and processes only those, committing each unit
atomically. Asking the same question again re-uses everything already done; when nothing is left to
infer, the model is not even loaded (its class names come from a card cached with its SHA-256).

Concerns live beside it: decoding in :mod:`~musseltools.images.decode`, units and run ids in
:mod:`~musseltools.executors.planning`, the unit task in :mod:`~musseltools.executors.task`, executors in
:mod:`~musseltools.executors`, run metadata updates in :mod:`~musseltools.store.store`, the options and
their defaults in :mod:`~musseltools.core.options`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.options import DEFAULT_COMMIT_EVERY, OPTIONS, parse_positive_int
from ..core.thresholds import Thresholds, parse_min_length
from ..errors import (
    CorruptStoreError,
    ModelChangedError,
    MusselToolsError,
    RunCancelled,
    RunNotFoundError,
)
from ..executors import Executor, LocalExecutor, ProcessExecutor, choose_executor, connect
from ..executors.planning import ImageRef, Unit, make_run_id, make_units
from ..executors.task import RunTask, user_cache_dir
from ..executors.warmup import import_in_background, start_early
from ..images.collection import Collection, ImagesLike, scan
from ..models import InferenceSettings, LoadedModel, describe_model, read_card, resolve_settings
from ..models.card import CARD_SETTINGS
from ..results.view import results_signature, scales_signature
from ..store.runmeta import update_run_meta
from ..store.store import Store, atomic_write_bytes, utcnow
from .handle import RunHandle, already_running
from .progress import (
    InferredCounter,
    announce_start,
    cap_hit_message,
    phase_before_inference,
    write_progress,
)
from .run import Run
from .survey import attach_sheet
from .tally import Tally

__all__ = ["run", "RunHandle", "DEFAULT_COMMIT_EVERY"]

log = logging.getLogger(__name__)

#: Store cache of model cards (class names, task, training size) by the weights' SHA-256.
MODEL_CARDS = "models.json"
#: With a minimum shell length, the live counts in run.json are recounted from the store (lengths need the
#: images' scales) at most this often while the run goes; the final counts are always exact.
RECOUNT_EVERY_S = 10.0
#: Fingerprints of the card-less models this process already said so of (:meth:`_Job.say_if_cardless`).
_CARDLESS_SAID: set[str] = set()


class _RunLog(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: Any) -> tuple[str, Any]:
        return f"[run {self.extra['run_id']}] {msg}", kwargs


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("musseltools", "ultralytics", "torch", "torchvision"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


# ---------------------------------------------------------------------------------------------- run
def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if not v:
        return None
    try:
        return parse_positive_int(v)
    except ValueError as exc:
        raise MusselToolsError(f"environment variable {name}={v!r}: {exc}") from None


def run(
    images: ImagesLike,
    *,
    model: str | os.PathLike,
    model_family: str | None = OPTIONS.model_family.default,
    trust_pickle: bool = OPTIONS.trust_pickle.default,
    threshold: float | Mapping[str, float] | None = OPTIONS.threshold.default,
    min_length_mm: float | None = OPTIONS.min_length_mm.default,
    store: str | os.PathLike | Store | None = OPTIONS.store.default,
    batch_size: int | None = OPTIONS.batch_size.default,
    commit_every: int | None = OPTIONS.commit_every.default,
    conf_floor: float = OPTIONS.conf_floor.default,
    imgsz: int | None = OPTIONS.imgsz.default,
    iou: float | None = OPTIONS.iou.default,
    max_det: int = OPTIONS.max_det.default,
    tile: int | str | None = OPTIONS.tile.default,
    tile_overlap: float | None = OPTIONS.tile_overlap.default,
    tile_merge: str | None = OPTIONS.tile_merge.default,
    backend: str = OPTIONS.backend.default,
    class_map: Mapping[str, str] | None = OPTIONS.class_map.default,
    sheet: str | os.PathLike | pd.DataFrame | None = OPTIONS.sheet.default,
    name: str | None = OPTIONS.name.default,
    device: str | None = OPTIONS.device.default,
    wait: bool | float = OPTIONS.wait.default,
    workers: int | None = OPTIONS.workers.default,
    scheduler: str | None = OPTIONS.scheduler.default,
    scheduler_file: str | None = OPTIONS.scheduler_file.default,
    client: Any = None,
    quiet: bool = False,
    background: bool = False,
    executor: Executor | None = None,
) -> Run | RunHandle:
    """Create or resume a survey run and infer only the images that have no result yet.

    Parameters mirror ``musseltools run`` flags (both come from :mod:`musseltools.core.options`). ``imgsz``
    defaults to the size the model was trained at (as Ultralytics' own ``predict`` does), else 640; for
    a torchvision Faster R-CNN it is the transform's shorter side (the architecture's ``min_size`` by
    default; see :mod:`musseltools.models.torchvision`). ``iou`` defaults to the family's own NMS IoU
    (0.7 for YOLO, 0.5 for Faster R-CNN). ``model_family`` names the weights' family (detected from the
    file by default); ``trust_pickle`` allows a fully pickled torchvision model (a pickle can run code).
    ``batch_size`` (images per model call) is measured per device when not given (env
    ``MUSSELTOOLS_BATCH_SIZE``); ``commit_every`` (images per committed part, env
    ``MUSSELTOOLS_COMMIT_EVERY``, else :data:`~musseltools.core.options.DEFAULT_COMMIT_EVERY`) is independent
    of it. ``quiet`` hides the progress bar, ``background`` returns at once with a :class:`RunHandle`.
    ``sheet``: a sample sheet (CSV or ``.xlsx``, one row per image), checked before any inference and attached
    (:meth:`Run.attach_sheet`); no inference setting, so a new sheet re-uses every result.
    ``min_length_mm``: shells shorter than this (mm) are left out of every count, as survey protocols leave out
    recruits; recorded on the run like a threshold (a run of its own, re-using every result; change it later
    with :meth:`Run.save_min_length_mm`). It applies on images with a scale (:meth:`Run.scales`); the detections
    of an image without one are all counted, and the run says how many such images there are.

    Where the work runs: ``workers=N`` worker processes (1: this process); by default one per core when
    there are enough images to pay back starting them, and this process on a GPU. ``client`` (a
    ``distributed.Client``), ``scheduler`` (``tcp://HOST:PORT``) or ``scheduler_file``: tasks on a Dask
    cluster whose workers reach the images and the store by the same paths. ``executor``: any
    :class:`~musseltools.executors.Executor` (chosen by :func:`~musseltools.executors.choose_executor`
    when None).

    Returns
    -------
    Run, or RunHandle when ``background=True``.

    Raises
    ------
    ModelLoadError, CollectionError, ThresholdError, RunLockedError, ModelChangedError, InferenceError

    Examples
    --------
    >>> import musseltools as mt                                                     # doctest: +SKIP
    >>> r = mt.run("data/demo/images", model="data/models/mussel-demo.pt", threshold=0.5)  # doctest: +SKIP
    >>> r.totals                                                                      # doctest: +SKIP
    {'live': 1234, 'dead': 210}
    """
    options = {k: v for k, v in locals().items() if k in OPTIONS}
    job = _Job.open(images, options, quiet=quiet, executor=executor, client=client)
    if sheet is not None:  # checked before any inference: a bad sheet costs no model time, and attaches nothing
        attach_sheet(Run(job.store, job.run_id), sheet, images=job.collection.images)
    return _launch(job, background)


def _launch(job: _Job, background: bool) -> Run | RunHandle:
    """An opened job executed here (a :class:`Run`) or in the background (a :class:`RunHandle`); the handle of
    the same run already running in this process, if any."""
    running = already_running(job, background)
    if running is not None:
        return running
    if not background:
        announce_start(job.store, job.run_id, None)
        return job.execute()
    handle = RunHandle(job.store, job.run_id, job.cancel)
    handle.start(job)
    return handle


def _run_threshold(threshold: Any, conf_floor: float, model: LoadedModel) -> float | dict[str, float]:
    """The run's threshold: one number, or one per class (a mapping by class or category, given or from the
    weights' card, checked against the model; classes it leaves out take 0.5)."""
    t = Thresholds.parse(threshold, default=OPTIONS.threshold.fallback, floor=conf_floor, classes=model.info.classes)
    return t.to_json(model.info.classes)


def _describe(st: Store, options: Mapping[str, Any]) -> tuple[LoadedModel, dict[str, Any] | None]:
    """The model, built only when neither the store nor this machine's cache has a card of it; and the
    store's cards to save when it had none.

    A card is keyed by the weights' SHA-256, so the machine's cache (:func:`user_cache_dir`) serves every
    store: a first run into a new store need not build the model here (importing torch and loading the
    weights, about 3 s) when worker processes infer. A damaged card is ignored and the model is built."""
    cards = st.read_json_cache(MODEL_CARDS)
    machine_file = user_cache_dir() / MODEL_CARDS
    machine: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        machine = dict(json.loads(machine_file.read_text()))
    known = {**machine, **cards}
    loaded = describe_model(options["model"], class_map=options["class_map"], family=options["model_family"],
                            cards=known, trust_pickle=options["trust_pickle"])
    fp = loaded.info.fingerprint
    if loaded.model is not None or fp not in machine:
        machine[fp] = known[fp]
        with contextlib.suppress(OSError):
            atomic_write_bytes(machine_file, json.dumps(machine, indent=2, sort_keys=True).encode())
    if fp in cards and loaded.model is None:
        return loaded, None
    cards[fp] = known[fp]
    return loaded, cards


@dataclass
class _Job:
    """One call of :func:`run`: opened (model described, collection scanned, run created), then executed."""

    store: Store
    run_id: str
    collection: Collection
    model: LoadedModel
    settings: InferenceSettings
    key: str
    batch_size: int | None
    commit_every: int
    device: str | None
    wait: bool | float
    quiet: bool
    executor: Executor | None
    cancel: threading.Event
    log: Any
    new_cards: dict[str, Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    client: Any = None
    commit_every_given: bool = False
    inferred: int = 0
    collection_record: dict[str, Any] = field(default_factory=dict)
    settings_from: dict[str, Any] = field(default_factory=dict)
    tally: Tally | None = None
    has_card: bool = True
    min_length_mm: float | None = None

    @classmethod
    def open(cls, images: ImagesLike, options: Mapping[str, Any], *, quiet: bool, executor: Executor | None,
             client: Any = None) -> _Job:
        """Check the options, describe the model, scan the collection, create or check the run."""
        start_early(images, options, executor=executor, client=client)  # workers' imports overlap the scan
        store = options["store"]
        st = store if isinstance(store, Store) else Store(store)
        loaded, new_cards = _describe(st, options)
        card = read_card(options["model"])
        resolved = resolve_settings(options, card, default_iou=loaded.default_iou, train_imgsz=loaded.train_imgsz)
        settings = InferenceSettings(**{o.name: resolved.values[o.name] for o in OPTIONS.inference_settings()})
        threshold = _run_threshold(resolved.values["threshold"], settings.conf_floor, loaded)
        resolved.origins["threshold"]["value"] = threshold
        min_length = parse_min_length(options.get("min_length_mm")) or None
        resolved.origins["min_length_mm"] = {"value": min_length, "from": "given" if min_length else "default"}
        batch_size = options["batch_size"] or _env_int("MUSSELTOOLS_BATCH_SIZE")
        commit_every = options["commit_every"] or _env_int("MUSSELTOOLS_COMMIT_EVERY") or DEFAULT_COMMIT_EVERY
        if batch_size is not None and batch_size < 1 or commit_every < 1:
            raise MusselToolsError(f"batch size and commit unit must be >= 1 (got {batch_size}, {commit_every})")

        collection = scan(images, name=options["name"], cache=st.scan_cache())
        info = loaded.info
        run_id = make_run_id(collection.identity, info.path, threshold, settings, info.class_map, info.family,
                             min_length)
        key = settings.key(info.fingerprint, info.family)
        job = cls(st, run_id, collection, loaded, settings, key, batch_size, commit_every, options["device"],
                  options["wait"], quiet, executor, threading.Event(), _RunLog(log, {"run_id": run_id}), new_cards,
                  options=dict(options), client=client,
                  commit_every_given=bool(options["commit_every"] or os.environ.get("MUSSELTOOLS_COMMIT_EVERY")),
                  settings_from=resolved.origins, has_card=card is not None, min_length_mm=min_length)
        job.create_or_check(threshold)
        return job

    def create_or_check(self, threshold: float | Mapping[str, float]) -> None:
        """Create the run's metadata, or refuse weights that changed since the run was made."""
        st, run_id, info = self.store, self.run_id, self.model.info
        try:
            existing = st.read_run(run_id)
        except RunNotFoundError:
            existing = None
        except CorruptStoreError as exc:
            st.quarantine_run(run_id, str(exc))
            existing = None
        if existing is not None and existing["model"]["fingerprint"] != info.fingerprint:
            raise ModelChangedError(
                f"weights file {info.path!r} changed since run {run_id} was made (SHA-256 "
                f"{existing['model']['fingerprint'][:12]}… then, {info.fingerprint[:12]}… now) — its results "
                "are kept — restore the original weights, or save the new ones under another name to start a new run"
            )
        if existing is None:
            st.check_writable(f"create run {run_id} for the {len(self.collection)} images of {self.collection.name}")
            update_run_meta(
                st, run_id, status="pending", created_at=utcnow().isoformat(),
                collection={"name": self.collection.name, "source": self.collection.source},
                model=info.to_dict(), settings=self.settings.to_dict(), settings_from=self.settings_from,
                threshold=OPTIONS.threshold.fallback if isinstance(threshold, Mapping) else threshold,
                saved_thresholds=dict(threshold) if isinstance(threshold, Mapping) else None,
                min_length_mm=self.min_length_mm,
                inference_key=self.key, total_images=len(self.collection), processed_count=0, failed_count=0,
                counts={c: 0 for c in info.categories}, error=None, store=st.location,
            )
            self.log.info("created for %s (%d images) with %s", self.collection.name, len(self.collection),
                          Path(info.path).name)
            self.say_if_cardless()

    def say_if_cardless(self) -> None:
        """One line, once per model and process, when a model without a card runs at musseltools' defaults."""
        info = self.model.info
        defaults = [k for k, o in self.settings_from.items() if k in CARD_SETTINGS and o.get("from") == "default"]
        if self.has_card or not defaults or info.fingerprint in _CARDLESS_SAID:
            return
        _CARDLESS_SAID.add(info.fingerprint)
        self.log.info("%s has no card: %s are musseltools' default settings, not chosen for this model — "
                      "`musseltools calibrate` (mt.calibrate) can choose them from a few labelled images",
                      Path(info.path).name, ", ".join(defaults))

    # -- execution ------------------------------------------------------------------------------------
    def execute(self) -> Run:
        """Hold the key's lock, plan, process the units, record the outcome; returns the run."""
        if self.store.read_only:
            return self._read_only()
        try:
            with self.store.lock(self.key, run_id=self.run_id, wait=self.wait):
                run = self._prepare()
                refs, fresh = self._plan()
                executor, close = self._executor(len(refs))
                units = make_units(refs, self.key, self._unit_size(executor, len(refs)))
                done_before = self._start(run, units, fresh, executor)
                task = self._task(run, executor)
                # this process waits while worker processes infer: the cube's imports are done meanwhile
                imports = import_in_background() if isinstance(executor, ProcessExecutor) and units else None
                try:
                    self._process(run, task, units, done_before, executor)
                except (KeyboardInterrupt, RunCancelled) as exc:
                    state = self._finish(run, "cancelled", task, error="cancelled by the user; committed work is kept")
                    self.log.warning("cancelled; %d of %d images have results and are kept", state["processed_count"],
                                     len(self.collection))
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    raise RunCancelled(f"run {self.run_id} cancelled; committed work is kept — run again to resume") from None
                except BaseException as exc:
                    msg = str(exc) if isinstance(exc, MusselToolsError) else f"{type(exc).__name__}: {exc}"
                    self._finish(run, "failed", task, error=msg)
                    self.log.error("failed: %s", msg)
                    raise
                finally:
                    close()
                final = self._finish(run, "completed", task)
                with contextlib.suppress(Exception):
                    if not run.cube_is_current():  # rebuilt only when the results changed
                        if imports is not None:
                            imports.join()
                        run.write_cube()
                self.log.info(
                    "completed: %d images, %d failed, %d inferred in this call, counts %s",
                    final["total_images"], final["failed_count"], self.inferred, final["counts"],
                )
                return run
        except KeyboardInterrupt:  # Ctrl-C before the first unit (taking the lock, planning, loading the model)
            holder = self.store.lock_holder(self.key) or {}
            with contextlib.suppress(MusselToolsError):
                if (holder.get("pid"), holder.get("run_id")) == (os.getpid(), self.run_id) and \
                        self.store.read_run(self.run_id).get("status") in ("pending", "running"):
                    update_run_meta(self.store, self.run_id, status="cancelled", phase=None,
                                    error="cancelled by the user; committed work is kept")
            raise

    def _read_only(self) -> Run:
        """A store that cannot be written: a completed run is returned as stored (nothing is written); its
        failed images are not retried. Anything else to infer raises ReadOnlyStoreError."""
        refs, _ = self._plan()
        meta = self.store.read_run(self.run_id)
        if meta.get("status") != "completed" or meta.get("processed_count") != len(self.collection):
            self.store.check_writable(f"infer the {len(refs)} images of run {self.run_id} without a result")
        self.log.info("store %s is read-only: the run is complete, nothing is inferred or written%s",
                      self.store.location, f" ({len(refs)} failed images not retried)" if refs else "")
        return Run(self.store, self.run_id)

    def _prepare(self) -> Run:
        """Record the scan, the collection, the key's settings (and the model card); clean leftovers."""
        st = self.store
        st.update_scan_cache(self.collection.table)
        table = self.collection.table.drop(columns=["fspath"])
        signature = hashlib.sha256(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes()).hexdigest()
        meta = st.read_run(self.run_id)
        # rewritten only when it changed: an unchanged collection keeps the cube and the counts current
        path = f"{st.run_dir(self.run_id)}/collection.parquet"
        written = [meta.get("collection_signature"), meta.get("collection_stamp")]
        if written != [signature, st.stamp(path)]:  # changed, missing, or rewritten by someone else (damaged?)
            st.write_collection(self.run_id, table)
            # recorded with the run's start (one run.json write less; a crash before it only rewrites again)
            self.collection_record = {"collection_signature": signature, "collection_stamp": st.stamp(path)}
        cleaned = st.clean_temporary(self.key, self.run_id)
        if cleaned:
            self.log.info("removed %d temporary files left by an interrupted writer", cleaned)
        st.write_settings(self.key, {"model": self.model.info.to_dict(), "settings": self.settings.to_dict(),
                                     "inference_key": self.key})
        if self.new_cards is not None:  # the next call with nothing to infer need not load the model
            with contextlib.suppress(OSError):
                st.write_json_cache(MODEL_CARDS, self.new_cards)
        return Run(st, self.run_id)

    def _plan(self) -> tuple[list[ImageRef], bool]:
        """The images without a successful result; and whether nothing was done before."""
        ok = self.store.succeeded_images(self.key)
        todo = self.collection.images[~self.collection.images["image_id"].isin(ok)]
        # in content-hash order: deterministic, and large photos spread among small ones, so the decode
        # thread stays ahead of the model instead of stalling it behind a run of large files
        todo = todo.sort_values("image_id", kind="stable")
        refs = [
            ImageRef(r.image_id, r.path, r.fspath, r.error if isinstance(r.error, str) else None)
            for r in todo.itertuples(index=False)
        ]
        fresh = bool(not self.store.part_files(self.key) and self.collection.table["error"].isna().all())
        return refs, fresh

    def _executor(self, n_images: int) -> tuple[Executor, Callable[[], None]]:
        """The executor for this call (and what closes what it opened: a client to a scheduler)."""
        if self.executor is not None:
            return self.executor, lambda: None
        if not n_images:  # nothing to infer: nothing to start (and torch need not even be imported)
            return LocalExecutor(), lambda: None
        opts = self.options
        client, close = self.client, (lambda: None)
        if client is None and (opts.get("scheduler") or opts.get("scheduler_file")):
            client = connect(opts.get("scheduler"), opts.get("scheduler_file"))
            close = client.close
        elif client is not None and type(client).__name__ != "Client":  # a cluster object (e.g. SLURMCluster)
            from distributed import Client

            client = Client(client)
            close = client.close
        chosen = choose_executor(workers=opts.get("workers"), client=client, device=self.device, n_images=n_images,
                                 tiled=self.settings.tile is not None)
        if n_images:
            self.log.info("executor: %r", chosen)
        return chosen, close

    def _unit_size(self, executor: Executor, n_images: int) -> int:
        """Images per commit unit: as asked; else the default, smaller when units run in parallel (at least
        eight units per worker, so that the workers finish together: on 300 frames and 2 workers, units of
        19 finished 0.2 s sooner than units of 32)."""
        if self.commit_every_given or isinstance(executor, LocalExecutor):
            return self.commit_every
        workers = executor.workers if isinstance(executor, ProcessExecutor) else max(1, len(executor.client.nthreads()))
        return max(4, min(self.commit_every, -(-n_images // (8 * workers))))

    def _start(self, run: Run, units: list[Unit], fresh: bool, executor: Executor) -> dict[str, Any]:
        """Mark the run running with what was done before this call; returns that state."""
        total = len(self.collection)
        if fresh:  # nothing done yet: no need to count
            done_before = {"processed": 0, "failed": 0, "counts": {c: 0 for c in run.categories}, "cap_hit": []}
        else:
            done_before = self._state(run)
        # what this call commits is added to it, image by image, unless something makes that inexact
        self.tally = Tally.start(done_before, self.store) if not run.length_rule() else None
        update_run_meta(
            self.store, self.run_id, status="running", total_images=total, started_at=utcnow().isoformat(),
            finished_at=None, error=None, inferred_this_call=0, commit_every=units[0].size if units else None,
            executor=repr(executor), **self.collection_record,
            processed_count=done_before["processed"], failed_count=done_before["failed"],
            processed_before_call=done_before["processed"],
            counts=done_before["counts"], versions=_versions(), host=socket.gethostname(), pid=os.getpid(),
        )
        n = sum(len(u.images) for u in units)
        if not n:
            self.log.info("all %d images already have results; nothing to infer", total)
        else:
            self.log.info("%d of %d images to process in %d commit units", n, total, len(units))
        return done_before

    def _task(self, run: Run, executor: Executor) -> RunTask:
        meta = run.meta
        local = isinstance(executor, LocalExecutor)  # a model built here is used here, never shipped
        return RunTask(store=self.store, model=self.model if local else self.model.info, settings=self.settings,
                       inference_key=self.key, thresholds=meta.get("saved_thresholds") or float(meta["threshold"]),
                       threshold=float(meta["threshold"]), device=self.device, batch_size=self.batch_size,
                       threads=executor.threads if isinstance(executor, ProcessExecutor) else None)

    def _process(self, run: Run, task: RunTask, units: list[Unit], done_before: dict[str, Any],
                 executor: Executor) -> None:
        """Hand the units to the executor; after each committed unit, update the run's progress and counts."""
        n = sum(len(u.images) for u in units)
        if not n:
            return
        from tqdm.auto import tqdm

        from .._failpoints import failpoint

        total = len(self.collection)
        processed, failed_new = done_before["processed"], 0
        runtimes: tuple[str, ...] = ()
        counts = dict(done_before["counts"])
        length = {"mm": run.length_rule(), "at": 0.0, "counts": counts}

        def recount_if_thresholds_changed(meta: dict[str, Any]) -> dict[str, Any]:
            nonlocal counts
            now, default = meta.get("saved_thresholds") or float(meta["threshold"]), float(meta["threshold"])
            mm = parse_min_length(meta.get("min_length_mm"))
            if (now, default, mm) != (task.thresholds, task.threshold, length["mm"]):  # saved by another process
                task.thresholds, task.threshold, length["mm"] = now, default, mm
                counts = run.counts(now)
                self.tally = None
                length.update(at=time.monotonic(), counts=counts)
            if mm:  # the units' counts know no lengths: recounted from the store, at most every RECOUNT_EVERY_S
                if time.monotonic() - length["at"] >= RECOUNT_EVERY_S:
                    length.update(at=time.monotonic(), counts=run.counts(now))
                counts = dict(length["counts"])
            threads = (executor.threads if isinstance(executor, ProcessExecutor) else  # a Dask worker's: its own
                       getattr(task.predictor, "threads", None) if isinstance(executor, LocalExecutor) else None)
            now = task.inferred_with(threads, runtimes)
            return {"counts": counts, "inferred_with": sorted({*meta.get("inferred_with", []), *now})}

        # the run's images, with those done before this call (a resume of 60 of 120 starts at 60/120); none
        # in a background thread, which would print into whatever cell runs (RunMonitor shows that run)
        quiet = self.quiet or threading.current_thread() is not threading.main_thread()
        with tqdm(total=total, initial=min(done_before["processed"], total), unit="img", desc=f"run {self.run_id}",
                  disable=quiet, leave=True) as bar:
            on_progress = InferredCounter(self.store, self.run_id, done_before["processed"], total, bar.update)
            write_progress(self.store, self.run_id, phase=phase_before_inference(executor, task),
                           inferred_count=done_before["processed"])
            for summary in executor.process(task, units, cancel=self.cancel, on_progress=on_progress):
                failpoint("part-committed")  # the part is committed, run.json not yet updated
                processed += summary.n_images
                failed_new += summary.n_failed
                self.inferred += summary.n_inferred
                runtimes = summary.runtimes  # what ran in the process that committed it, read by the update
                for c, k in summary.counts.items():
                    counts[c] = counts.get(c, 0) + k
                if self.tally is not None:
                    self.tally.add(summary)
                update_run_meta(self.store, self.run_id, recount_if_thresholds_changed,
                                processed_count=min(processed, total),
                                failed_count=done_before["failed"] + failed_new,
                                inferred_this_call=self.inferred, batch_size=task.batch_size)

    def _state(self, run: Run, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Images processed and failed, and counts at the thresholds in effect, from the store: taken from
        ``run.json`` when neither the results nor the thresholds changed since they were counted."""
        meta = run.meta if meta is None else meta
        signature = self._state_signature(meta)
        if meta.get("state_signature") == signature and meta.get("counts") is not None:
            return {"processed": meta["processed_count"], "failed": meta["failed_count"], "counts": meta["counts"],
                    "signature": signature, "cap_hit": meta.get("cap_hit_images") or []}
        table = run.per_image()
        processed = int(table["processed_at"].notna().sum() + (table["processed_at"].isna() & table["error"].notna()).sum())
        failed = int(table["error"].notna().sum())
        capped = table.loc[table["cap_hit"].fillna(False).astype(bool), "path"]
        return {"processed": processed, "failed": failed, "signature": signature,
                "counts": {c: int(table[c].sum()) if c in table else 0 for c in run.categories},
                "cap_hit": sorted(map(str, capped))}

    def _state_signature(self, meta: dict[str, Any]) -> str:
        what = [results_signature(self.store, self.run_id, meta), meta.get("saved_thresholds"), meta.get("threshold"),
                meta.get("status")]
        if meta.get("min_length_mm"):  # counts at a minimum length depend on the scales too
            run = Run(self.store, self.run_id)
            what += [meta["min_length_mm"], scales_signature(run.scales(run.results().images))]
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _finish(self, run: Run, status: str, task: RunTask, error: str | None = None) -> dict[str, Any]:
        def final_state(meta: dict[str, Any]) -> dict[str, Any]:  # at the thresholds saved right now
            meta = {**meta, "status": status}
            exact = self.tally is not None and status == "completed" and self.tally.still_exact(meta, task)
            state = self.tally.state(self._state_signature(meta)) if exact else self._state(run, meta)
            return {"processed_count": state["processed"], "failed_count": state["failed"], "counts": state["counts"],
                    "state_signature": state["signature"], "cap_hit_images": state["cap_hit"],
                    # when images were last inferred (finished_at is also set by a resume that infers nothing)
                    **({"inference_finished_at": utcnow().isoformat()} if self.inferred else {})}

        meta = update_run_meta(
            self.store, self.run_id, final_state, status=status, error=error, inferred_this_call=self.inferred,
            finished_at=utcnow().isoformat(), batch_size=task.batch_size, phase=None, inferred_count=None,
        )
        if meta.get("cap_hit_images"):
            self.log.warning("%s", cap_hit_message(meta["cap_hit_images"], self.settings.max_det))
        return meta
