"""Compaction: merge a run's many small results parts into a few large ones.

A long survey run commits one part per commit unit; a million images make tens of thousands of small
files, and listing and opening them dominates every read. ``musseltools compact RUN_ID`` (or
``--all``) merges them, under the results' lock (never while a run writes them):

1. the rows of a group of parts (each image's kept result, as readers see it) are written as one new
   part, named from the merged parts' names (deterministic), detections first, images part last: the
   usual commit;
2. only then are the merged parts removed, each images part (its commit proof) before its detections.

A reader at any moment sees each image exactly once: while both the new part and old parts exist, it
keeps one result per image (the same rows); a part that vanishes under a reader makes it read again
(:meth:`musseltools.store.store.Store.read_results`). A SIGKILL in the middle leaves, at worst, old parts
beside the merged one, which the next compaction removes.

Examples
--------
>>> compact(store, run_id)                                                      # doctest: +SKIP
{'inference_key': '3f0c...', 'parts_before': 320, 'parts_after': 1}
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .._failpoints import failpoint
from ..core.detections import DETECTIONS_SCHEMA
from .store import IMAGES_SCHEMA, Store

__all__ = ["compact", "compact_all", "ROWS_PER_PART"]

log = logging.getLogger(__name__)

#: Images per merged part (a part of 100,000 survey images with their detections is a few hundred MB).
ROWS_PER_PART = 100_000


def compact(store: Store, run_id: str, *, wait: bool | float = False) -> dict[str, Any]:
    """Merge the results parts of a run's inference key; returns what was done.

    Raises :class:`~musseltools.errors.RunLockedError` when a run is writing those results (unless
    ``wait``).
    """
    key = store.read_run(run_id)["inference_key"]
    return compact_key(store, key, run_id=run_id, wait=wait)


def compact_all(store: Store, *, wait: bool | float = False) -> list[dict[str, Any]]:
    """Compact the results of every run in the store (each inference key once)."""
    done, out = set(), []
    for meta in store.list_runs():
        key = meta.get("inference_key")
        if key and key not in done:
            done.add(key)
            out.append(compact_key(store, key, run_id=meta["run_id"], wait=wait))
    return out


def compact_key(store: Store, key: str, *, run_id: str, wait: bool | float = False) -> dict[str, Any]:
    """Merge the parts of one inference key (see the module docstring)."""
    with store.lock(key, run_id=run_id, wait=wait):
        store.clean_temporary(key)  # e.g. the detections of an old part whose removal was killed midway
        parts = store.part_files(key)
        before = len(parts)
        if before <= 1:
            return {"inference_key": key, "parts_before": before, "parts_after": before, "images": None}
        images, dets = store.read_results(key)
        groups = _groups(images, ROWS_PER_PART)
        names = [_part_name(p) for p in parts]  # paths in a folder, URLs in an object store
        merged_key = hashlib.sha256("\n".join(names).encode()).hexdigest()[:20]
        for i, ids in enumerate(groups):
            chosen_images = images[images["image_id"].isin(ids)]
            chosen_dets = dets[dets["image_id"].isin(ids)]
            store.commit_part(key, f"compact-{merged_key}-{i}", _table(chosen_images, IMAGES_SCHEMA),
                              _table(chosen_dets, DETECTIONS_SCHEMA))
        failpoint("compaction-merged")  # merged parts committed, old ones not yet removed
        new_names = {f"part-compact-{merged_key}-{i}.parquet" for i in range(len(groups))}
        for name in names:
            if name not in new_names:
                store.remove_part(key, name)  # the commit proof first, through the store's backend
        after = len(store.part_files(key))
        log.info("compacted results %s: %d parts -> %d (%d images)", key, before, after, len(images))
        return {"inference_key": key, "parts_before": before, "parts_after": after, "images": len(images)}


def _part_name(part: Any) -> str:
    """``part-x.parquet`` from a part's path or URL."""
    return str(part).rsplit("/", 1)[-1]


def _groups(images: Any, size: int) -> list[list[str]]:
    ids = images["image_id"].tolist()
    return [ids[i : i + size] for i in range(0, len(ids), size)] or [[]]


def _table(frame: Any, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def read_part_rows(path: Any) -> int:
    """Rows in a Parquet part (for tests and the scale benchmark)."""
    return pq.ParquetFile(path).metadata.num_rows
