"""The results store: Parquet parts (the truth), run metadata, locks and small caches.

Layout (everything readable with ``pd.read_parquet``, DuckDB or a text editor)::

    STORE/
      results/<inference_key>/            results of one model + inference settings, shared by runs
        settings.json                     the model fingerprint and settings behind the key
        images/part-<unit>.parquet        one row per image of a commit unit (the commit proof)
        detections/part-<unit>.parquet    one row per detection of the same unit
        quarantine/                       damaged parts moved aside, with a note of why
        .lock, .lock.json                 held while a process infers for this key (pid, host, run)
      runs/<run_id>/
        run.json                          the run: collection, model, threshold, settings, status
        collection.parquet                the images of the run as last scanned
        cube.zarr/                        counts x threshold cube, derived (rebuilt from Parquet)
      cache/scan.parquet                  (path, size, mtime) -> image_id, so files are hashed once
      cache/batch_size.json               measured model batch sizes per device and model

A commit unit's detections part is written first and its images part last, each to a temporary
file in the same folder, fsync'd and renamed: an images part that exists is committed, nothing else
is. Part names come from the unit's key, so a retried unit overwrites its own part.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .._failpoints import failpoint
from ..core.detections import DETECTIONS_SCHEMA
from ..errors import CorruptStoreError, RunLockedError, RunNotFoundError, StoreError
from ..paths import project_root
from . import backends as storage
from .backends import atomic_write_bytes, atomic_write_table, remove_dead_temporaries, temp_path

__all__ = [
    "Store", "IMAGES_SCHEMA", "DETECTIONS_SCHEMA", "default_store_path", "atomic_write_bytes", "temp_path",
    "remove_dead_temporaries",
]

log = logging.getLogger(__name__)

#: Arrow schema of the stored per-image table (one row per image of a commit unit).
IMAGES_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("n_detections", pa.int32()),
        ("cap_hit", pa.bool_()),
        ("error", pa.string()),
        ("processed_at", pa.timestamp("us", tz="UTC")),
    ]
)

_TMP_SUFFIX = storage.TMP_SUFFIX
#: Integer columns read as nullable integers, so that their dtype does not depend on whether some
#: rows (images that failed) are null.
_NULLABLE_INTS = {pa.int32(): pd.Int32Dtype()}
#: Keys every run.json has (written at once when the run is created).
_RUN_KEYS = ("status", "threshold", "settings", "model", "inference_key", "collection")


def default_store_path() -> Path:
    """``$MUSSELTOOLS_STORE``, else ``data/store`` in the :func:`~musseltools.paths.project_root`."""
    return Path(os.environ.get("MUSSELTOOLS_STORE") or project_root() / "data" / "store")


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class _PartVanished(Exception):
    """A results part listed a moment ago is gone (merged or quarantined meanwhile): read again."""


class Store:
    """A results store in a folder (created on first write).

    Parameters
    ----------
    root : path, optional
        The store folder; ``$MUSSELTOOLS_STORE`` or ``./data/store`` by default.

    Examples
    --------
    >>> import tempfile
    >>> s = Store(tempfile.mkdtemp())
    >>> s.list_runs()
    []
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self._cache: dict[str, tuple[Any, Any]] = {}
        self.quarantined: list[Any] = []
        #: the object store behind an fsspec URL root (``s3://bucket/prefix``); None for a local folder
        self.objects: storage.ObjectStorage | None = None
        if root is None and storage.is_url(os.environ.get("MUSSELTOOLS_STORE")):
            root = os.environ["MUSSELTOOLS_STORE"]
        if storage.is_url(root):
            self.objects = storage.ObjectStorage(str(root))
            self.root: Any = self.objects.url
            return
        self.root = Path(root).expanduser() if root is not None else default_store_path()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store path {str(self.root)!r} is a file — expected a folder — pass another --store")

    remote = property(lambda self: self.objects is not None, doc="True for an object store (an fsspec URL).")

    @property
    def location(self) -> str:
        """Where the store is, as every process can open it: an absolute folder, or the URL."""
        return self.root if self.objects is not None else str(self.root.resolve())

    def _name(self, path: Any) -> str:  # a URL from results_dir / run_dir as a name under the object root
        return self.objects.name_of(str(path))

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ------------------------------------------------------------------ paths
    def results_dir(self, key: str) -> Any:
        """The folder of an inference key's results (a URL string for an object store)."""
        return self.objects.full(f"results/{key}") if self.objects else self.root / "results" / key

    def run_dir(self, run_id: str) -> Any:
        """The folder of a run (a URL string for an object store)."""
        return self.objects.full(f"runs/{run_id}") if self.objects else self.root / "runs" / run_id

    def exists(self, path: Any) -> bool:  # a path from results_dir / run_dir
        return self.objects.exists(self._name(path)) if self.objects else Path(path).exists()

    def stamp(self, path: Any) -> str | None:
        """A version stamp of a file or object that changes when it is rewritten; None when it is missing."""
        try:
            if self.objects:
                return "|".join(map(str, self.objects.stamp(self._name(path))))
            st = Path(path).stat()
            return f"{Path(path).name}{st.st_mtime_ns}"
        except (FileNotFoundError, OSError):
            return None

    # ------------------------------------------------------------------ results
    def write_settings(self, key: str, settings: Mapping[str, Any]) -> None:
        """Record what an inference key stands for (written once)."""
        data = json.dumps(settings, indent=2, sort_keys=True).encode()
        if self.objects:
            if not self.objects.exists(f"results/{key}/settings.json"):
                self.objects.write(f"results/{key}/settings.json", data)
            return
        path = self.results_dir(key) / "settings.json"
        if not path.exists():
            atomic_write_bytes(path, json.dumps(settings, indent=2, sort_keys=True).encode())

    def commit_part(self, key: str, unit_key: str, images: pa.Table, detections: pa.Table) -> Any:
        """Commit one unit's results atomically; returns the images part (the commit proof).

        In an object store each part is one object written in one PUT, the images part last: it
        exists whole or not at all, so its existence is the commit, as the rename is in a folder."""
        name = f"part-{unit_key}.parquet"
        if self.objects:
            dets = storage.parquet_bytes(detections.cast(DETECTIONS_SCHEMA))
            self.objects.write(f"results/{key}/detections/{name}", dets)
            failpoint("detections-committed")
            self.objects.write(f"results/{key}/images/{name}", storage.parquet_bytes(images.cast(IMAGES_SCHEMA)),
                               failpoint_name="part-written")
            return self.objects.full(f"results/{key}/images/{name}")
        base = self.results_dir(key)
        atomic_write_table(base / "detections" / name, detections.cast(DETECTIONS_SCHEMA))
        failpoint("detections-committed")
        atomic_write_table(base / "images" / name, images.cast(IMAGES_SCHEMA), failpoint_name="part-written")
        return base / "images" / name

    def clean_temporary(self, key: str, run_id: str | None = None) -> int:
        """Remove temporary files left by killed writers (call only while holding the key's lock).

        Part temporaries of the key are removed whoever wrote them (only the lock holder writes parts);
        elsewhere (the key's folder, the run's folder, the caches) only those of dead local processes.
        """
        if self.objects:
            # no temporaries in an object store; a detections part whose images part never came is removed
            return self.objects.remove_unmatched(f"results/{key}/detections/part-*.parquet",
                                                 f"results/{key}/images/part-*.parquet")
        n = 0
        for sub in ("images", "detections"):
            for tmp in (self.results_dir(key) / sub).glob(f".*{_TMP_SUFFIX}"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    n += 1
        # a detections part whose images part never came is no commit (never read); its unit is redone
        # and may be cut differently, so the orphan is removed rather than left to be overwritten
        images_dir = self.results_dir(key) / "images"
        for orphan in (self.results_dir(key) / "detections").glob("part-*.parquet"):
            if not (images_dir / orphan.name).exists():
                with contextlib.suppress(OSError):
                    orphan.unlink()
                    n += 1
        folders = [self.results_dir(key), self.root / "cache"] + ([self.run_dir(run_id)] if run_id else [])
        return n + sum(remove_dead_temporaries(f) for f in folders)

    def quarantine_is_empty(self, key: str) -> bool:
        """True when no damaged part of ``key`` was ever moved to quarantine."""
        if self.objects:
            return not self.objects.glob(f"results/{key}/quarantine/*")
        qdir = self.results_dir(key) / "quarantine"
        return not (qdir.is_dir() and any(qdir.iterdir()))

    def _quarantine(self, key: str, name: str, reason: str) -> None:
        if self.objects:
            stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
            for sub in ("images", "detections"):
                with contextlib.suppress(OSError):
                    dst = f"results/{key}/quarantine/{stamp}-{sub}-{name}"
                    self.objects.move(f"results/{key}/{sub}/{name}", dst)
                    self.quarantined.append(self.objects.full(dst))
            self.objects.write(f"results/{key}/quarantine/{stamp}-{name}.txt", (reason + "\n").encode())
            log.warning("store: damaged part %s of results %s moved to quarantine (%s)", name, key, reason)
            return
        qdir = self.results_dir(key) / "quarantine"
        qdir.mkdir(parents=True, exist_ok=True)
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
        for sub in ("images", "detections"):
            src = self.results_dir(key) / sub / name
            if src.exists():
                dst = qdir / f"{stamp}-{sub}-{name}"
                with contextlib.suppress(OSError):
                    os.replace(src, dst)
                    self.quarantined.append(dst)
        (qdir / f"{stamp}-{name}.txt").write_text(reason + "\n")
        log.warning(
            "store: damaged part %s of results %s moved to quarantine (%s); its images will be processed again",
            name, key, reason,
        )

    def part_files(self, key: str) -> list[Any]:
        """The committed images parts of ``key`` (paths; URLs in an object store), sorted."""
        if self.objects:
            return [self.objects.full(n) for n in self.objects.glob(f"results/{key}/images/part-*.parquet")]
        d = self.results_dir(key) / "images"
        return sorted(d.glob("part-*.parquet")) if d.is_dir() else []

    def remove_part(self, key: str, name: str) -> None:
        """Remove a committed part (``part-x.parquet``) of ``key``: its images part (the commit proof)
        first, then its detections; a part already gone is no error. Call only while holding the lock."""
        for sub in ("images", "detections"):
            if sub == "detections":
                failpoint("compaction-removed")  # the commit proof gone, its detections not yet
            if self.objects:
                self.objects.remove(f"results/{key}/{sub}/{name}")
            else:
                with contextlib.suppress(FileNotFoundError):
                    (self.results_dir(key) / sub / name).unlink()

    def _part(self, key: str, sub: str, name: str) -> Any:
        return f"{self.results_dir(key)}/{sub}/{name}" if self.objects else self.results_dir(key) / sub / name

    def _read_table(self, path: Any, columns: list[str] | None = None) -> pa.Table:
        if self.objects:
            table = storage.read_parquet_bytes(self.objects.read(self._name(path)))
            return table if columns is None else table.select(columns)
        return pq.read_table(path, columns=columns)

    def succeeded_images(self, key: str) -> set[str]:
        """Ids of the images with a successful committed result: the images parts alone are read (what
        planning needs; a no-op resume of a large survey never reads its detections)."""
        if self._cache.get(key) is not None:
            images, _ = self.read_results(key)
            return set(images.loc[images["error"].isna(), "image_id"])
        ok: set[str] = set()
        for p in self.part_files(key):
            try:
                t = self._read_table(p).select(["image_id", "error"])
            except FileNotFoundError:  # merged away by compaction meanwhile: read everything instead
                images, _ = self.read_results(key)
                return set(images.loc[images["error"].isna(), "image_id"])
            except Exception:  # noqa: BLE001 - a damaged part: the full read quarantines and reports it
                images, _ = self.read_results(key)
                return set(images.loc[images["error"].isna(), "image_id"])
            ids, err = t.column("image_id").to_pylist(), t.column("error").to_pylist()
            ok.update(i for i, e in zip(ids, err) if e is None)
        return ok

    def read_results(self, key: str, *, detection_columns: Sequence[str] | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Committed results for an inference key: (per-image table, detections table).

        Each image appears once: its latest successful result, else its latest error. Damaged parts
        are moved to quarantine (their images count as not processed) and reported in the log. A part
        that vanishes while it is read (compaction replaced it by a merged part written before it was
        removed) makes the read start again, so no image is ever missing or doubled.
        ``detection_columns``: only these columns of the detections (``image_id`` among them), read
        from the parts as such and never cached (what counting needs, in a fraction of the memory).
        """
        for attempt in range(40):  # a compaction removes its old parts one by one: wait a little, read again
            try:
                return self._read_results_once(key, detection_columns)
            except _PartVanished:
                time.sleep(min(0.2, 0.005 * (attempt + 1)))
        try:
            return self._read_results_once(key, detection_columns)
        except _PartVanished as exc:
            raise StoreError(f"results parts of {key} kept vanishing while they were read ({exc}; a compaction or "
                             "another process rewriting them for seconds) — read again") from None

    def _read_results_once(self, key: str, columns: Sequence[str] | None = None
                           ) -> tuple[pd.DataFrame, pd.DataFrame]:
        parts = self.part_files(key)
        stamp = []
        for p in parts:
            with contextlib.suppress(OSError):
                if self.objects:
                    stamp.append(self.objects.stamp(self._name(p)))
                    continue
                st = p.stat()
                stamp.append((p.name, st.st_mtime_ns, st.st_size))
        cache_key = (key, tuple(stamp))
        hit = self._cache.get(key)
        if hit is not None and hit[0] == cache_key:
            return hit[1] if columns is None else (hit[1][0], hit[1][1][list(columns)])
        schema = DETECTIONS_SCHEMA if columns is None else pa.schema([DETECTIONS_SCHEMA.field(c) for c in columns])
        img_tables, det_tables = [], []
        for i, p in enumerate(parts):
            name = str(p).rsplit("/", 1)[-1]
            try:
                it = self._read_table(p)
                dp = self._part(key, "detections", name)
                if not self.exists(dp):
                    if not self.exists(p):
                        raise _PartVanished(name)
                    raise CorruptStoreError(f"detections part {name} is missing")
                dt = self._read_table(dp, None if columns is None else list(columns))
                if not set(IMAGES_SCHEMA.names) <= set(it.column_names) or not set(schema.names) <= set(dt.column_names):
                    raise CorruptStoreError("columns do not match the musseltools schema")
                it = it.select(IMAGES_SCHEMA.names).cast(IMAGES_SCHEMA)
                dt = dt.select(schema.names).cast(schema)
                if len(dt) != int(pa.compute.sum(it["n_detections"]).as_py() or 0):
                    raise CorruptStoreError("detections do not add up to the images' n_detections")
            except _PartVanished:
                raise
            except FileNotFoundError as exc:  # quarantined by another reader, or merged by compaction
                raise _PartVanished(name) from exc
            except PermissionError as exc:  # the part may be fine: a reader without rights must not move it
                raise StoreError(
                    f"cannot read results part {str(p)!r}: {exc.strerror or exc} — check the store's permissions"
                ) from exc
            except Exception as exc:  # noqa: BLE001 - any other unreadable part is damaged: quarantined
                self._quarantine(key, name, f"{type(exc).__name__}: {exc}")
                continue
            img_tables.append(it.append_column("_part", pa.array([i] * len(it), pa.int32())))
            det_tables.append(dt.append_column("_part", pa.array([i] * len(dt), pa.int32())))
        if img_tables:
            images = pa.concat_tables(img_tables).to_pandas(types_mapper=_NULLABLE_INTS.get)
            dets = pa.concat_tables(det_tables).to_pandas()
        else:
            images = IMAGES_SCHEMA.append(pa.field("_part", pa.int32())).empty_table().to_pandas(
                types_mapper=_NULLABLE_INTS.get)
            dets = schema.append(pa.field("_part", pa.int32())).empty_table().to_pandas()
        if len(images):
            images["_ok"] = images["error"].isna()
            images = images.sort_values(["image_id", "_ok", "processed_at", "_part"], ascending=[True, False, False, False])
            images = images.drop_duplicates("image_id", keep="first")
            chosen = pd.MultiIndex.from_frame(images[["image_id", "_part"]])
            keep = pd.MultiIndex.from_frame(dets[["image_id", "_part"]]).isin(chosen)
            dets = dets[keep]
            images = images.drop(columns="_ok")
        images = images.drop(columns="_part").reset_index(drop=True)
        dets = dets.drop(columns="_part").reset_index(drop=True)
        result = (images, dets)
        if columns is None:
            self._cache[key] = (cache_key, result)
        return result

    # ------------------------------------------------------------------ runs
    def write_run(self, meta: Mapping[str, Any]) -> None:
        """Write run metadata atomically (only the process coordinating the run does)."""
        data = json.dumps(meta, indent=2, sort_keys=True, default=str).encode()
        if self.objects:
            self.objects.write(f"runs/{meta['run_id']}/run.json", data, failpoint_name="meta-written")
            return
        atomic_write_bytes(self.run_dir(meta["run_id"]) / "run.json", data, failpoint_name="meta-written")

    def read_run(self, run_id: str) -> dict[str, Any]:
        """Run metadata; raises :class:`RunNotFoundError` or :class:`CorruptStoreError`."""
        path = self.run_dir(run_id) / "run.json" if not self.objects else f"{self.run_dir(run_id)}/run.json"
        raw = None
        with contextlib.suppress(FileNotFoundError):
            raw = self.objects.read(f"runs/{run_id}/run.json") if self.objects else Path(path).read_bytes()
        if raw is None:
            known = ", ".join(r["run_id"] for r in self.list_runs()) or "none"
            raise RunNotFoundError(f"no run {run_id!r} in store {str(self.root)!r} — runs there: {known}")
        return self.parse_run(run_id, raw, str(path))

    def parse_run(self, run_id: str, raw: bytes, shown: str) -> dict[str, Any]:
        """Run metadata from the bytes of ``run.json``; raises :class:`CorruptStoreError` when damaged."""
        try:
            meta = json.loads(raw.decode())
            if not isinstance(meta, dict) or meta.get("run_id") != run_id:
                raise ValueError("not the metadata of this run")
            missing = [k for k in _RUN_KEYS if k not in meta]
            if missing or not isinstance(meta["model"], dict) or "fingerprint" not in meta["model"]:
                raise ValueError(f"keys missing: {missing or ['model.fingerprint']}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptStoreError(
                f"run metadata {shown!r} is damaged ({exc}) — the results themselves are safe in "
                f"{str(self.root) + '/results'!r} — run `musseltools run` with the same images and model again to "
                "rebuild it"
            ) from exc
        return meta

    def quarantine_run(self, run_id: str, reason: str) -> None:
        """Move damaged run metadata aside so the run can be recreated."""
        if self.objects:
            with contextlib.suppress(FileNotFoundError):
                self.objects.move(f"runs/{run_id}/run.json",
                                  f"runs/{run_id}/run.json.damaged-{utcnow().strftime('%Y%m%dT%H%M%S')}")
                log.warning("store: damaged run metadata of %s set aside (%s)", run_id, reason)
            return
        src = self.run_dir(run_id) / "run.json"
        if src.exists():
            dst = self.run_dir(run_id) / f"run.json.damaged-{utcnow().strftime('%Y%m%dT%H%M%S')}"
            os.replace(src, dst)
            log.warning("store: damaged run metadata of %s moved to %s (%s)", run_id, dst.name, reason)

    def list_runs(self) -> list[dict[str, Any]]:
        """Metadata of every readable run, oldest first (damaged ones are left out, with a warning)."""
        runs = []
        if self.objects:
            ids = [n.split("/")[1] for n in self.objects.glob("runs/*/run.json")]
        else:
            ids = [d.parent.name for d in sorted((self.root / "runs").glob("*/run.json"))
                   if (self.root / "runs").is_dir()]
        for run_id in ids:
            try:
                runs.append(self.read_run(run_id))
            except (StoreError, OSError) as exc:
                log.warning("store: run %s left out of the list: %s", run_id, exc)
        return sorted(runs, key=lambda r: r.get("created_at", ""))

    def write_collection(self, run_id: str, table: pd.DataFrame) -> None:
        if self.objects:
            self.objects.write(f"runs/{run_id}/collection.parquet",
                               storage.parquet_bytes(pa.Table.from_pandas(table, preserve_index=False)))
            return
        atomic_write_table(self.run_dir(run_id) / "collection.parquet", pa.Table.from_pandas(table, preserve_index=False))

    def read_collection(self, run_id: str) -> pd.DataFrame:
        path = self.run_dir(run_id) / "collection.parquet" if not self.objects else None
        try:
            if self.objects:
                return storage.read_parquet_bytes(self.objects.read(f"runs/{run_id}/collection.parquet")).to_pandas()
            return pd.read_parquet(path)
        except FileNotFoundError as exc:
            raise StoreError(f"run {run_id!r} has no collection table — run it again to rebuild it") from exc
        except Exception as exc:  # noqa: BLE001
            raise CorruptStoreError(
                f"collection table of run {run_id!r} is damaged ({exc}) — run it again to rebuild it"
            ) from exc

    # ------------------------------------------------------------------ locks
    @contextlib.contextmanager
    def lock(self, key: str, *, run_id: str, wait: bool | float = False) -> Iterator[None]:
        """Hold the lock of an inference key while inferring for it.

        ``wait=False`` fails at once with :class:`RunLockedError` naming the holder; ``True`` waits for
        ever; a number waits that many seconds. A lock whose holder died is free (the OS drops it).
        """
        from filelock import FileLock, Timeout

        timeout = -1 if wait is True else (0 if wait is False else float(wait))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id, "since": utcnow().isoformat()}
        if self.objects:  # a lease object (conditional PUT, renewed while held; expires when its holder dies)
            try:
                with storage.lease(self.objects, f"results/{key}/.lock.json", info, timeout=timeout):
                    yield
            except storage.LeaseHeld as exc:
                raise _locked_error(key, exc.holder) from None
            return
        d = self.results_dir(key)
        d.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(d / ".lock"))
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise _locked_error(key, self.lock_holder(key) or {}) from None
        try:
            atomic_write_bytes(d / ".lock.json", json.dumps(info).encode())
            yield
        finally:
            lock.release()

    def lock_holder(self, key: str) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            if self.objects:
                return json.loads(self.objects.read(f"results/{key}/.lock.json"))
            return json.loads((self.results_dir(key) / ".lock.json").read_text())
        return None

    def _read_cache(self, name: str) -> bytes:
        return self.objects.read(f"cache/{name}") if self.objects else (self.root / "cache" / name).read_bytes()

    def _write_cache(self, name: str, data: bytes) -> None:
        if self.objects:
            self.objects.write(f"cache/{name}", data)
        else:
            atomic_write_bytes(self.root / "cache" / name, data)

    # ------------------------------------------------------------------ caches
    def scan_cache(self) -> dict[tuple[str, int, int, int], tuple[str, int | None, int | None]]:
        """``(path, size, mtime_ns, ctime_ns) -> (image_id, width, height)`` from earlier scans.

        The change time is part of the key because a rewrite can keep size and modification time
        (``touch -d``); the inode change time cannot be set back by users."""
        try:
            t = storage.read_parquet_bytes(self._read_cache("scan.parquet")).to_pandas()
        except Exception:  # noqa: BLE001 - a lost cache only costs hashing time
            return {}
        if "ctime_ns" not in t:  # written by an older version: hash again
            return {}
        w = t["width"].astype("Int64")
        h = t["height"].astype("Int64")
        return {
            (p, int(s), int(m), int(c)): (i, None if pd.isna(wi) else int(wi), None if pd.isna(hi) else int(hi))
            for p, s, m, c, i, wi, hi in zip(t["path"], t["size"], t["mtime_ns"], t["ctime_ns"], t["image_id"], w, h)
        }

    def update_scan_cache(self, table: pd.DataFrame) -> None:
        ok = table[table["error"].isna()][["path", "size", "mtime_ns", "ctime_ns", "image_id", "width", "height"]]
        try:
            old = storage.read_parquet_bytes(self._read_cache("scan.parquet")).to_pandas()
            if "ctime_ns" not in old:
                raise ValueError("scan cache of an older version")
            merged = pd.concat([old[~old["path"].isin(ok["path"])], ok], ignore_index=True)
        except Exception:  # noqa: BLE001
            merged = ok
        merged = merged.astype({"size": "int64", "mtime_ns": "int64", "ctime_ns": "int64", "width": "Int64",
                                "height": "Int64"})
        self._write_cache("scan.parquet", storage.parquet_bytes(pa.Table.from_pandas(merged, preserve_index=False)))

    def read_json_cache(self, name: str) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return json.loads(self._read_cache(name))
        return {}

    def write_json_cache(self, name: str, data: Mapping[str, Any]) -> None:
        self._write_cache(name, json.dumps(data, indent=2, sort_keys=True).encode())

    def remove_run_outputs(self, run_id: str, name: str) -> None:
        """Delete a derived output of a run (e.g. a stale cube)."""
        if self.objects:
            self.objects.remove(f"runs/{run_id}/{name}", recursive=True)
            return
        shutil.rmtree(self.run_dir(run_id) / name, ignore_errors=True)


def _locked_error(key: str, holder: Mapping[str, Any]) -> RunLockedError:
    return RunLockedError(
        f"run {holder.get('run_id', '?')} holds the results of {key}: pid {holder.get('pid', '?')} on host "
        f"{holder.get('host', '?')} since {holder.get('since', '?')} — wait for it to finish, or ask to wait "
        "(--wait / wait=True)"
    )
