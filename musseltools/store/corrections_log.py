"""The log of hand corrections: append-only, stored beside the results, applied once by the results view.

A researcher checks a run's detections by hand and records what the model got wrong. Corrections
never change the model's results: each save is one more Parquet file in ``STORE/corrections/``
(written to a temporary file, fsync'd and renamed, like every part of the store), and
:func:`musseltools.results.view.load_results` applies them, so every view (counts, per-image tables,
detections, the cube, exports, reports, widgets, evaluation) shows the corrected results, and
``corrected=False`` shows the model alone.

Kinds
    ``reclassify``
        a detection (by its stable ``detection_id``) gets another class: a class of the model, or a
        category of the class map (its first class). It keeps its confidence.
    ``delete``
        a detection counts at no threshold.
    ``add``
        a box (and optional polygon) with a class that the model missed. Added boxes are facts about
        the image: keyed by ``image_id``, they apply in every run that contains the image, at every
        threshold (confidence 1.0). Their ``detection_id`` is ``add-<correction_id>``, so they can be
        reclassified or deleted too.
    ``verify`` / ``unverify``
        the image was checked by hand (or the mark is taken back). Its corrected detections at the
        thresholds in use when it was marked are its truth (evaluation, calibration, training data).
    ``length``
        a detection's length measured by hand: the two ends of its length line (``x1, y1, x2, y2`` in image
        pixels, any direction). The detection's ``length_px`` becomes the line's length (``length_method``
        ``hand``); its box, class and width are unchanged.
    ``undo``
        cancels the correction named in ``target`` (an undo can itself be undone).

Every correction carries ``author`` (the OS user by default), ``created_at`` (UTC) and an optional
``note``. Reclassify, delete, length and verify name the ``inference_key`` of the results they were made on:
in a run of another model or other settings their detections do not exist, and they are reported
(:meth:`musseltools.Run.corrections_report`), never silently dropped.

Examples
--------
>>> from musseltools.store.store import Store                                      # doctest: +SKIP
>>> read_corrections(Store("data/store"))[["kind", "detection_id", "class_name"]]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from .logfiles import append_table, read_log_file
from .store import Store, utcnow

__all__ = [
    "NO_CORRECTIONS", "KINDS", "CORRECTIONS_SCHEMA", "corrections_dir", "read_corrections", "write_corrections",
    "corrections_signature", "correction_row", "active_corrections", "compact_corrections", "default_author",
    "member",
]

log = logging.getLogger(__name__)

#: The kinds of correction.
KINDS = ("reclassify", "delete", "add", "verify", "unverify", "undo", "length")

#: Arrow schema of a corrections file (one row per correction).
CORRECTIONS_SCHEMA = pa.schema([
    ("correction_id", pa.string()),
    ("kind", pa.string()),
    ("image_id", pa.string()),
    ("path", pa.string()),
    ("run_id", pa.string()),
    ("inference_key", pa.string()),
    ("detection_id", pa.string()),
    ("class_name", pa.string()),
    ("x1", pa.float64()),
    ("y1", pa.float64()),
    ("x2", pa.float64()),
    ("y2", pa.float64()),
    ("polygon", pa.list_(pa.list_(pa.float64(), 2))),
    ("target", pa.string()),
    ("thresholds", pa.string()),
    ("note", pa.string()),
    ("author", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])

_PREFIX = "corr-"
#: (store root, file name) -> (size, table): corrections files never change once renamed into place
_FILE_CACHE: dict[tuple[str, str], tuple[int, pd.DataFrame]] = {}
#: store root -> (the files read, every correction): read_corrections is called by every view
_ALL_CACHE: dict[str, tuple[tuple[tuple[str, int], ...], pd.DataFrame]] = {}


def member(values: pd.Series, allowed: Any) -> np.ndarray:
    """Boolean mask: which ``values`` are in ``allowed`` (fast for string columns of any size, unlike
    ``Series.isin`` on Arrow strings with a large ``allowed``)."""
    import pyarrow.compute as pc

    pool = list(allowed) if isinstance(allowed, (set, frozenset)) else pd.Series(allowed).tolist()
    if not len(values) or not pool:
        return np.zeros(len(values), dtype=bool)
    arr = pa.array(values, type=pa.string(), from_pandas=True)
    hit = pc.is_in(arr, value_set=pa.array([str(v) for v in pool if isinstance(v, str)], pa.string()))
    return hit.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)


def corrections_dir(store: Store) -> Path:
    """``STORE/corrections``: one Parquet file per save."""
    return store.root / "corrections"


def default_author() -> str:
    """The OS user name (``unknown`` when it cannot be told)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database entry (containers): still record something
        return os.environ.get("USER") or "unknown"


