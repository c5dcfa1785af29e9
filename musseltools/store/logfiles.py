"""Append-only logs of Parquet files in a store folder (hand corrections, drawn scales): each save is one new
file written atomically and never rewritten; a file that cannot be read is named, never skipped."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptStoreError, StoreError
from .store import Store, atomic_write_bytes, remove_dead_temporaries, utcnow

__all__ = ["append_table", "read_log_file"]


def append_table(store: Store, folder: Callable[[Store], Path], prefix: str, table: pa.Table, *, what: str, doing: str,
                 failpoint_name: str | None = None) -> Path:
    """Save ``table`` as one new ``prefix<time>-<random>.parquet`` in ``folder(store)`` of a local store, atomically
    (temporary file, fsync, rename), after removing dead writers' temporaries; returns the file. ``what``
    names the log (``corrections``), ``doing`` the save (``save 3 corrections``) in the errors."""
    if store.remote:
        raise StoreError(f"{what} cannot be saved to an object store yet ({store.root}) — use a local store")
    store.check_writable(doing)
    where = folder(store)  # a local store's path: asked only after the store is known to be local
    where.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(where)
    path = where / f"{prefix}{utcnow().strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes(), failpoint_name=failpoint_name)
    return path


def read_log_file(path: Path, schema: pa.Schema, what: str) -> pd.DataFrame:
    """One file of a log as a table of ``schema``; a damaged file raises CorruptStoreError naming it
    (FileNotFoundError passes through: a caller may know why it went)."""
    try:
        return pq.read_table(path).select(schema.names).cast(schema).to_pandas()
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file is named, not skipped silently
        raise CorruptStoreError(
            f"{what} file {str(path)!r} is damaged ({type(exc).__name__}: {exc}) — {what} are saved atomically, so "
            f"it was changed by hand or by a disk fault — restore it from a backup, or move it aside to drop its "
            f"{what}") from exc
