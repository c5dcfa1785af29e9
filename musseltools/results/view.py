"""The one results view: what a run's images have as results, read from the store.

Every view of a run (counts, the per-image table, detections, the cube, exports, widgets, evaluation,
reports) starts from :func:`load_results`. It joins the run's collection (paths as last scanned) with
the results cached under the run's inference key, and says on each image why it has no result. Every
detection gets its stable ``detection_id`` here (:func:`musseltools.core.detections.detection_ids`), and
hand corrections (:mod:`musseltools.store.corrections_log`) are applied here (:mod:`~musseltools.results.corrected`) and nowhere else, so every view
shows the same thing; ``corrected=False`` gives the model alone.

Examples
--------
>>> res = load_results(store, "e16894b5c394")                      # doctest: +SKIP
>>> res.images.columns.tolist()[:3], len(res.detections)            # doctest: +SKIP
(['image_id', 'path', 'width'], 1234)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from ..core.detections import detection_ids
from ..core.thresholds import ClassMap, Thresholds
from ..store.corrections_log import NO_CORRECTIONS, corrections_signature, member, read_corrections
from ..store.store import Store
from .corrected import apply_corrections
from .sizes import add_lengths, at_min_length

__all__ = ["RunResults", "load_results", "load_counting", "counting_tables", "results_signature", "class_map_of",
           "thresholds_of", "at_length", "scales_signature"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResults:
    """A run's results as tables.

    Attributes
    ----------
    images : pandas.DataFrame
        One row per image of the run: ``image_id, path, width, height, n_detections, cap_hit, error,
        processed_at`` (``processed_at`` is missing for images without a result).
        With corrections, ``n_detections`` counts the corrected detections; ``verified`` says whether
        the image was marked checked by hand.
    detections : pandas.DataFrame
        Every stored detection of those images, down to the confidence floor: ``image_id, path,
        class_id, class_name, confidence, x1, y1, x2, y2, polygon, detection_id, source, length_px, width_px,
        length_method`` (:mod:`musseltools.results.sizes`). ``source``
        is ``model``, ``reclassified`` or ``added`` (added detections have confidence 1.0, so they count
        at every threshold); deleted detections are left out.
    classes : ClassMap
        The model's classes and the run's class map.
    conf_floor : float
        The confidence floor the detections were stored with.
    corrected : bool
        Whether hand corrections were applied.
    removed : pandas.DataFrame
        Detections that corrections deleted (empty with ``corrected=False``).
    applied : pandas.DataFrame
        The corrections in effect on the run (rows of :data:`musseltools.store.corrections_log.CORRECTIONS_SCHEMA`).
    unapplied : pandas.DataFrame
        Corrections of the run's images that could not be applied, with a ``reason``.
    verified : pandas.DataFrame
        ``image_id, thresholds, author, created_at`` of the images marked verified.
    """

    images: pd.DataFrame
    detections: pd.DataFrame
    classes: ClassMap
    conf_floor: float
    corrected: bool = False
    removed: pd.DataFrame = field(default_factory=pd.DataFrame)
    applied: pd.DataFrame = field(default_factory=pd.DataFrame)
    unapplied: pd.DataFrame = field(default_factory=pd.DataFrame)
    verified: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["image_id", "thresholds", "author", "created_at"]))


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


def load_results(store: Store, run_id: str, meta: Mapping[str, Any] | None = None, *, corrected: bool = True,
                 image_ids: Any = None) -> RunResults:
    """The results of a run's images (see :class:`RunResults`), with hand corrections applied.

    Parameters
    ----------
    store : Store
    run_id : str
    meta : mapping, optional
        The run's metadata (read from the store when not given).
    corrected : bool
        Apply the saved corrections (default); False gives the model alone.
    image_ids : collection of str, optional
        Only these images of the run (e.g. the image an editor shows).
    """
    meta = store.read_run(run_id) if meta is None else meta
    if image_ids is None:  # the whole run: served from this process's cache while nothing changed
        return _cached(store, run_id, meta, corrected, lambda: _load(store, run_id, meta, corrected=corrected,
                                                                     image_ids=None))  # type: ignore[return-value]
    return _load(store, run_id, meta, corrected=corrected, image_ids=image_ids)


def load_counting(store: Store, run_id: str, meta: Mapping[str, Any] | None = None) -> RunResults:
    """What counting views need (counts, per-image counts, the cube), with corrections: when the store holds
    none, a :class:`RunResults` whose detections have only ``image_id, class_name, confidence``
    (:func:`counting_tables`: a fraction of the memory), else :func:`load_results`. Cached alike."""
    meta = store.read_run(run_id) if meta is None else meta
    if corrections_signature(store) != NO_CORRECTIONS:
        return load_results(store, run_id, meta)
    whole = _cached(store, run_id, meta, True, None)  # the whole results, when this process holds them already
    if whole is not None:
        return whole

    def lean() -> RunResults:
        tables = counting_tables(store, run_id, meta)
        if tables is None:  # corrections saved meanwhile
            return _load(store, run_id, meta, corrected=True, image_ids=None)
        return RunResults(*tables, class_map_of(meta), float(meta["settings"]["conf_floor"]), True)

    return _cached(store, run_id, meta, "counting", lean)  # type: ignore[return-value]


def _cached(store: Store, run_id: str, meta: Mapping[str, Any], kind: Any, build: Any) -> RunResults | None:
    """A run's results from this process's cache while its results signature is unchanged, else built
    (``build=None``: None when not cached)."""
    cache_key = (str(store.root), run_id, kind, json.dumps(
        [meta["inference_key"], meta["model"], meta["settings"], meta.get("status")], sort_keys=True, default=str))
    signature = results_signature(store, run_id, meta)
    hit = _RESULTS_CACHE.get(cache_key)
    if hit is not None and hit[0] == signature:
        return hit[1]
    if build is None:
        return None
    res = build()
    _RESULTS_CACHE[cache_key] = (signature, res)
    while len(_RESULTS_CACHE) > 4:  # a few runs at once (e.g. two compared); the oldest goes
        _RESULTS_CACHE.pop(next(iter(_RESULTS_CACHE)))
    return res


def count_index(res: RunResults) -> dict[str, Any]:
    """Sorted confidences per class of these results (computed once per results object), from which
    :func:`musseltools.results.views.totals_at` counts at any thresholds by binary search."""
    hit = _COUNT_INDEX.get(id(res))
    if hit is None or hit[0] is not res:
        from .views import class_confidences

        hit = (res, class_confidences(res.detections))
        _COUNT_INDEX.clear()  # one survey's index at a time is what a slider or a loop over thresholds needs
        _COUNT_INDEX[id(res)] = hit
    return hit[1]


_COUNT_INDEX: dict[int, tuple[RunResults, dict[str, Any]]] = {}


def at_length(res: RunResults, scales: pd.DataFrame, min_length_mm: float) -> tuple[RunResults, int]:
    """The one minimum-length filter of every counting view (per-image counts, totals, the cube, detections, the
    counts in ``run.json``): ``res`` with only the detections that count at ``min_length_mm`` (the rule of
    :func:`musseltools.results.sizes.at_min_length`; ``scales``: :func:`~musseltools.results.sizes.image_scales`),
    and how many images holding detections have no scale. ``res`` itself is returned when no minimum is asked.
    The same filtered object is returned while ``res``, the scales and the minimum are unchanged, so that
    :func:`count_index` is computed once."""
    if min_length_mm <= 0:
        return res, 0
    key = (min_length_mm, scales_signature(scales))
    hit = _LENGTH_CACHE.get(id(res))
    if hit is not None and hit[0] is res and hit[1] == key:
        return hit[2]
    kept, unscaled = at_min_length(res.detections, res.images, scales, min_length_mm)
    out = (replace(res, detections=kept.reset_index(drop=True)), unscaled)
    _LENGTH_CACHE.clear()
    _LENGTH_CACHE[id(res)] = (res, key, out)
    return out


def scales_signature(scales: pd.DataFrame) -> str:
    """What counting at a minimum length depends on besides the results: each image's scale."""
    table = scales[["image_id", "mm_per_px"]].drop_duplicates("image_id").sort_values("image_id")
    return hashlib.sha256(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes()).hexdigest()[:16]


