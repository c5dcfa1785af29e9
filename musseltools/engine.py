"""The engine: plan what has no result, process it in commit units, keep run status.

``run()`` is the researcher's entry point: it scans the collection, finds the images without a
cached result for this model and inference settings, and processes only those, committing each unit
atomically. Asking the same question again re-uses everything already done.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import socket
import stat
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from . import views
from .collection import ImagesLike, scan
from .detections import Detections
from .errors import (
    CorruptStoreError,
    InferenceError,
    ModelChangedError,
    MusselToolsError,
    RunCancelled,
    RunNotFoundError,
)
from .executors import LocalExecutor
from .models import InferenceSettings, LoadedModel, Prepared, load_model, make_predictor
from .runs import Run
from .store import IMAGES_SCHEMA, Store, atomic_write_bytes, utcnow
from .thresholds import ClassMap, Thresholds

__all__ = ["run", "RunHandle", "decode_image", "update_run_meta", "DEFAULT_COMMIT_EVERY", "MAX_PIXELS"]

log = logging.getLogger(__name__)

DEFAULT_COMMIT_EVERY = 32
#: Images above this many pixels are refused (decompression-bomb guard); env MUSSELTOOLS_MAX_PIXELS.
MAX_PIXELS = 250_000_000


class _RunLog(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: Any) -> tuple[str, Any]:
        return f"[run {self.extra['run_id']}] {msg}", kwargs


# ---------------------------------------------------------------------------------------------- decoding
def _max_pixels() -> int:
    return int(os.environ.get("MUSSELTOOLS_MAX_PIXELS", MAX_PIXELS))


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes to a BGR uint8 array as the user sees it (EXIF rotation applied).

    Decodes as Ultralytics does (OpenCV, colour, 8 bit), falling back to Pillow for what OpenCV cannot
    read. Raises ``ValueError`` with the reason when the bytes are not a usable image.
    """
    import cv2
    from PIL import Image

    if not data:
        raise ValueError("empty file (0 bytes)")
    limit = _max_pixels()
    header_ok = False
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            header_ok = True
    except Image.DecompressionBombError as exc:  # Pillow's own guard, from the header alone
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else limit + 1
        if pixels > limit:
            raise ValueError(
                f"image too large: {pixels / 1e6:.0f} megapixels, above the {limit / 1e6:.0f} megapixel limit "
                "(decompression-bomb guard) — set MUSSELTOOLS_MAX_PIXELS higher if the image is genuine"
            ) from None
        w = h = 0  # allowed by our limit: OpenCV decodes it
    except Exception:  # noqa: BLE001 - not a Pillow format; OpenCV may still read it
        w = h = 0
    if header_ok and w * h > limit:
        raise ValueError(
            f"image too large: {w}x{h} = {w * h / 1e6:.0f} megapixels, above the {limit / 1e6:.0f} megapixel limit "
            "(decompression-bomb guard) — set MUSSELTOOLS_MAX_PIXELS higher if the image is genuine"
        )
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if arr is not None and arr.size:
        return arr
    try:
        from PIL import ImageOps

        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im)
            rgb = np.asarray(im.convert("RGB"))
        return np.ascontiguousarray(rgb[:, :, ::-1])
    except Exception as exc:  # noqa: BLE001
        kind = "truncated or corrupt image" if header_ok else "not a readable image"
        raise ValueError(f"{kind} ({type(exc).__name__}: {exc})") from None


