"""Hand corrections applied to a run's results: the one place where the log meets the model's results.

:func:`apply_corrections` turns stored results and the corrections in effect into corrected tables
(:class:`Applied`); :func:`musseltools.results.view.load_results` calls it, so every view shows the same
corrected results. Corrections that cannot apply to a run are kept, with the reason, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..core.thresholds import ClassMap
from ..store.corrections_log import active_corrections, member

__all__ = ["Applied", "LENGTH_LINES", "apply_corrections", "resolve_class", "next_category_class"]


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



#: No length measured by hand (:attr:`Applied.lengths`).
LENGTH_LINES = pd.DataFrame({c: pd.Series(dtype="float64") for c in ("x1", "y1", "x2", "y2")},
                            index=pd.Index([], dtype=object, name="detection_id"))


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
    lengths : pandas.DataFrame
        The length lines measured by hand (``length`` corrections in effect, the latest per detection):
        ``x1, y1, x2, y2`` indexed by ``detection_id``.
    """

    images: pd.DataFrame
    detections: pd.DataFrame
    removed: pd.DataFrame
    applied: pd.DataFrame
    unapplied: pd.DataFrame
    verified: pd.DataFrame
    lengths: pd.DataFrame = field(default_factory=LENGTH_LINES.copy)


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
    """Apply reclassify and delete corrections, and check length ones: (detections, removed, applied, unapplied)."""
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
    applied = pd.concat([edits[edits["kind"].isin(["delete", "length"])], recl.drop(columns="_to")])
    return dets[~gone], dets[gone], applied, out


def apply_corrections(images: pd.DataFrame, detections: pd.DataFrame, corrections: pd.DataFrame, *,
                      inference_key: str, classes: ClassMap) -> Applied:
    """Apply the saved corrections to a run's results (called by :func:`musseltools.results.view.load_results`,
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
    dets, removed, edits, bad = _edits(active[active["kind"].isin(["reclassify", "delete", "length"])], dets,
                                       inference_key, classes)
    unapplied += bad
    lines = edits[edits["kind"] == "length"].drop_duplicates("detection_id", keep="last")
    lines = lines.set_index("detection_id")[["x1", "y1", "x2", "y2"]] if len(lines) else LENGTH_LINES
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
                   applied.reset_index(drop=True), report, verified.reset_index(drop=True), lines)
