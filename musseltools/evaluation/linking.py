"""Truth on a run's images: which truth entry belongs to which image, and the truth in the run's terms.

Truth is linked to images by relative path (without suffix), else by file stem; a stem shared by
several images is resolved by the longest common trailing path, and what stays ambiguous or unpaired
is reported, never guessed. Linked truth becomes true counts per image and class, and truth boxes in
the images' pixels; with a minimum shell length, the truth boxes shorter than it are left out as the run's
detections are (:func:`truth_at_length`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from ..results.sizes import add_lengths, at_min_length
from .truth import Truth, TruthError

__all__ = ["link_truth", "true_count_table", "truth_boxes", "truth_at_length", "preview"]

log = logging.getLogger(__name__)


def preview(items: Sequence[str], n: int = 3) -> str:
    """The first ``n`` items, quoted, and how many more: for messages about long lists.

    >>> preview(["a.jpg", "b.jpg", "c.jpg", "d.jpg"], 2)
    "'a.jpg', 'b.jpg' and 2 more"
    """
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(repr(str(i)) for i in items[:n]) + more


def link_truth(ok: pd.DataFrame, root: str | None, truth: Truth, failed: pd.DataFrame
               ) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Pair run images with truth entries: by relative path (without suffix), else by file stem.

    A stem shared by several images is resolved by the longest common trailing path; what stays
    ambiguous or unpaired is reported, never guessed.

    Parameters
    ----------
    ok : pandas.DataFrame
        ``image_id, path`` of the images with a result.
    root : str, optional
        Folder the image paths are relative to.
    truth : Truth
    failed : pandas.DataFrame
        ``path`` of the images without a result (their truth is reported as unmatched, with the reason).

    Returns
    -------
    links : pandas.DataFrame
        ``image_id, key``: one row per paired image.
    unmatched_images : list of str
        Paths of images with a result and no truth.
    unmatched_labels : list of str
        Truth entries (files or names) that match no image.
    """
    def rel_key(p: str) -> str:
        pp = Path(p)
        if root:
            try:
                pp = pp.relative_to(root)
            except ValueError:
                pass
        return PurePosixPath(*pp.with_suffix("").parts).as_posix()

    img_keys = {iid: rel_key(p) for iid, p in zip(ok["image_id"], ok["path"])}
    full_keys = {iid: PurePosixPath(*Path(p).with_suffix("").parts).as_posix() for iid, p in zip(ok["image_id"],
                                                                                              ok["path"])}
    by_key = {k: iid for iid, k in img_keys.items()}
    by_stem: dict[str, list[str]] = {}
    for iid, k in full_keys.items():
        by_stem.setdefault(PurePosixPath(k).name, []).append(iid)
    pairs: dict[str, str] = {}  # image_id -> truth key
    taken: set[str] = set()
    leftovers = []
    for key in truth.images["key"]:
        iid = by_key.get(key)
        if iid is not None and iid not in taken:
            pairs[iid] = key
            taken.add(iid)
        else:
            leftovers.append(key)
    unmatched_labels = []
    for key in leftovers:
        cands = [i for i in by_stem.get(PurePosixPath(key).name, []) if i not in taken]
        if len(cands) > 1:
            parts = PurePosixPath(key).parts
            score = [_common_tail(parts, PurePosixPath(full_keys[i]).parts) for i in cands]
            best = max(score)
            cands = [i for i, s in zip(cands, score) if s == best]
        if len(cands) == 1:
            pairs[cands[0]] = key
            taken.add(cands[0])
        else:
            if len(cands) > 1:
                log.warning("truth entry %r matches %d images equally well; it is not used", key, len(cands))
            unmatched_labels.append(key)
    # truth for images that failed is reported as unmatched with the reason
    failed_stems = {PurePosixPath(Path(p).with_suffix("").as_posix()).name for p in failed["path"].astype(str)}
    file_of = dict(zip(truth.images["key"], truth.images["file"]))
    labels = [file_of.get(k, k) + (" (its image has no result)" if PurePosixPath(k).name in failed_stems else "")
              for k in unmatched_labels]
    unmatched_images = [p for iid, p in zip(ok["image_id"], ok["path"]) if iid not in pairs]
    links = pd.DataFrame({"image_id": list(pairs), "key": list(pairs.values())})
    return links, unmatched_images, labels


