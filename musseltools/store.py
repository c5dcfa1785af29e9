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
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ._failpoints import failpoint
from .detections import DETECTIONS_SCHEMA
from .errors import CorruptStoreError, RunLockedError, RunNotFoundError, StoreError

__all__ = [
    "Store", "IMAGES_SCHEMA", "DETECTIONS_SCHEMA", "default_store_path", "project_root", "atomic_write_bytes", "temp_path",
    "remove_dead_temporaries", "update_run_meta",
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

_TMP_SUFFIX = ".tmp"
#: Integer columns read as nullable integers, so that their dtype does not depend on whether some
#: rows (images that failed) are null.
_NULLABLE_INTS = {pa.int32(): pd.Int32Dtype()}
#: Keys every run.json has (written at once when the run is created).
_RUN_KEYS = ("status", "threshold", "settings", "model", "inference_key", "collection")


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The folder that default paths are relative to: the nearest of ``start`` (the working directory)
    and its parents that holds ``data/store`` or a ``pyproject.toml``; else ``start`` itself.

    So a notebook in ``notebooks/`` and a shell in the project root find the same store.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "data" / "store").is_dir() or (folder / "pyproject.toml").is_file():
            return folder
    return here


def default_store_path() -> Path:
    """``$MUSSELTOOLS_STORE``, else ``data/store`` under :func:`project_root` (the working directory, or
    the nearest parent that holds ``data/store`` or a ``pyproject.toml``)."""
    return Path(os.environ.get("MUSSELTOOLS_STORE") or project_root() / "data" / "store")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


#: Short tag of this host in temporary names, so that a sweep only judges its own host's processes.
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_path(path: Path, suffix: str = _TMP_SUFFIX) -> Path:
    """A temporary name beside ``path``: ``.<name>.<host tag>.<pid>.<thread><suffix>`` (hidden, never
    matched by ``part-*.parquet``), so that a later sweep can tell whether its writer is dead."""
    name = path.name
    if len(name.encode("utf-8", "surrogateescape")) > 160:  # keep within the 255-byte name limit
        name = name[:40] + "-" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return path.with_name(f".{name}.{_HOST_TAG}.{os.getpid()}.{threading.get_ident()}{suffix}")


