"""A run's sample sheets, stored beside it and versioned: ``runs/<run_id>/sheets/<sha256>.parquet``.

Each version is the validated table of one sheet file (:mod:`musseltools.survey.sheet`), named after the
SHA-256 of the file's bytes and written atomically. ``run.json`` names the current version (``sheet``) and
keeps every attachment in order (``sheet_history``), so editing a sheet and attaching it again adds a
version, keeps the earlier ones, and never touches the results: no model runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from ..errors import CorruptStoreError, StoreError
from . import backends as storage
from .backends import atomic_write_table
from .runmeta import update_run_meta
from .store import Store, utcnow

__all__ = ["write_sheet", "read_sheet", "sheet_versions"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _name(run_id: str, sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise StoreError(f"sheet version {sha256!r} is not a SHA-256 — expected 64 hexadecimal digits — pick one of "
                         "run.sheet_versions()")
    return f"runs/{run_id}/sheets/{sha256}.parquet"


def write_sheet(store: Store, run_id: str, table: pd.DataFrame, *, sha256: str, source: str) -> dict[str, Any]:
    """Store a validated sheet as the run's current version; returns the version's record (as in ``run.json``).

    The table is written first (atomically), ``run.json`` last: a crash between the two leaves the previous
    version current."""
    store.check_writable(f"attach a sample sheet to run {run_id}")
    data = pa.Table.from_pandas(table, preserve_index=False)
    name = _name(run_id, sha256)
    if store.objects:
        store.objects.write(name, storage.parquet_bytes(data))
    else:
        path = store.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_table(path, data)
    record = {"sha256": sha256, "source": source, "file_name": Path(source).name, "rows": len(table),
              "columns": [c for c in table.columns if c not in ("image_id", "sheet_row", "sheet_image")],
              "attached_at": utcnow().isoformat()}

    def add_version(meta: Mapping[str, Any]) -> dict[str, Any]:
        return {"sheet": record, "sheet_history": [*(meta.get("sheet_history") or []), record]}

    update_run_meta(store, run_id, add_version)
    return record


def read_sheet(store: Store, run_id: str, sha256: str | None = None) -> pd.DataFrame | None:
    """A version of the run's sheet (the current one by default); None when no sheet was attached."""
    if sha256 is None:
        current = store.read_run(run_id).get("sheet")
        if not current:
            return None
        sha256 = current["sha256"]
    name = _name(run_id, sha256)
    try:
        if store.objects:
            return storage.read_parquet_bytes(store.objects.read(name)).to_pandas()
        return pd.read_parquet(store.root / name)
    except FileNotFoundError as exc:
        raise StoreError(f"run {run_id!r} has no sheet version {sha256[:12]}… ({name}) — attach the sheet again "
                         "(run.attach_sheet(path))") from exc
    except Exception as exc:  # noqa: BLE001 - damaged: say where and how to mend it
        raise CorruptStoreError(f"sheet {name} of run {run_id!r} is damaged ({exc}) — attach the sheet again "
                                "(run.attach_sheet(path))") from exc


def sheet_versions(store: Store, run_id: str) -> pd.DataFrame:
    """Every attachment of a sheet to the run, oldest first, with ``current`` marking the one in use."""
    meta = store.read_run(run_id)
    rows = [dict(r) for r in meta.get("sheet_history") or []]
    current = (meta.get("sheet") or {}).get("attached_at")
    for r in rows:
        r["current"] = r.get("attached_at") == current
        r["columns"] = ", ".join(r.get("columns") or [])
    return pd.DataFrame(rows, columns=["sha256", "file_name", "rows", "columns", "attached_at", "source", "current"])
