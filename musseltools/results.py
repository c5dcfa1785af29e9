"""The one results view: what a run's images have as results, read from the store.

Every view of a run (counts, the per-image table, detections, the cube, exports, widgets, evaluation,
reports) starts from :func:`load_results`. It joins the run's collection (paths as last scanned) with
the results cached under the run's inference key, and says on each image why it has no result. Hand
corrections, when they exist, are applied here and nowhere else, so every view shows the same thing.

Examples
--------
>>> res = load_results(store, "e16894b5c394")                      # doctest: +SKIP
>>> res.images.columns.tolist()[:3], len(res.detections)            # doctest: +SKIP
(['image_id', 'path', 'width'], 1234)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .store import Store
from .thresholds import ClassMap, Thresholds

__all__ = ["RunResults", "load_results", "results_signature", "class_map_of", "thresholds_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResults:
    """A run's results as tables.

    Attributes
    ----------
    images : pandas.DataFrame
        One row per image of the run: ``image_id, path, width, height, n_detections, cap_hit, error,
        processed_at`` (``processed_at`` is missing for images without a result).
    detections : pandas.DataFrame
        Every stored detection of those images, down to the confidence floor: ``image_id, path,
        class_id, class_name, confidence, x1, y1, x2, y2, polygon``.
    classes : ClassMap
        The model's classes and the run's class map.
    conf_floor : float
        The confidence floor the detections were stored with.
    """

    images: pd.DataFrame
    detections: pd.DataFrame
    classes: ClassMap
    conf_floor: float


def class_map_of(meta: Mapping[str, Any]) -> ClassMap:
    """The :class:`ClassMap` of a run from its metadata."""
    names = meta["model"]["names"]
    return ClassMap([names[k] for k in sorted(names, key=int)], meta["model"].get("class_map"))


def thresholds_of(meta: Mapping[str, Any], value: Any = None) -> Thresholds:
    """Thresholds for a run: ``value`` validated against the run, else the thresholds in effect.

    A class that ``value`` (a mapping) leaves out keeps the run's threshold. The thresholds in effect
    are those saved with ``Run.save_thresholds``, else the threshold the run was asked with.
    """
    default = float(meta["threshold"])
    if value is None:
        value = meta.get("saved_thresholds") or default
    return Thresholds.parse(value, default=default, floor=float(meta["settings"]["conf_floor"]),
                            classes=class_map_of(meta))


def load_results(store: Store, run_id: str, meta: Mapping[str, Any] | None = None) -> RunResults:
    """The results of a run's images (see :class:`RunResults`)."""
    meta = store.read_run(run_id) if meta is None else meta
    coll = store.read_collection(run_id)
    images, dets = store.read_results(meta["inference_key"])
    coll = coll.drop_duplicates("image_id", keep="first")
    table = coll[["image_id", "path"]].merge(images.drop(columns=["path"]), on="image_id", how="left")
    _explain_missing(store, run_id, meta, coll, table)
    for col in ("width", "height"):
        if col in coll:
            scanned = table["image_id"].map(coll.set_index("image_id")[col]).astype("Int64")
            table[col] = table[col].astype("Int64").fillna(scanned)
    dets = dets[dets["image_id"].isin(coll["image_id"])].drop(columns=["path"])
    dets = dets.merge(coll[["image_id", "path"]], on="image_id", how="left")
    dets = dets[["image_id", "path"] + [c for c in dets.columns if c not in ("image_id", "path")]]
    return RunResults(table, dets, class_map_of(meta), float(meta["settings"]["conf_floor"]))


def _explain_missing(store: Store, run_id: str, meta: Mapping[str, Any], coll: pd.DataFrame,
                     table: pd.DataFrame) -> None:
    """Put the reason on images without a result (in place): a quarantined part, or a scan error."""
    # a completed run had a result for every image: one missing now was in a damaged part that was
    # quarantined. Say so on the image rather than count it as 0 without a word.
    qdir = store.results_dir(meta["inference_key"]) / "quarantine"
    if meta.get("status") == "completed" and qdir.is_dir() and any(qdir.iterdir()):
        lost = table["processed_at"].isna() & table["error"].isna()
        if lost.any():
            table.loc[lost, "error"] = (
                f"no stored result: it was in a damaged results part, moved to {str(qdir)!r} — run the "
                "same run again to process this image again"
            )
            log.warning("[run %s] %d images lost their results to damaged parts (quarantined in %s); run "
                        "again to process them", run_id, int(lost.sum()), qdir)
    # files that could not be read at scan time carry their reason in the collection table
    if "error" in coll:
        scan_err = coll.set_index("image_id")["error"]
        missing = table["processed_at"].isna() & table["image_id"].map(scan_err).notna()
        table.loc[missing, "error"] = table.loc[missing, "image_id"].map(scan_err)


def results_signature(store: Store, run_id: str, meta: Mapping[str, Any]) -> str:
    """Changes whenever a run's results change (a part committed, the collection re-scanned)."""
    parts = store.part_files(meta["inference_key"])
    coll = store.run_dir(run_id) / "collection.parquet"
    items = [p.name + str(p.stat().st_mtime_ns) for p in parts if p.exists()]
    if coll.exists():
        items.append(str(coll.stat().st_mtime_ns))
    return hashlib.sha256("|".join(items).encode()).hexdigest()[:16]