_tmp_path = temp_path


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def remove_dead_temporaries(folder: str | os.PathLike) -> int:
    """Remove temporary files and folders in ``folder`` whose writer was a process of this host that no
    longer exists (killed mid-write); returns how many. Safe to call at any time: a live writer's
    temporaries, and those of other hosts, are left alone."""
    n = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        name = entry.name
        if not (name.startswith(".") and name.endswith((_TMP_SUFFIX, ".old"))):
            continue
        bits = name.rsplit(".", 4)  # [.<name>, host tag, pid, thread, tmp|old]
        if len(bits) != 5 or bits[1] != _HOST_TAG or not bits[2].isdigit() or _pid_alive(int(bits[2])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            n += 1
            log.info("store: removed %s, left by a writer that was killed", entry)
    return n


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], failpoint_name: str | None) -> None:
    """Temporary file beside ``path``, ``write`` into it, fsync, rename over ``path``, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    if failpoint_name:
        failpoint(failpoint_name)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, failpoint_name: str | None = None) -> None:
    """Write ``data`` to ``path`` atomically: temporary file, fsync, rename, fsync the folder."""
    _atomic_write(path, lambda f: f.write(data), failpoint_name)


def _atomic_write_table(path: Path, table: pa.Table, *, failpoint_name: str | None = None) -> None:
    """Write a Parquet file atomically (zstd-compressed)."""
    _atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"), failpoint_name)


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
        self.root = Path(root).expanduser() if root is not None else default_store_path()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store path {str(self.root)!r} is a file — expected a folder — pass another --store")
        self._cache: dict[str, tuple[Any, Any]] = {}
        self.quarantined: list[Path] = []

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ------------------------------------------------------------------ paths
    def results_dir(self, key: str) -> Path:
        return self.root / "results" / key

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    # ------------------------------------------------------------------ results
    def write_settings(self, key: str, settings: Mapping[str, Any]) -> None:
        """Record what an inference key stands for (written once)."""
        path = self.results_dir(key) / "settings.json"
        if not path.exists():
            atomic_write_bytes(path, json.dumps(settings, indent=2, sort_keys=True).encode())

    def commit_part(self, key: str, unit_key: str, images: pa.Table, detections: pa.Table) -> Path:
        """Commit one unit's results atomically; returns the images part (the commit proof)."""
        base = self.results_dir(key)
        name = f"part-{unit_key}.parquet"
        _atomic_write_table(base / "detections" / name, detections.cast(DETECTIONS_SCHEMA))
        failpoint("detections-committed")
        _atomic_write_table(base / "images" / name, images.cast(IMAGES_SCHEMA), failpoint_name="part-written")
        return base / "images" / name

    def clean_temporary(self, key: str, run_id: str | None = None) -> int:
        """Remove temporary files left by killed writers (call only while holding the key's lock).

        Part temporaries of the key are removed whoever wrote them (only the lock holder writes parts);
        elsewhere (the key's folder, the run's folder, the caches) only those of dead local processes.
        """
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

    def _quarantine(self, key: str, name: str, reason: str) -> None:
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

    def part_files(self, key: str) -> list[Path]:
        d = self.results_dir(key) / "images"
        return sorted(d.glob("part-*.parquet")) if d.is_dir() else []

    def read_results(self, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Committed results for an inference key: (per-image table, detections table).

        Each image appears once: its latest successful result, else its latest error. Damaged parts
        are moved to quarantine (their images count as not processed) and reported in the log. A part
        that vanishes while it is read (compaction replaced it by a merged part written before it was
        removed) makes the read start again, so no image is ever missing or doubled.
        """
        for _ in range(10):
            try:
                return self._read_results_once(key)
            except _PartVanished:
                continue
        return self._read_results_once(key)

    def _read_results_once(self, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        parts = self.part_files(key)
        stamp = []
        for p in parts:
            with contextlib.suppress(OSError):
                st = p.stat()
                stamp.append((p.name, st.st_mtime_ns, st.st_size))
        cache_key = (key, tuple(stamp))
        hit = self._cache.get(key)
        if hit is not None and hit[0] == cache_key:
            return hit[1]
        img_tables, det_tables = [], []
        for i, p in enumerate(parts):
            try:
                it = pq.read_table(p)
                dp = self.results_dir(key) / "detections" / p.name
                if not dp.exists():
                    if not p.exists():
                        raise _PartVanished(p.name)
                    raise CorruptStoreError(f"detections part {dp.name} is missing")
                dt = pq.read_table(dp)
                if not set(IMAGES_SCHEMA.names) <= set(it.column_names) or not set(DETECTIONS_SCHEMA.names) <= set(
                    dt.column_names
                ):
                    raise CorruptStoreError("columns do not match the musseltools schema")
                it = it.select(IMAGES_SCHEMA.names).cast(IMAGES_SCHEMA)
                dt = dt.select(DETECTIONS_SCHEMA.names).cast(DETECTIONS_SCHEMA)
                if len(dt) != int(pa.compute.sum(it["n_detections"]).as_py() or 0):
                    raise CorruptStoreError("detections do not add up to the images' n_detections")
            except _PartVanished:
                raise
            except FileNotFoundError as exc:  # quarantined by another reader, or merged by compaction
                raise _PartVanished(p.name) from exc
            except PermissionError as exc:  # the part may be fine: a reader without rights must not move it
                raise StoreError(
                    f"cannot read results part {str(p)!r}: {exc.strerror or exc} — check the store's permissions"
                ) from exc
            except Exception as exc:  # noqa: BLE001 - any other unreadable part is damaged: quarantined
                self._quarantine(key, p.name, f"{type(exc).__name__}: {exc}")
                continue
            img_tables.append(it.append_column("_part", pa.array([i] * len(it), pa.int32())))
            det_tables.append(dt.append_column("_part", pa.array([i] * len(dt), pa.int32())))
        if img_tables:
            images = pa.concat_tables(img_tables).to_pandas(types_mapper=_NULLABLE_INTS.get)
            dets = pa.concat_tables(det_tables).to_pandas()
        else:
            images = IMAGES_SCHEMA.append(pa.field("_part", pa.int32())).empty_table().to_pandas(
                types_mapper=_NULLABLE_INTS.get)
            dets = DETECTIONS_SCHEMA.append(pa.field("_part", pa.int32())).empty_table().to_pandas()
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
        self._cache[key] = (cache_key, result)
        return result

    # ------------------------------------------------------------------ runs
    def write_run(self, meta: Mapping[str, Any]) -> None:
        """Write run metadata atomically (only the process coordinating the run does)."""
        data = json.dumps(meta, indent=2, sort_keys=True, default=str).encode()
        atomic_write_bytes(self.run_dir(meta["run_id"]) / "run.json", data, failpoint_name="meta-written")

    def read_run(self, run_id: str) -> dict[str, Any]:
        """Run metadata; raises :class:`RunNotFoundError` or :class:`CorruptStoreError`."""
        path = self.run_dir(run_id) / "run.json"
        if not path.exists():
            known = ", ".join(r["run_id"] for r in self.list_runs()) or "none"
            raise RunNotFoundError(f"no run {run_id!r} in store {str(self.root)!r} — runs there: {known}")
        try:
            meta = json.loads(path.read_text())
            if not isinstance(meta, dict) or meta.get("run_id") != run_id:
                raise ValueError("not the metadata of this run")
            missing = [k for k in _RUN_KEYS if k not in meta]
            if missing or not isinstance(meta["model"], dict) or "fingerprint" not in meta["model"]:
                raise ValueError(f"keys missing: {missing or ['model.fingerprint']}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptStoreError(
                f"run metadata {str(path)!r} is damaged ({exc}) — the results themselves are safe in "
                f"{str(self.root / 'results')!r} — run `musseltools run` with the same images and model again to "
                "rebuild it"
            ) from exc
        return meta

    def quarantine_run(self, run_id: str, reason: str) -> None:
        """Move damaged run metadata aside so the run can be recreated."""
        src = self.run_dir(run_id) / "run.json"
        if src.exists():
            dst = self.run_dir(run_id) / f"run.json.damaged-{utcnow().strftime('%Y%m%dT%H%M%S')}"
            os.replace(src, dst)
            log.warning("store: damaged run metadata of %s moved to %s (%s)", run_id, dst.name, reason)

    def list_runs(self) -> list[dict[str, Any]]:
        """Metadata of every readable run, oldest first (damaged ones are left out, with a warning)."""
        runs = []
        for d in sorted((self.root / "runs").glob("*/run.json")) if (self.root / "runs").is_dir() else []:
            try:
                runs.append(self.read_run(d.parent.name))
            except (StoreError, OSError) as exc:
                log.warning("store: run %s left out of the list: %s", d.parent.name, exc)
        return sorted(runs, key=lambda r: r.get("created_at", ""))

    def write_collection(self, run_id: str, table: pd.DataFrame) -> None:
        _atomic_write_table(self.run_dir(run_id) / "collection.parquet", pa.Table.from_pandas(table, preserve_index=False))

    def read_collection(self, run_id: str) -> pd.DataFrame:
        path = self.run_dir(run_id) / "collection.parquet"
        try:
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

        d = self.results_dir(key)
        d.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(d / ".lock"))
        timeout = -1 if wait is True else (0 if wait is False else float(wait))
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            holder = self.lock_holder(key) or {}
            raise RunLockedError(
                f"run {holder.get('run_id', '?')} holds the results of {key}: pid {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')} since {holder.get('since', '?')} — wait for it to finish, or ask to wait "
                "(--wait / wait=True)"
            ) from None
        try:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id, "since": utcnow().isoformat()}
            atomic_write_bytes(d / ".lock.json", json.dumps(info).encode())
            yield
        finally:
            lock.release()

    def lock_holder(self, key: str) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            return json.loads((self.results_dir(key) / ".lock.json").read_text())
        return None

    # ------------------------------------------------------------------ caches
    def scan_cache(self) -> dict[tuple[str, int, int, int], tuple[str, int | None, int | None]]:
        """``(path, size, mtime_ns, ctime_ns) -> (image_id, width, height)`` from earlier scans.

        The change time is part of the key because a rewrite can keep size and modification time
        (``touch -d``); the inode change time cannot be set back by users."""
        path = self.root / "cache" / "scan.parquet"
        try:
            t = pd.read_parquet(path)
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
        path = self.root / "cache" / "scan.parquet"
        try:
            old = pd.read_parquet(path)
            if "ctime_ns" not in old:
                raise ValueError("scan cache of an older version")
            merged = pd.concat([old[~old["path"].isin(ok["path"])], ok], ignore_index=True)
        except Exception:  # noqa: BLE001
            merged = ok
        merged = merged.astype({"size": "int64", "mtime_ns": "int64", "ctime_ns": "int64", "width": "Int64",
                                "height": "Int64"})
        _atomic_write_table(path, pa.Table.from_pandas(merged, preserve_index=False))

    def read_json_cache(self, name: str) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return json.loads((self.root / "cache" / name).read_text())
        return {}

    def write_json_cache(self, name: str, data: Mapping[str, Any]) -> None:
        atomic_write_bytes(self.root / "cache" / name, json.dumps(data, indent=2, sort_keys=True).encode())

    def remove_run_outputs(self, run_id: str, name: str) -> None:
        """Delete a derived output of a run (e.g. a stale cube)."""
        shutil.rmtree(self.run_dir(run_id) / name, ignore_errors=True)


def update_run_meta(
    store: Store, run_id: str, compute: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None, /,
    **changes: Any,
) -> dict[str, Any]:
    """Read-modify-write run metadata under the run's metadata lock (no lost updates); returns it.

    ``compute(meta)``, when given, returns more changes computed from the metadata as it is under the
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
        if compute is not None:
            meta.update(compute(meta))
        meta["updated_at"] = utcnow().isoformat()
        store.write_run(meta)
    return meta