def _common_tail(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(reversed(a), reversed(b)):
        if x != y:
            break
        n += 1
    return n


def true_count_table(truth: Truth, mapped: Mapping[str, str], classes: Sequence[str],
                     validated: pd.DataFrame) -> pd.DataFrame:
    """True counts per validated image (index ``image_id``) and evaluated class.

    ``mapped`` gives the evaluated class of each truth class; ``validated`` has ``image_id, key`` (a
    missing key: an image taken as having no objects).
    """
    tc = truth.count_table()
    true_counts = pd.DataFrame(0, index=validated["image_id"].to_numpy(), columns=list(classes), dtype="int64")
    keys = validated["key"].to_numpy()
    has_key = pd.notna(keys)
    for t, c in mapped.items():
        if c in classes:
            vals = tc[t].reindex(keys[has_key]).fillna(0).to_numpy(np.int64)
            true_counts.loc[validated["image_id"].to_numpy()[has_key], c] += vals
    true_counts.index.name = "image_id"
    return true_counts


def truth_boxes(truth: Truth, mapped: Mapping[str, str], classes: Sequence[str],
                validated: pd.DataFrame) -> pd.DataFrame:
    """Truth boxes of the validated images in their pixels: ``image_id, class, x1, y1, x2, y2`` (and
    ``corners`` of OBB labels).

    Normalized labels are scaled by the run's image sizes; pixel boxes (COCO) of images annotated at
    another size are scaled to the image.

    Raises
    ------
    TruthError
        Normalized labels for images whose size the run does not know.
    """
    obj = truth.objects.copy()
    obj["class"] = obj["class_name"].astype(str).map(mapped)
    obj = obj[obj["class"].isin(classes)]
    obj = obj.merge(validated[["key", "image_id", "width", "height"]], on="key", how="inner")
    norm = obj["normalized"].to_numpy(bool)
    if norm.any():
        w = obj["width"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
        h = obj["height"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
        if np.isnan(w[norm]).any() or np.isnan(h[norm]).any():
            raise TruthError("normalized labels need the image size, which the run does not know for some "
                             "images — re-run the collection scan so that widths and heights are recorded")
        for col, s in (("x1", w), ("x2", w), ("y1", h), ("y2", h)):
            v = obj[col].to_numpy(np.float64)
            obj[col] = np.where(norm, v * s, v)
        if "corners" in obj:
            obj["corners"] = [c * [wi, hi] if c is not None and n else c
                              for c, n, wi, hi in zip(obj["corners"], norm, w, h)]
    if (~norm).any():
        _scale_pixel_boxes(obj, truth, norm)
    return obj[["image_id", "class", "x1", "y1", "x2", "y2"] + (["corners"] if "corners" in obj else [])]


def _scale_pixel_boxes(obj: pd.DataFrame, truth: Truth, norm: np.ndarray) -> None:
    """Scale, in place, pixel boxes (COCO) of images annotated at another size to the images' size."""
    sizes = truth.images.set_index("key")[["width", "height"]].astype("float64")
    tw = obj["key"].map(sizes["width"]).to_numpy(np.float64)
    th = obj["key"].map(sizes["height"]).to_numpy(np.float64)
    rw = obj["width"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
    rh = obj["height"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
    sx = np.where(~norm & (tw > 0) & (rw > 0), rw / tw, 1.0)
    sy = np.where(~norm & (th > 0) & (rh > 0), rh / th, 1.0)
    sx, sy = np.nan_to_num(sx, nan=1.0), np.nan_to_num(sy, nan=1.0)
    if np.any(np.abs(sx - 1) > 1e-9) or np.any(np.abs(sy - 1) > 1e-9):
        log.info("truth %s: boxes of %d images annotated at another size are scaled to the images' size",
                 truth.source, obj.loc[(sx != 1) | (sy != 1), "key"].nunique())
        for col, f in (("x1", sx), ("x2", sx), ("y1", sy), ("y2", sy)):
            obj[col] = obj[col].to_numpy(np.float64) * f


def truth_at_length(boxes: pd.DataFrame, true_counts: pd.DataFrame, images: pd.DataFrame, scales: pd.DataFrame,
                    min_length_mm: float) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The truth boxes (:func:`truth_boxes`) and true counts (:func:`true_count_table`) at a minimum shell
    length, and how many boxes were left out.

    A box is measured as a detection is (:func:`musseltools.results.sizes.add_lengths`: an OBB label on its
    corners, any other on its box) with its image's scale (``scales``: ``image_id, mm_per_px``; ``images``:
    ``image_id, width, height``), and left out by the rule of the run's counts
    (:func:`musseltools.results.sizes.at_min_length`): a labelled recruit is then no miss of a run that leaves
    recruits out, and a box without a length in mm (no scale) stays, as such a detection counts."""
    if min_length_mm <= 0 or not len(boxes):
        return boxes, true_counts, 0
    outline = "corners" in boxes
    measured = add_lengths(boxes.assign(polygon=boxes["corners"] if outline else None), "obb" if outline else None)
    kept, _ = at_min_length(measured, images, scales, min_length_mm)
    short = boxes.loc[boxes.index.difference(kept.index)]
    true_counts = true_counts.copy()
    for (image_id, cls), n in short.groupby(["image_id", "class"]).size().items():
        true_counts.loc[image_id, cls] -= int(n)
    return boxes.loc[kept.index], true_counts, len(short)
