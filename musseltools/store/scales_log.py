"""Scales drawn by hand: an append-only log, like the corrections log (:mod:`musseltools.store.corrections_log`).

A drawn scale is a line on an image (along a ruler, or a quadrat's side) and its length in mm: ``mm_per_px =
mm / px_length``. Each save is one new Parquet file in ``STORE/scales/`` written atomically, never rewritten;
a scale applies to the images it names (an image, or every image of a sheet group, resolved when it is saved),
and the latest saved for an image is the one in effect. Scales are a fact of the image (``image_id``: its
content), so every run of the same images sees them. Record them through
:func:`musseltools.corrections.scales.set_scale` (``run.set_scale``), which checks them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from .logfiles import append_table, read_log_file
from .store import Store

__all__ = ["SCALES_SCHEMA", "scales_dir", "write_scales", "read_scales"]

log = logging.getLogger(__name__)

#: One row per image a drawn scale applies to.
SCALES_SCHEMA = pa.schema([
    ("scale_id", pa.string()),
    ("image_id", pa.string()),
    ("path", pa.string()),
    ("group", pa.string()),  # the sheet group it was drawn for ("camera=A"), or None for one image
    ("drawn_on", pa.string()),  # the image the line was drawn on
    ("px_length", pa.float64()),
    ("mm", pa.float64()),
    ("mm_per_px", pa.float64()),
    ("line", pa.list_(pa.float64())),  # x1, y1, x2, y2 of the line, when drawn
    ("author", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])

_PREFIX = "scale-"


def scales_dir(store: Store) -> Path:
    """``STORE/scales``: one Parquet file per save."""
    return store.root / "scales"


def write_scales(store: Store, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Save rows of :data:`SCALES_SCHEMA` as one new file, atomically; returns it."""
    table = pa.Table.from_pylist([dict(r) for r in rows], schema=SCALES_SCHEMA)
    path = append_table(store, scales_dir, _PREFIX, table, what="scales",
                        doing=f"save a scale for {len(rows)} images")
    log.info("saved a drawn scale for %d images to %s", table.num_rows, path.name)
    return path


def read_scales(store: Store) -> pd.DataFrame:
    """Every drawn scale, oldest first (by time, then file): columns of :data:`SCALES_SCHEMA`."""
    if store.remote:  # scales are saved to local stores only (write_scales says so): an object store has none
        return SCALES_SCHEMA.empty_table().to_pandas()
    folder = scales_dir(store)
    files = [] if not folder.is_dir() else sorted(
        p for p in folder.iterdir() if p.name.startswith(_PREFIX) and p.suffix == ".parquet")
    tables = []
    for p in files:
        t = read_log_file(p, SCALES_SCHEMA, "scales")
        tables.append(t.assign(_file=p.name))
    if not tables:
        return SCALES_SCHEMA.empty_table().to_pandas()
    out = pd.concat(tables, ignore_index=True).sort_values(["created_at", "_file"], kind="stable")
    return out.drop(columns="_file").reset_index(drop=True)