_LENGTH_CACHE: dict[int, tuple[RunResults, tuple, tuple[RunResults, int]]] = {}

#: (store, run, corrected, what the run's results depend on) -> (results signature, RunResults)
_RESULTS_CACHE: dict[tuple, tuple[str, RunResults]] = {}


def counting_tables(store: Store, run_id: str, meta: Mapping[str, Any] | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The run's per-image table and, of its detections, only ``image_id, class_name, confidence``: what
    counts and the count cube need, read in a fraction of the memory of :func:`load_results` (no
    outlines, no detection ids) and never cached. None when the store holds hand corrections (they
    need the whole results: use :func:`load_results`)."""
    if corrections_signature(store) != NO_CORRECTIONS:
        return None
    meta = store.read_run(run_id) if meta is None else meta
    coll = store.read_collection(run_id).drop_duplicates("image_id", keep="first")
    images, dets = store.read_results(meta["inference_key"], detection_columns=("image_id", "class_name", "confidence"))
    table = _image_table(store, run_id, meta, coll, images).assign(verified=False)
    return table, dets[member(dets["image_id"], coll["image_id"])].reset_index(drop=True)


def _image_table(store: Store, run_id: str, meta: Mapping[str, Any], coll: pd.DataFrame,
                 images: pd.DataFrame) -> pd.DataFrame:
    """One row per image of the collection with its stored result (or why it has none)."""
    table = coll[["image_id", "path"]].merge(images.drop(columns=["path"]), on="image_id", how="left")
    _explain_missing(store, run_id, meta, coll, table)
    for col in ("width", "height"):
        if col in coll:
            scanned = table["image_id"].map(coll.set_index("image_id")[col]).astype("Int64")
            table[col] = table[col].astype("Int64").fillna(scanned)
    return table


def _load(store: Store, run_id: str, meta: Mapping[str, Any], *, corrected: bool, image_ids: Any) -> RunResults:
    coll = store.read_collection(run_id)
    key = meta["inference_key"]
    images, dets = store.read_results(key)
    dets = dets.assign(detection_id=_ids(store, key, dets))
    coll = coll.drop_duplicates("image_id", keep="first")
    if image_ids is not None:
        coll = coll[member(coll["image_id"], set(image_ids))]
    table = _image_table(store, run_id, meta, coll, images)
    dets = dets[member(dets["image_id"], coll["image_id"])].drop(columns=["path"])
    dets = dets.merge(coll[["image_id", "path"]], on="image_id", how="left")
    dets = dets[["image_id", "path"] + [c for c in dets.columns if c not in ("image_id", "path")]]
    classes = class_map_of(meta)
    floor = float(meta["settings"]["conf_floor"])
    applied = apply_corrections(table, dets, read_corrections(store), inference_key=key, classes=classes)
    _warn_unapplied(store, run_id, applied.unapplied)
    task = meta["model"].get("task")
    if not corrected:
        table = table.assign(verified=applied.images["verified"].to_numpy())
        return RunResults(table, add_lengths(dets.assign(source="model"), task), classes, floor, False,
                          verified=applied.verified)
    return RunResults(applied.images, add_lengths(applied.detections, task, applied.lengths), classes, floor, True, applied.removed,
                      applied.applied, applied.unapplied, applied.verified)


#: (store root, inference key) -> (the detections table the ids were computed for, the ids)
_ID_CACHE: dict[tuple[str, str], tuple[pd.DataFrame, Any]] = {}
#: (store root, run id) -> the corrections this process has said cannot be applied to the run
_WARNED: dict[tuple[str, str], set[str]] = {}


def _ids(store: Store, key: str, dets: pd.DataFrame) -> Any:
    """Detection ids of a stored detections table (computed once per committed state of the results)."""
    hit = _ID_CACHE.get((str(store.root), key))
    if hit is not None and hit[0] is dets:
        return hit[1]
    ids = detection_ids(dets["image_id"], key, dets["class_name"], dets[["x1", "y1", "x2", "y2"]].to_numpy(),
                        dets["confidence"])
    _ID_CACHE[(str(store.root), key)] = (dets, ids)
    return ids


def _warn_unapplied(store: Store, run_id: str, unapplied: pd.DataFrame) -> None:
    """Say once per run that corrections of its images cannot be applied to it: once per process, and
    recorded in the store's cache, so that the next command on the run (``run``, ``compare``, ``report``)
    does not say it again; a correction not said before is said (with the others)."""
    ids = [str(c) for c in unapplied.get("correction_id", [])]
    said = _WARNED.setdefault((str(store.root), run_id), set())
    if not ids or said.issuperset(ids):
        return
    name = f"unapplied-{run_id}.json"
    said.update(store.read_json_cache(name).get("said", []))
    new = [c for c in ids if c not in said]
    said.update(ids)
    if not new:
        return
    first = unapplied[unapplied["correction_id"] == new[0]].iloc[0]
    more = f" ({len(new)} of them new)" if len(new) < len(ids) else ""
    log.warning("[run %s] %d corrections of its images cannot be applied to this run%s, e.g. %s of %s: %s — list "
                "them with `musseltools corrections report %s` (run.corrections_report()); said once per run",
                run_id, len(ids), more, first["kind"], first["path"], first["reason"], run_id)
    try:
        store.write_json_cache(name, {"said": sorted(said)})
    except Exception as exc:  # noqa: BLE001 - a store we may not write to: said once per process instead
        log.debug("[run %s] could not record the warning in the store (%s)", run_id, exc)


def _explain_missing(store: Store, run_id: str, meta: Mapping[str, Any], coll: pd.DataFrame,
                     table: pd.DataFrame) -> None:
    """Put the reason on images without a result (in place): a quarantined part, or a scan error."""
    # a completed run had a result for every image: one missing now was in a damaged part that was
    # quarantined. Say so on the image rather than count it as 0 without a word.
    qdir = f"{store.results_dir(meta['inference_key'])}/quarantine"
    if meta.get("status") == "completed" and not store.quarantine_is_empty(meta["inference_key"]):
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
    """Changes whenever a run's results change (a part committed, the collection re-scanned, a correction saved).

    On a local store: the names of the parts and the modification times of their folders (a part added,
    replaced or removed renames an entry, which changes its folder's time), without a stat per part.
    """
    key = meta["inference_key"]
    items: list[str] = []
    images_dir = store.results_dir(key) / "images" if not store.remote else None
    if images_dir is not None:
        try:
            with os.scandir(images_dir) as it:
                items.extend(sorted(e.name for e in it if e.name.startswith("part-")))
            for sub in ("images", "detections"):
                items.append(str(os.stat(store.results_dir(key) / sub).st_mtime_ns))
        except FileNotFoundError:
            items.append("no results")
    else:
        parts = store.part_files(key)
        items.extend(stamp for stamp in (store.stamp(p) for p in parts) if stamp is not None)
    stamp = store.stamp(f"{store.run_dir(run_id)}/collection.parquet")
    if stamp is not None:
        items.append(stamp)
    items.append(corrections_signature(store))
    return hashlib.sha256("|".join(items).encode()).hexdigest()[:16]
