"""Hand corrections: append-only, stored beside the results, applied once by the results view.

A researcher checks a run's detections by hand and records what the model got wrong. Corrections
never change the model's results: each save is one more Parquet file in ``STORE/corrections/``
(written to a temporary file, fsync'd and renamed, like every part of the store), and
:func:`musseltools.results.load_results` applies them, so every view (counts, per-image tables,
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
    ``undo``
        cancels the correction named in ``target`` (an undo can itself be undone).

Every correction carries ``author`` (the OS user by default), ``created_at`` (UTC) and an optional
``note``. Reclassify, delete and verify name the ``inference_key`` of the results they were made on:
in a run of another model or other settings their detections do not exist, and they are reported
(:meth:`musseltools.Run.corrections_report`), never silently dropped.

Examples
--------
>>> from musseltools.store import Store                                      # doctest: +SKIP
>>> read_corrections(Store("data/store"))[["kind", "detection_id", "class_name"]]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .store import Store, atomic_write_bytes, remove_dead_temporaries, utcnow
from .thresholds import ClassMap

__all__ = [
    "NO_CORRECTIONS",
    "KINDS", "CORRECTIONS_SCHEMA", "Applied", "corrections_dir", "read_corrections", "write_corrections",
    "corrections_signature", "correction_row", "resolve_class", "next_category_class", "active_corrections",
    "apply_corrections", "check_corrections", "compact_corrections", "default_author", "RunContext", "member",
]

log = logging.getLogger(__name__)

#: The kinds of correction.
KINDS = ("reclassify", "delete", "add", "verify", "unverify", "undo")

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
    if store.remote:
        from .errors import StoreError

        raise StoreError(f"corrections cannot be saved to an object store yet ({store.root}) — use a local store")
    folder = corrections_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(folder)
    if isinstance(rows, pd.DataFrame):
        table = pa.Table.from_pandas(rows[CORRECTIONS_SCHEMA.names], schema=CORRECTIONS_SCHEMA, preserve_index=False)
    else:
        table = pa.Table.from_pylist([dict(r) for r in rows], schema=CORRECTIONS_SCHEMA)
    stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
    path = folder / f"{_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes(), failpoint_name="correction-written")
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
        table = pq.read_table(path).select(CORRECTIONS_SCHEMA.names).cast(CORRECTIONS_SCHEMA).to_pandas()
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged file is named, not skipped silently
        from .errors import CorruptStoreError

        raise CorruptStoreError(
            f"corrections file {str(path)!r} is damaged ({type(exc).__name__}: {exc}) — corrections are saved "
            "atomically, so it was changed by hand or by a disk fault — restore it from a backup, or move it "
            "aside to drop its corrections"
        ) from exc
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


# ---------------------------------------------------------------------------------------------- classes
def resolve_class(name: Any, classes: ClassMap) -> str | None:
    """The model class a correction's class means: a class name, or a category's first class; else None.

    >>> cm = ClassMap(["mussel", "gaping", "shell"], {"mussel": "live", "gaping": "dead", "shell": "dead"})
    >>> resolve_class("dead", cm), resolve_class("shell", cm), resolve_class("crab", cm)
    ('gaping', 'shell', None)
    """
    if name is None or (isinstance(name, float) and np.isnan(name)):
        return None
    name = str(name)
    if name in classes.names:
        return name
    members = classes.members(name) if name in classes.categories else []
    return members[0] if members else None


def next_category_class(class_name: str, classes: ClassMap) -> str:
    """The class a click in the editor gives a detection: the first class of the next category
    (live -> dead -> live with two categories).

    >>> next_category_class("live", ClassMap(["live", "dead"]))
    'dead'
    """
    cats = classes.categories
    nxt = cats[(cats.index(classes.category(class_name)) + 1) % len(cats)]
    return classes.members(nxt)[0]


# ---------------------------------------------------------------------------------------------- applying
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


@dataclass(frozen=True)
class Applied:
    """What :func:`apply_corrections` made of a run's results.

    Attributes
    ----------
    images : pandas.DataFrame
        The per-image table with ``n_detections`` as corrected and a ``verified`` column.
    detections : pandas.DataFrame
        Corrected detections with ``detection_id`` and ``source`` (``model``, ``reclassified``, ``added``).
    removed : pandas.DataFrame
        Detections deleted by a correction.
    applied : pandas.DataFrame
        The corrections in effect on this run.
    unapplied : pandas.DataFrame
        Corrections of the run's images that could not be applied, with a ``reason``.
    verified : pandas.DataFrame
        ``image_id, thresholds, author, created_at`` of the images marked verified.
    """

    images: pd.DataFrame
    detections: pd.DataFrame
    removed: pd.DataFrame
    applied: pd.DataFrame
    unapplied: pd.DataFrame
    verified: pd.DataFrame


def _unapplied(rows: pd.DataFrame, reason: str | Iterable[str]) -> pd.DataFrame:
    cols = ["correction_id", "kind", "image_id", "path", "detection_id", "inference_key", "class_name", "created_at"]
    return rows[cols].assign(reason=reason if isinstance(reason, str) else list(reason))


def _added_rows(adds: pd.DataFrame, images: pd.DataFrame, columns: Sequence[str], classes: ClassMap
                ) -> tuple[pd.DataFrame, pd.DataFrame, list[pd.DataFrame]]:
    """The detections that ``add`` corrections make, the adds applied, and those that could not be."""
    resolved = adds["class_name"].map(lambda n: resolve_class(n, classes))
    bad = adds[resolved.isna()]
    adds, resolved = adds[resolved.notna()], resolved[resolved.notna()]
    paths = images.set_index("image_id")["path"]
    rows = pd.DataFrame({
        "image_id": adds["image_id"].to_numpy(), "path": adds["image_id"].map(paths).to_numpy(),
        "class_id": np.array([classes.names.index(n) for n in resolved], np.int16),
        "class_name": resolved.to_numpy(dtype=object), "confidence": np.ones(len(adds), np.float32),
        **{c: adds[c].to_numpy(np.float32) for c in ("x1", "y1", "x2", "y2")},
        "polygon": [p if p is not None and len(p) >= 3 else [[a, b], [c, b], [c, d], [a, d]]
                    for p, a, b, c, d in zip(adds["polygon"], adds["x1"], adds["y1"], adds["x2"], adds["y2"])],
        "detection_id": ("add-" + adds["correction_id"]).to_numpy(dtype=object),
        "source": "added",
    })
    unapplied = [_unapplied(bad, [f"class {n!r} is neither a class of this run's model {list(classes.names)} nor a "
                                  f"category {classes.categories}" for n in bad["class_name"]])] if len(bad) else []
    return rows.reindex(columns=list(columns)), adds, unapplied


def _edits(edits: pd.DataFrame, dets: pd.DataFrame, key: str, classes: ClassMap
           ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[pd.DataFrame]]:
    """Apply reclassify and delete corrections: (detections, removed, applied, unapplied)."""
    out: list[pd.DataFrame] = []
    if edits.empty:
        return dets, dets.iloc[:0], edits, out
    other = edits["inference_key"] != key
    if other.any():
        out.append(_unapplied(edits[other], [
            f"made on the results of other inference settings or another model (key {k}): its detection does not "
            "exist in this run" for k in edits.loc[other, "inference_key"]]))
    edits = edits[~other]
    touched = member(dets["image_id"], set(edits["image_id"].tolist()))  # only their images' rows
    missing = ~member(edits["detection_id"], set(dets.loc[touched, "detection_id"].tolist()))
    if missing.any():
        out.append(_unapplied(edits[missing], "no detection with this id in this run's results"))
    edits = edits[~missing]
    recl = edits[edits["kind"] == "reclassify"]
    target = recl["class_name"].map(lambda n: resolve_class(n, classes))
    if target.isna().any():
        out.append(_unapplied(recl[target.isna()], "the class is neither a class nor a category of this run's model"))
    recl = recl.assign(_to=target)[target.notna()]
    last = recl.drop_duplicates("detection_id", keep="last").set_index("detection_id")["_to"]
    new = dets["detection_id"].map(last)
    changed = new.notna() & (new != dets["class_name"])
    if changed.any():
        dets = dets.copy()
        dets.loc[changed, "class_name"] = new[changed]
        dets.loc[changed, "class_id"] = np.array([classes.names.index(n) for n in new[changed]],
                                                 dtype=dets["class_id"].dtype)
        dets.loc[changed & (dets["source"] == "model"), "source"] = "reclassified"
    gone = member(dets["detection_id"], set(edits.loc[edits["kind"] == "delete", "detection_id"].tolist()))
    applied = pd.concat([edits[edits["kind"] == "delete"], recl.drop(columns="_to")])
    return dets[~gone], dets[gone], applied, out


def apply_corrections(images: pd.DataFrame, detections: pd.DataFrame, corrections: pd.DataFrame, *,
                      inference_key: str, classes: ClassMap) -> Applied:
    """Apply the saved corrections to a run's results (called by :func:`musseltools.results.load_results`,
    and nowhere else).

    Parameters
    ----------
    images : pandas.DataFrame
        The run's per-image table (``image_id, path, n_detections, processed_at, ...``).
    detections : pandas.DataFrame
        The model's detections of those images, with ``detection_id``.
    corrections : pandas.DataFrame
        :func:`read_corrections` (any images; those of other images are ignored).
    inference_key : str
        The key of the run's results.
    classes : ClassMap
        The run's classes (corrections name classes or categories).
    """
    corr = corrections[member(corrections["image_id"], images["image_id"])] if len(corrections) else corrections
    active = active_corrections(corr)
    dets = detections.assign(source="model")
    unapplied: list[pd.DataFrame] = []
    added, adds, bad = _added_rows(active[active["kind"] == "add"], images, list(dets.columns), classes)
    unapplied += bad
    if len(added):
        dets = pd.concat([dets, added], ignore_index=True)
    dets, removed, edits, bad = _edits(active[active["kind"].isin(["reclassify", "delete"])], dets,
                                       inference_key, classes)
    unapplied += bad
    marks = active[active["kind"].isin(["verify", "unverify"])]
    other = marks["inference_key"] != inference_key
    if other.any():
        unapplied.append(_unapplied(marks[other], "marked verified on the results of other inference settings or "
                                                  "another model: not a check of this run's detections"))
    marks = marks[~other].drop_duplicates("image_id", keep="last")
    verified = marks[marks["kind"] == "verify"][["image_id", "thresholds", "author", "created_at"]]
    images = images.copy()
    images["verified"] = member(images["image_id"], set(verified["image_id"].tolist()))
    if len(corr):
        n = dets.groupby("image_id").size()
        has = images["processed_at"].notna() if "processed_at" in images else pd.Series(True, index=images.index)
        images.loc[has, "n_detections"] = images.loc[has, "image_id"].map(n).fillna(0).astype("int64").to_numpy()
    applied = pd.concat([adds, edits, marks])
    applied = applied.sort_values("created_at", kind="stable") if len(applied) else applied
    cols = ["correction_id", "kind", "image_id", "path", "detection_id", "inference_key", "class_name",
            "created_at", "reason"]
    report = pd.concat(unapplied, ignore_index=True) if unapplied else pd.DataFrame(columns=cols)
    return Applied(images, dets.reset_index(drop=True), removed.reset_index(drop=True),
                   applied.reset_index(drop=True), report, verified.reset_index(drop=True))


# ---------------------------------------------------------------------------------------------- checking
def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip())


def _image_index(images: pd.DataFrame, root: str | None) -> dict[str, str]:
    """Every way a correction may name an image (image id, path as in the run, path relative to the
    collection folder) -> image id."""
    index: dict[str, str] = {}
    for iid, path in zip(images["image_id"], images["path"]):
        index.setdefault(str(path), iid)
        if root:
            with contextlib.suppress(ValueError):
                index.setdefault(Path(str(path)).relative_to(root).as_posix(), iid)
    index.update({str(i): i for i in images["image_id"]})
    return index


@dataclass(frozen=True)
class RunContext:
    """What checking a correction needs to know about a run (see :func:`check_corrections`)."""

    run_id: str
    inference_key: str
    classes: ClassMap
    images: pd.DataFrame
    detections: pd.DataFrame
    removed: pd.DataFrame
    thresholds: str
    root: str | None = None
    known_ids: frozenset[str] = frozenset()


def _box(spec: Mapping[str, Any], width: Any, height: Any) -> tuple[list[float] | None, str | None]:
    raw = spec.get("box")
    vals = list(raw) if raw is not None else [spec.get(k) for k in ("x1", "y1", "x2", "y2")]
    try:
        box = [float(v) for v in vals]
    except (TypeError, ValueError):
        return None, f"box {vals} is not four numbers — give x1, y1, x2, y2 in pixels"
    if len(box) != 4 or not all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        return None, f"box {vals} is not a box — expected finite x1 < x2 and y1 < y2 in pixels"
    w = None if width is None or pd.isna(width) else float(width)
    h = None if height is None or pd.isna(height) else float(height)
    if min(box) < 0 or (w is not None and max(box[0], box[2]) > w) or (h is not None and max(box[1], box[3]) > h):
        size = f" ({w:g} x {h:g} pixels)" if w and h else ""
        return None, f"box {box} lies outside the image{size} — give pixel coordinates inside it"
    return box, None


def _check_one(spec: Mapping[str, Any], ctx: RunContext, index: dict[str, str], dets: pd.DataFrame,
               images: pd.DataFrame, known: set[str]) -> dict[str, Any] | str:
    """A correction row from a spec, or what is wrong with it."""
    kind = str(spec.get("kind") or spec.get("action") or "").strip().lower()
    if kind not in KINDS:
        return f"action {kind or None!r} is not one of {', '.join(KINDS)}"
    det_id = None if _blank(spec.get("detection_id")) else str(spec["detection_id"]).strip()
    image = None if _blank(spec.get("image")) else str(spec["image"]).strip()
    image_id = index.get(image) if image is not None else None
    if image is not None and image_id is None:
        return f"image {image!r} is not an image of run {ctx.run_id} — give its path as in the run, or its image id"
    fields: dict[str, Any] = {"note": None if _blank(spec.get("note")) else str(spec["note"]),
                              "author": None if _blank(spec.get("author")) else str(spec["author"]),
                              "created_at": None if _blank(spec.get("created_at")) else spec["created_at"],
                              "correction_id": None if _blank(spec.get("correction_id")) else str(spec["correction_id"]),
                              "run_id": ctx.run_id}
    if kind in ("reclassify", "delete"):
        if det_id is None:
            return f"{kind} needs a detection_id (the detection_id column of run.detections())"
        if det_id not in dets.index:
            return f"detection {det_id!r} is not a detection of run {ctx.run_id} — take ids from run.detections()"
        det_image = dets.at[det_id, "image_id"]
        if image_id is not None and image_id != det_image:
            return f"detection {det_id!r} belongs to image {dets.at[det_id, 'path']!r}, not to {image!r}"
        fields.update(image_id=det_image, path=dets.at[det_id, "path"], detection_id=det_id,
                      inference_key=ctx.inference_key)
        if kind == "reclassify":
            cls = spec.get("class_name", spec.get("class"))
            if resolve_class(cls, ctx.classes) is None:
                return (f"class {cls!r} is neither a class of the model {list(ctx.classes.names)} nor a category "
                        f"{ctx.classes.categories}")
            fields["class_name"] = str(cls)
        return correction_row(kind, **fields)
    if image_id is None:
        return f"{kind} needs an image (its path as in the run, or its image id)"
    row = images.loc[image_id]
    fields.update(image_id=image_id, path=row["path"])
    if kind == "add":
        cls = spec.get("class_name", spec.get("class"))
        if resolve_class(cls, ctx.classes) is None:
            return (f"class {cls!r} is neither a class of the model {list(ctx.classes.names)} nor a category "
                    f"{ctx.classes.categories}")
        box, err = _box(spec, row.get("width"), row.get("height"))
        if err:
            return err
        poly = spec.get("polygon")
        fields.update(class_name=str(cls), box=box, polygon=None if _blank(poly) or poly is None else poly,
                      inference_key=ctx.inference_key)
    elif kind in ("verify", "unverify"):
        fields.update(inference_key=ctx.inference_key, thresholds=ctx.thresholds)
    else:  # undo
        target = spec.get("target")
        if _blank(target) or str(target) not in known:
            return f"undo needs target: the correction_id of an earlier correction ({target!r} is none)"
        fields["target"] = str(target)
    return correction_row(kind, **fields)


def check_corrections(specs: Sequence[Mapping[str, Any]], ctx: RunContext, *,
                      labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Check new corrections against a run; returns them as rows to save, or raises for any bad one.

    Each spec is a mapping with ``kind`` (or ``action``), ``image`` (a path as in the run, a path
    relative to the collection folder, or an image id), ``detection_id``, ``class`` (or
    ``class_name``), ``x1, y1, x2, y2`` (or ``box``), ``polygon``, ``target`` (undo), ``note``,
    ``author``, ``created_at`` and ``correction_id``, as each kind needs.

    Raises
    ------
    CorrectionError
        Naming every bad spec (by ``labels``, e.g. CSV row numbers), and saying nothing was saved.
    """
    from .errors import CorrectionError

    index = _image_index(ctx.images, ctx.root)
    dets = pd.concat([ctx.detections, ctx.removed], ignore_index=True).drop_duplicates("detection_id")
    dets = dets.set_index("detection_id")
    images = ctx.images.drop_duplicates("image_id").set_index("image_id")
    rows, errors = [], []
    known = set(ctx.known_ids)  # an undo may cancel a correction of the same batch
    labels = list(labels) if labels is not None else [f"correction {i + 1}" for i in range(len(specs))]
    for label, spec in zip(labels, specs):
        out = _check_one(spec, ctx, index, dets, images, known)
        if isinstance(out, str):
            errors.append(f"{label}: {out}")
        else:
            rows.append(out)
            known.add(out["correction_id"])
    if errors:
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        raise CorrectionError(
            f"{len(errors)} of {len(specs)} corrections are not valid for run {ctx.run_id}{more} — nothing was "
            "saved — fix them and try again:\n  " + "\n  ".join(errors[:20])
        )
    return rows