def _user_cache_dir() -> Path:
    """Per-user cache (``$MUSSELTOOLS_CACHE``, else ``$XDG_CACHE_HOME/musseltools``, else ``~/.cache/musseltools``)."""
    if os.environ.get("MUSSELTOOLS_CACHE"):
        return Path(os.environ["MUSSELTOOLS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "musseltools"


def _read_json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


def _read_regular_file(fspath: str | bytes, shown: str) -> bytes:
    """The bytes of a regular file; a FIFO, socket or device (which could block for ever) is refused."""
    fd = os.open(fspath, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(fspath)
        if not stat.S_ISREG(mode):
            raise OSError(f"{shown} is not a regular file (a FIFO, socket or device) — expected an image file")
        return f.read()


# ---------------------------------------------------------------------------------------------- units
@dataclass(frozen=True)
class ImageRef:
    """An image to process: its id, printable path, path to open, and scan-time error if any."""

    image_id: str
    path: str
    fspath: str | bytes
    error: str | None = None


@dataclass(frozen=True)
class Unit:
    """A commit unit: images whose results are committed together, under a deterministic key."""

    key: str
    images: tuple[ImageRef, ...]


@dataclass
class UnitSummary:
    key: str
    n_images: int
    n_failed: int
    n_inferred: int
    counts: dict[str, int] = field(default_factory=dict)


def make_units(refs: Sequence[ImageRef], inference_key: str, commit_every: int) -> list[Unit]:
    """Chunk images into commit units; a unit's key is derived from its image ids."""
    units = []
    for i in range(0, len(refs), commit_every):
        chunk = tuple(refs[i : i + commit_every])
        digest = hashlib.sha256((inference_key + "\n" + "\n".join(sorted(r.image_id for r in chunk))).encode())
        units.append(Unit(key=digest.hexdigest()[:20], images=chunk))
    return units


class RunTask:
    """Decode, infer and commit commit units of one run (picklable settings; model loaded lazily)."""

    def __init__(
        self,
        *,
        store: Store,
        model: LoadedModel,
        settings: InferenceSettings,
        inference_key: str,
        thresholds: Thresholds,
        device: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.settings = settings
        self.inference_key = inference_key
        self.thresholds = thresholds
        self.device = device
        self.batch_size = batch_size
        self.inferred = 0
        self._predictor = None
        self._lock = threading.Lock()

    @property
    def predictor(self):
        with self._lock:
            if self._predictor is None:
                self._predictor = make_predictor(self.model, self.settings, device=self.device)
            return self._predictor

    # -- the three steps --------------------------------------------------------------------------------
    def load(self, ref: ImageRef) -> Prepared | str:
        """Read, verify and decode one image; an error message (str) when it cannot be used."""
        if ref.error:
            return ref.error
        try:
            data = _read_regular_file(ref.fspath, ref.path)
        except FileNotFoundError:
            return f"file not found: {ref.path} (removed after it was scanned)"
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
        p = self.predictor
        if self.batch_size and hasattr(p, "batch_size"):  # tiled: the model batch size counts tiles per pass
            p.batch_size = self.batch_size
        try:
            dets = p.predict(batch)
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
        """Images handed to the predictor at once: the batch size, but at most 2 when tiling (the tiled
        predictor batches *tiles*; holding a batch of 8000x6000 photos would cost gigabytes)."""
        return batch_size if self.settings.tile is None else min(batch_size, 2)

    def choose_batch_size(self, sample: Prepared) -> int:
        """The model batch size: measured once per device, model and input shape, then remembered."""
        if self.batch_size:
            return self.batch_size
        p = self.predictor
        shape = tuple(sample.tensor.shape) if sample.tensor is not None else tuple(sample.image.shape)
        cache_key = f"{p.device}|{self.model.info.fingerprint}|{self.settings.imgsz}|{self.settings.tile}|{shape}"
        # remembered in the store and per machine (a new store on the same machine need not measure again)
        cache = self.store.read_json_cache("batch_size.json")
        machine = _read_json(_user_cache_dir() / "batch_size.json")
        known = cache.get(cache_key, machine.get(cache_key))
        if known is not None:
            self.batch_size = int(known)
        else:
            self.batch_size = p.measure_batch_size(sample)
            log.info("model batch size %d measured on %s", self.batch_size, p.device)
        for table, write in ((cache, lambda d: self.store.write_json_cache("batch_size.json", d)),
                             (machine, lambda d: atomic_write_bytes(_user_cache_dir() / "batch_size.json",
                                                                    json.dumps(d, indent=2).encode()))):
            if table.get(cache_key) != self.batch_size:
                table[cache_key] = self.batch_size
                with contextlib.suppress(OSError):
                    write(table)
        return self.batch_size

    def commit(self, unit: Unit, outcomes: list[tuple[ImageRef, Any, str | None]]) -> UnitSummary:
        """Write one unit's results as one committed part."""
        now = utcnow()
        by_id = {ref.image_id: (ref, det, err) for ref, det, err in outcomes}
        rows: dict[str, list] = {f: [] for f in IMAGES_SCHEMA.names}
        det_tables = []
        counts: dict[str, int] = {}
        n_failed = 0
        classes = ClassMap(self.model.info.names.values(), self.model.info.class_map)
        for ref in unit.images:
            _, det, err = by_id[ref.image_id]
            h = w = None
            if err is None:
                w, h = det.image_size or (None, None)
                det_tables.append(det.to_arrow(ref.image_id, ref.path))
                for name, k in det.counts(self.thresholds).items():
                    cat = classes.category(name)
                    counts[cat] = counts.get(cat, 0) + k
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
        from .detections import DETECTIONS_SCHEMA

        dets = pa.concat_tables(det_tables) if det_tables else DETECTIONS_SCHEMA.empty_table()
        self.store.commit_part(self.inference_key, unit.key, images, dets)
        n_inferred = len(unit.images) - n_failed
        return UnitSummary(unit.key, len(unit.images), n_failed, n_inferred, counts)

    def __call__(self, unit: Unit) -> UnitSummary:
        """Process one unit from start to commit (what a distributed worker runs)."""
        outcomes, pending = [], []
        for ref in unit.images:
            item = self.load(ref)
            if isinstance(item, str):
                outcomes.append((ref, None, item))
            else:
                pending.append((ref, item))
        if pending:
            bs = self.choose_batch_size(pending[0][1])
            for i in range(0, len(pending), bs):
                chunk = pending[i : i + bs]
                outcomes.extend((r, d, None) for (r, _), d in zip(chunk, self.predict([p for _, p in chunk])))
        return self.commit(unit, outcomes)


# ---------------------------------------------------------------------------------------------- metadata
def update_run_meta(
    store: Store, run_id: str, /, _compute: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """Read-modify-write run metadata under the run's metadata lock (no lost updates).

    ``_compute(meta)``, when given, returns more changes computed from the metadata as it is under the
    lock (e.g. counts at the thresholds in effect, which another process may just have changed).
    """
    from filelock import FileLock

    d = store.run_dir(run_id)
    d.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d / ".meta.lock")):
        try:
            meta = store.read_run(run_id)
        except RunNotFoundError:
            meta = {}
        meta["run_id"] = run_id
        meta.update(changes)
        if _compute is not None:
            meta.update(_compute(meta))
        meta["updated_at"] = utcnow().isoformat()
        store.write_run(meta)
    return meta


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("musseltools", "ultralytics", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def make_run_id(
    collection_identity: str,
    model_path: str,
    threshold: float,
    settings: InferenceSettings,
    class_map: Mapping[str, str] | None = None,
) -> str:
    """Runs are identified by what the researcher asks: collection, model file, class map, threshold, settings."""
    payload = {"collection": collection_identity, "model": model_path, "threshold": round(float(threshold), 6),
               "settings": settings.to_dict()}
    if class_map:
        payload["class_map"] = dict(sorted(class_map.items()))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- handle
class RunHandle:
    """A run executing in a background thread (``mt.run(..., background=True)``).

    The notebook stays responsive; ``handle.cancel()`` stops it after the current batch (committed
    work is kept), ``handle.wait()`` blocks until it ends and returns the :class:`Run`.
    """

    def __init__(self, store: Store, run_id: str, cancel: threading.Event) -> None:
        self.store, self.run_id, self._cancel = store, run_id, cancel
        self._thread: threading.Thread | None = None
        self.exception: BaseException | None = None

    @property
    def run(self) -> Run:
        return Run(self.store, self.run_id)

    @property
    def status(self) -> str:
        return self.run.status

    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def cancel(self) -> None:
        """Ask the run to stop after the current batch."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> Run:
        """Wait for the run to end; re-raises its error (not a cancellation)."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.exception is not None and not isinstance(self.exception, RunCancelled):
            raise self.exception
        return self.run

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id} {'done' if self.done() else 'running'}: {self.run!r}>"


# ---------------------------------------------------------------------------------------------- run
def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if not v:
        return None
    try:
        n = int(v)
    except ValueError:
        raise MusselToolsError(f"environment variable {name}={v!r} is not an integer") from None
    if n < 1:
        raise MusselToolsError(f"environment variable {name}={v!r} must be >= 1")
    return n


def run(
    images: ImagesLike,
    *,
    model: str | os.PathLike,
    threshold: float = 0.5,
    store: str | os.PathLike | Store | None = None,
    batch_size: int | None = None,
    commit_every: int | None = None,
    conf_floor: float = 0.01,
    imgsz: int | None = None,
    iou: float = 0.7,
    max_det: int = 10000,
    tile: int | str | None = None,
    tile_overlap: float = 0.2,
    class_map: Mapping[str, str] | None = None,
    name: str | None = None,
    device: str | None = None,
    wait: bool | float = False,
    quiet: bool = False,
    background: bool = False,
    executor: Any = None,
) -> Run | RunHandle:
    """Create or resume a survey run and infer only the images that have no result yet.

    Parameters mirror ``musseltools run`` flags. ``imgsz`` defaults to the size the model was trained
    at (as Ultralytics' own ``predict`` does), else 640. ``batch_size`` (images per model call) is measured
    per device when not given (env ``MUSSELTOOLS_BATCH_SIZE``); ``commit_every`` (images per committed
    part, default 32, env ``MUSSELTOOLS_COMMIT_EVERY``) is independent of it.

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
    st = store if isinstance(store, Store) else Store(store)
    loaded = load_model(model, class_map=class_map)
    settings = InferenceSettings(imgsz=imgsz or loaded.train_imgsz, iou=iou, conf_floor=conf_floor, max_det=max_det,
                                 tile=tile, tile_overlap=tile_overlap)
    names = list(loaded.info.names.values())
    rule = Thresholds.parse(threshold, floor=conf_floor, classes=names)
    if rule.default is None or rule.per_class:
        raise MusselToolsError("run() takes one threshold; save per-class thresholds with Run.save_thresholds()")
    t = rule.default
    batch_size = batch_size or _env_int("MUSSELTOOLS_BATCH_SIZE")
    commit_every = commit_every or _env_int("MUSSELTOOLS_COMMIT_EVERY") or DEFAULT_COMMIT_EVERY
    if batch_size is not None and batch_size < 1 or commit_every < 1:
        raise MusselToolsError(f"batch size and commit unit must be >= 1 (got {batch_size}, {commit_every})")

    collection = scan(images, name=name, cache=st.scan_cache())
    run_id = make_run_id(collection.identity, loaded.info.path, t, settings, loaded.info.class_map)
    key = settings.key(loaded.info.fingerprint)
    rlog = _RunLog(log, {"run_id": run_id})

    try:
        existing = st.read_run(run_id)
    except RunNotFoundError:
        existing = None
    except CorruptStoreError as exc:
        st.quarantine_run(run_id, str(exc))
        existing = None
    if existing is not None and existing["model"]["fingerprint"] != loaded.info.fingerprint:
        raise ModelChangedError(
            f"weights file {loaded.info.path!r} changed since run {run_id} was made (SHA-256 "
            f"{existing['model']['fingerprint'][:12]}… then, {loaded.info.fingerprint[:12]}… now) — its results "
            "are kept — restore the original weights, or save the new ones under another name to start a new run"
        )
    if existing is None:
        now = utcnow().isoformat()
        update_run_meta(
            st, run_id, status="pending", created_at=now,
            collection={"name": collection.name, "source": collection.source},
            model=loaded.info.to_dict(), threshold=t, saved_thresholds=None, settings=settings.to_dict(),
            inference_key=key, total_images=len(collection), processed_count=0, failed_count=0,
            counts={c: 0 for c in loaded.info.categories}, error=None, store=str(st.root.resolve()),
        )
        rlog.info("created for %s (%d images) with %s", collection.name, len(collection), Path(loaded.info.path).name)

    cancel = threading.Event()
    job = _Job(st, run_id, collection, loaded, settings, key, batch_size, commit_every, device, wait, quiet,
               executor or LocalExecutor(), cancel, rlog)
    if not background:
        return job.execute()
    handle = RunHandle(st, run_id, cancel)

    def target() -> None:
        try:
            job.execute()
        except BaseException as exc:  # noqa: BLE001 - kept on the handle, re-raised by wait()
            handle.exception = exc

    handle._thread = threading.Thread(target=target, name=f"musseltools-run-{run_id}", daemon=True)
    handle._thread.start()
    return handle


@dataclass
class _Job:
    store: Store
    run_id: str
    collection: Any
    model: LoadedModel
    settings: InferenceSettings
    key: str
    batch_size: int | None
    commit_every: int
    device: str | None
    wait: bool | float
    quiet: bool
    executor: Any
    cancel: threading.Event
    log: Any

    def execute(self) -> Run:
        st, run_id = self.store, self.run_id
        with st.lock(self.key, run_id=run_id, wait=self.wait):
            st.update_scan_cache(self.collection.table)
            st.write_collection(run_id, self.collection.table.drop(columns=["fspath"]))
            cleaned = st.clean_temporary(self.key, run_id)
            if cleaned:
                self.log.info("removed %d temporary files left by an interrupted writer", cleaned)
            st.write_settings(self.key, {"model": self.model.info.to_dict(), "settings": self.settings.to_dict(),
                                         "inference_key": self.key})
            run = Run(st, run_id)
            thresholds = run.rule()
            images, _ = st.read_results(self.key)
            ok = set(images.loc[images["error"].isna(), "image_id"])
            todo_table = self.collection.images[~self.collection.images["image_id"].isin(ok)]
            # in content-hash order: deterministic, and large photos spread among small ones, so the decode
            # thread stays ahead of the model instead of stalling it behind a run of large files
            todo_table = todo_table.sort_values("image_id", kind="stable")
            refs = [
                ImageRef(r.image_id, r.path, r.fspath, r.error if isinstance(r.error, str) else None)
                for r in todo_table.itertuples(index=False)
            ]
            units = make_units(refs, self.key, self.commit_every)
            total = len(self.collection)
            if images.empty and self.collection.table["error"].isna().all():  # nothing done yet: no need to count
                done_before = {"processed": 0, "failed": 0, "counts": {c: 0 for c in run.categories}}
            else:
                done_before = self._state(run)
            update_run_meta(
                st, run_id, status="running", total_images=total, started_at=utcnow().isoformat(),
                finished_at=None, error=None, inferred_this_call=0, commit_every=self.commit_every,
                processed_count=done_before["processed"], failed_count=done_before["failed"],
                counts=done_before["counts"], versions=_versions(), host=socket.gethostname(), pid=os.getpid(),
            )
            if not refs:
                self.log.info("all %d images already have results; nothing to infer", total)
            else:
                self.log.info("%d of %d images to process in %d commit units", len(refs), total, len(units))
            task = RunTask(store=st, model=self.model, settings=self.settings, inference_key=self.key,
                           thresholds=thresholds, device=self.device, batch_size=self.batch_size)
            processed, failed_new = done_before["processed"], 0
            counts = dict(done_before["counts"])
            bar = None
            try:
                if refs:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=len(refs), unit="img", desc=f"run {run_id}", disable=self.quiet, leave=True)
                    from ._failpoints import failpoint

                    for summary in self.executor.process(task, units, cancel=self.cancel, on_progress=bar.update):
                        failpoint("part-committed")  # the part is committed, run.json not yet updated
                        processed += summary.n_images
                        failed_new += summary.n_failed
                        for c, k in summary.counts.items():
                            counts[c] = counts.get(c, 0) + k

                        def recount_if_thresholds_changed(meta: dict[str, Any]) -> dict[str, Any]:
                            nonlocal counts
                            now = run.rule()
                            if now != task.thresholds:  # saved by another process meanwhile: count anew
                                task.thresholds = now
                                counts = views.totals(run.per_image(now), run.categories)
                            return {"counts": counts}

                        update_run_meta(st, run_id, recount_if_thresholds_changed,
                                        processed_count=min(processed, total),
                                        failed_count=done_before["failed"] + failed_new,
                                        inferred_this_call=task.inferred, batch_size=task.batch_size)
            except (KeyboardInterrupt, RunCancelled) as exc:
                state = self._finish(run, "cancelled", task, error="cancelled by the user; committed work is kept")
                self.log.warning("cancelled; %d of %d images have results and are kept", state["processed_count"],
                                 total)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise RunCancelled(f"run {run_id} cancelled; committed work is kept — run again to resume") from None
            except BaseException as exc:
                msg = str(exc) if isinstance(exc, MusselToolsError) else f"{type(exc).__name__}: {exc}"
                self._finish(run, "failed", task, error=msg)
                self.log.error("failed: %s", msg)
                raise
            finally:
                if bar is not None:
                    bar.close()
            final = self._finish(run, "completed", task)
            with contextlib.suppress(Exception):
                run.write_cube()
            self.log.info(
                "completed: %d images, %d failed, %d inferred in this call, counts %s",
                final["total_images"], final["failed_count"], task.inferred, final["counts"],
            )
            return run

    def _state(self, run: Run) -> dict[str, Any]:
        table = run.per_image()
        processed = int(table["processed_at"].notna().sum() + (table["processed_at"].isna() & table["error"].notna()).sum())
        failed = int(table["error"].notna().sum())
        return {"processed": processed, "failed": failed, "counts": views.totals(table, run.categories)}

    def _finish(self, run: Run, status: str, task: RunTask, error: str | None = None) -> dict[str, Any]:
        def final_state(meta: dict[str, Any]) -> dict[str, Any]:  # at the thresholds saved right now
            state = self._state(run)
            return {"processed_count": state["processed"], "failed_count": state["failed"], "counts": state["counts"]}

        return update_run_meta(
            self.store, self.run_id, final_state, status=status, error=error, inferred_this_call=task.inferred,
            finished_at=utcnow().isoformat(), batch_size=task.batch_size,
        )