def correction_row(kind: str, *, image_id: str, path: str | None = None, run_id: str | None = None,
                   inference_key: str | None = None, detection_id: str | None = None, class_name: str | None = None,
                   box: Sequence[float] | None = None, polygon: Sequence[Sequence[float]] | None = None,
                   target: str | None = None, thresholds: str | None = None, note: str | None = None,
                   author: str | None = None, created_at: Any = None, correction_id: str | None = None
                   ) -> dict[str, Any]:
    """One correction as a row of :data:`CORRECTIONS_SCHEMA` (new id, the OS user, now, by default).

    >>> r = correction_row("delete", image_id="ab12", detection_id="10c4829d92a53bac", inference_key="k")
    >>> r["kind"], len(r["correction_id"]), r["author"] != ""
    ('delete', 16, True)
    """
    x1, y1, x2, y2 = (None, None, None, None) if box is None else (float(v) for v in box)
    when = pd.Timestamp(created_at if created_at is not None else utcnow())
    when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
    return {
        "correction_id": correction_id or uuid.uuid4().hex[:16], "kind": kind, "image_id": image_id, "path": path,
        "run_id": run_id, "inference_key": inference_key, "detection_id": detection_id, "class_name": class_name,
        "x1": x1, "y1": y1, "x2": x2, "y2": y2,
        "polygon": None if polygon is None else [[float(x), float(y)] for x, y in polygon],
        "target": target, "thresholds": thresholds, "note": note or None, "author": author or default_author(),
        "created_at": when.to_pydatetime(),
    }


def write_corrections(store: Store, rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> Path:
    """Save corrections as one new file, atomically (temporary file, fsync, rename); returns it.

    A process killed during the save leaves no file (only a hidden temporary that readers ignore and
    the next save removes), so a save is all or nothing.
    """
    if isinstance(rows, pd.DataFrame):
        table = pa.Table.from_pandas(rows[CORRECTIONS_SCHEMA.names], schema=CORRECTIONS_SCHEMA, preserve_index=False)
    else:
        table = pa.Table.from_pylist([dict(r) for r in rows], schema=CORRECTIONS_SCHEMA)
    path = append_table(store, corrections_dir, _PREFIX, table, what="corrections",
                        doing=f"save {len(rows)} corrections", failpoint_name="correction-written")
    log.info("saved %d corrections to %s", table.num_rows, path.name)
    return path


def _files(store: Store) -> list[Path]:
    if store.remote:  # corrections are saved to local stores only (see write_corrections)
        return []
    folder = corrections_dir(store)
    return sorted(folder.glob(f"{_PREFIX}*.parquet")) if folder.is_dir() else []


def corrections_signature(store: Store) -> str:
    """Changes whenever corrections are saved (files are never rewritten, only added or merged);
    :data:`NO_CORRECTIONS` for a store without any."""
    return hashlib.sha256("|".join(p.name for p in _files(store)).encode()).hexdigest()[:16]


#: The corrections signature of a store without corrections.
NO_CORRECTIONS = hashlib.sha256(b"").hexdigest()[:16]


def _read_file(store: Store, path: Path) -> pd.DataFrame | None:
    key = (str(store.root), path.name)
    try:
        size = path.stat().st_size
    except FileNotFoundError:  # merged away by compact_corrections meanwhile: its rows are in the merged file
        return None
    hit = _FILE_CACHE.get(key)
    if hit is not None and hit[0] == size:
        return hit[1]
    try:
        table = read_log_file(path, CORRECTIONS_SCHEMA, "corrections")
    except FileNotFoundError:
        return None
    table["_file"] = path.name
    table["_row"] = np.arange(len(table))
    _FILE_CACHE[key] = (size, table)
    return table


def read_corrections(store: Store) -> pd.DataFrame:
    """Every saved correction, oldest first (by time, then save, then row), each once.

    Columns are those of :data:`CORRECTIONS_SCHEMA`. A correction found in two files (while
    :func:`compact_corrections` merges them) is read once.
    """
    files = _files(store)
    stamp = []
    for p in files:
        with contextlib.suppress(FileNotFoundError):
            stamp.append((p.name, p.stat().st_size))
    hit = _ALL_CACHE.get(str(store.root))
    if hit is not None and hit[0] == tuple(stamp):
        return hit[1]
    tables = [t for t in (_read_file(store, p) for p in files) if t is not None]
    if not tables:
        return CORRECTIONS_SCHEMA.empty_table().to_pandas()
    out = pd.concat(tables, ignore_index=True).sort_values(["created_at", "_file", "_row"], kind="stable")
    out = out.drop_duplicates("correction_id", keep="first")
    out = out.drop(columns=["_file", "_row"]).reset_index(drop=True)
    _ALL_CACHE[str(store.root)] = (tuple(stamp), out)
    return out


def compact_corrections(store: Store) -> Path | None:
    """Merge every corrections file into one (atomically; readers never miss or double a correction).

    The merged file is renamed into place before the old ones are removed; a reader that sees both
    reads each correction once (they are unique by ``correction_id``). Returns the merged file.
    """
    files = _files(store)
    if len(files) < 2:
        return files[0] if files else None
    rows = read_corrections(store)
    merged = write_corrections(store, rows)
    for p in files:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return merged




def active_corrections(corrections: pd.DataFrame) -> pd.DataFrame:
    """The corrections in effect: every correction not cancelled by an ``undo`` in effect (undo rows
    themselves left out), in their order."""
    if corrections.empty:
        return corrections
    cancelled: set[str] = set()
    keep = np.zeros(len(corrections), bool)
    for i in range(len(corrections) - 1, -1, -1):  # an undo always comes after what it cancels
        cid, kind, target = (corrections["correction_id"].iat[i], corrections["kind"].iat[i],
                             corrections["target"].iat[i])
        if cid in cancelled:
            continue
        if kind == "undo":
            if isinstance(target, str):
                cancelled.add(target)
        else:
            keep[i] = True
    return corrections[keep]
