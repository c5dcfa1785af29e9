"""Where a store's bytes live: local files (atomic rename) or an object store (fsspec, one PUT each).

Local folders keep the classic guarantees: a temporary file beside the target, fsync, rename, fsync
the folder. An object store (``s3://bucket/prefix`` or any fsspec URL) has no rename: every object is
written whole in one PUT (it exists whole or not at all), and small metadata that several processes
update is written with a conditional PUT (``If-Match`` the ETag read, ``If-None-Match: *`` to create),
retried on a conflict, so no update is lost.

Credentials and endpoint come from the standard environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...) or from fsspec's own configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from .._failpoints import failpoint
from ..errors import MusselToolsError

__all__ = [
    "ObjectStorage", "PreconditionFailed", "LeaseHeld", "lease", "lease_seconds", "LEASE_SECONDS", "is_url", "temp_path", "remove_dead_temporaries", "atomic_write_bytes",
    "atomic_write_table", "parquet_bytes", "read_parquet_bytes", "TMP_SUFFIX",
]

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
_TMP_SUFFIX = TMP_SUFFIX


def is_url(location: Any) -> bool:
    """True for an fsspec URL other than a local file (``s3://...``, ``gs://...``, ``memory://...``)."""
    if not isinstance(location, str) or "://" not in location:
        return False
    return location.split("://", 1)[0].lower() not in ("file", "local")


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as the bytes of one zstd-compressed Parquet file."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def read_parquet_bytes(data: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(data))


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
    tmp = temp_path(path)
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


def atomic_write_table(path: str | os.PathLike, table: pa.Table, *, failpoint_name: str | None = None) -> None:
    """Write a Parquet file atomically (zstd-compressed)."""
    _atomic_write(path, lambda f: pq.write_table(table, f, compression="zstd"), failpoint_name)


class PreconditionFailed(Exception):
    """A conditional PUT lost: the object changed (or appeared) since it was read."""


def _precondition_failed(exc: BaseException) -> bool:
    if isinstance(exc, FileExistsError):
        return True
    text = f"{exc} {exc.__cause__ or ''}"
    return "PreconditionFailed" in text or "pre-condition" in text or "412" in text


class ObjectStorage:
    """The object-store side of a :class:`~musseltools.store.store.Store`: an fsspec filesystem and a root.

    Names given to its methods are relative to the root (``results/<key>/images/part-x.parquet``).
    Every write is one complete object (one PUT): an object that exists is whole.
    """

    def __init__(self, url: str) -> None:
        import fsspec

        self.fs, root = fsspec.core.url_to_fs(url)
        self.protocol = url.split("://", 1)[0]
        self.root = root.rstrip("/")
        self.url = f"{self.protocol}://{self.root}"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"])

    def path(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def full(self, name: str) -> str:
        """The URL of ``name``."""
        return f"{self.url}/{name}" if name else self.url

    def name_of(self, path: str) -> str:
        """``name`` back from a path or URL under the root."""
        path = path.split("://", 1)[-1]
        return path[len(self.root) + 1:] if path.startswith(self.root + "/") else path

    # -- reads ---------------------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        self.fs.invalidate_cache(self.path(name).rsplit("/", 1)[0])
        return self.fs.exists(self.path(name))

    def read(self, name: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""
        return self.fs.cat_file(self.path(name))

    def glob(self, pattern: str) -> list[str]:
        """Names (relative to the root) matching ``pattern``, sorted."""
        self.fs.invalidate_cache()
        return sorted(self.name_of(p) for p in self.fs.glob(self.path(pattern)))

    def stamp(self, name: str) -> tuple[str, str, int]:
        """(name, version tag, size) of an object: changes whenever it is rewritten."""
        info = self.fs.info(self.path(name))
        tag = info.get("ETag") or info.get("etag") or str(info.get("LastModified") or info.get("mtime") or "")
        return name.rsplit("/", 1)[-1], f"{tag}{info.get('LastModified', '')}", int(info.get("size") or 0)

    # -- writes (each one complete object) -----------------------------------------------------------
    def write(self, name: str, data: bytes, *, failpoint_name: str | None = None) -> None:
        """Write ``data`` as one object in one PUT (it exists whole, or not at all)."""
        if failpoint_name:
            failpoint(failpoint_name)
        self.fs.pipe_file(self.path(name), data)

    def remove(self, name: str, *, recursive: bool = False) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(name), recursive=recursive)

    def move(self, src: str, dst: str) -> None:
        """Copy then delete (object stores have no rename)."""
        self.fs.copy(self.path(src), self.path(dst))
        self.remove(src)

    def remove_unmatched(self, pattern: str, matched_by: str) -> int:
        """Remove the objects matching ``pattern`` with no same-named object matching ``matched_by``."""
        keep = {n.rsplit("/", 1)[-1] for n in self.glob(matched_by)}
        gone = [n for n in self.glob(pattern) if n.rsplit("/", 1)[-1] not in keep]
        for n in gone:
            self.remove(n)
        return len(gone)

    def update(self, name: str, modify: Callable[[bytes | None], bytes], *, tries: int = 200) -> None:
        """Read-modify-write ``name`` with a conditional PUT; read again and retried when another writer won."""
        for attempt in range(tries):
            raw, etag = self.read_tagged(name)
            data = modify(raw)
            try:
                self.write_if(name, data, etag if raw is not None else None)
                return
            except PreconditionFailed:
                time.sleep(random.uniform(0, 0.01 * min(attempt + 1, 20)))
        raise OSError(f"{self.full(name)!r} kept changing under {tries} tries — try again")

    # -- conditional writes (S3 If-Match / If-None-Match) ------------------------------------------
    def _bucket_key(self, name: str) -> tuple[str, str]:
        bucket, _, key = self.path(name).partition("/")
        return bucket, key

    def read_tagged(self, name: str) -> tuple[bytes | None, str | None]:
        """(bytes, ETag) of an object, or (None, None) when there is none."""
        if self.protocol not in ("s3", "s3a"):
            try:
                return self.read(name), None
            except FileNotFoundError:
                return None, None
        bucket, key = self._bucket_key(name)
        try:  # the tag first, then the bytes: bytes newer than the tag only make the conditional PUT fail
            etag = self.fs.call_s3("head_object", Bucket=bucket, Key=key)["ETag"]
            return self.read(name), etag
        except FileNotFoundError:
            return None, None

    def write_if(self, name: str, data: bytes, etag: str | None) -> None:
        """PUT ``data`` only if the object is still at ``etag`` (None: only if it does not exist yet).

        Raises :class:`PreconditionFailed` when another writer got there first.
        """
        if self.protocol not in ("s3", "s3a"):  # no conditional PUT through fsspec: last writer wins
            self.write(name, data)
            return
        bucket, key = self._bucket_key(name)
        cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **cond)
        except OSError as exc:
            if _precondition_failed(exc):
                raise PreconditionFailed(name) from exc
            raise
        self.fs.invalidate_cache(self.path(name))



class LeaseHeld(Exception):
    """Another process holds the lease; ``holder`` is what it wrote (pid, host, run_id, since)."""

    def __init__(self, holder: dict[str, Any]) -> None:
        super().__init__(holder)
        self.holder = holder


def _try_take(objects: ObjectStorage, name: str, payload: bytes) -> dict[str, Any] | None:
    """Take the lease object when it is free or expired; returns the holder when it is not."""
    body, etag = objects.read_tagged(name)
    try:
        held = json.loads(body) if body is not None else None
    except ValueError:
        held = {}  # garbage: free to take over
    if isinstance(held, dict) and held.get("expires", 0) > time.time():
        return held
    try:
        objects.write_if(name, payload, etag if body is not None else None)
    except PreconditionFailed:
        return held or {}
    return None


def _renew(objects: ObjectStorage, name: str, info: dict[str, Any], ttl: float, stop: threading.Event) -> None:
    while not stop.wait(ttl / 3):
        body, etag = objects.read_tagged(name)
        with contextlib.suppress(ValueError, PreconditionFailed, OSError):
            if body is not None and json.loads(body).get("token") == info["token"]:
                objects.write_if(name, json.dumps({**info, "expires": time.time() + ttl}).encode(), etag)


#: Seconds a lease lives without renewal (its holder renews it every third of that while it lives).
LEASE_SECONDS = 60.0


def lease_seconds() -> float:
    """The lease lifetime: ``$MUSSELTOOLS_LEASE_SECONDS`` if set, else :data:`LEASE_SECONDS`.

    A shorter lifetime frees a dead holder's lock sooner, at the cost of more renewals (one conditional
    PUT every third of it); every process sharing a store should use the same value."""
    text = os.environ.get("MUSSELTOOLS_LEASE_SECONDS")
    if not text:
        return LEASE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise MusselToolsError(f"environment variable MUSSELTOOLS_LEASE_SECONDS={text!r} is not a number of "
                               "seconds above 0 — set it to e.g. 60, or unset it for the default")
    return value


@contextlib.contextmanager
def lease(objects: ObjectStorage, name: str, info: dict[str, Any], *, timeout: float,
          ttl: float | None = None) -> Iterator[None]:
    """Hold a lease object (created with a conditional PUT, renewed while held, removed on release).

    A holder that dies stops renewing: its lease expires after ``ttl`` seconds (default
    :func:`lease_seconds`) and is free again.
    ``timeout`` < 0 waits for ever; otherwise :class:`LeaseHeld` is raised after that many seconds.
    """
    ttl = lease_seconds() if ttl is None else ttl
    info = {**info, "token": uuid.uuid4().hex}
    deadline = None if timeout < 0 else time.monotonic() + timeout
    while True:
        holder = _try_take(objects, name, json.dumps({**info, "expires": time.time() + ttl}).encode())
        if holder is None:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise LeaseHeld(holder)
        time.sleep(0.2)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(objects, name, info, ttl, stop), daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        body, _ = objects.read_tagged(name)
        with contextlib.suppress(ValueError, OSError):
            if body is not None and json.loads(body).get("token") == info["token"]:
                objects.remove(name)
