"""Training data from the images verified by hand: :func:`export_dataset`.

``musseltools export-dataset RUN_ID OUT --format yolo`` writes the verified images of a run and their
corrected labels (:func:`musseltools.corrections.review.verified_labels`) as an Ultralytics dataset, so the model
can be fine-tuned on checked data (``--format coco`` and ``--format cvat`` write the same images with COCO
or CVAT annotations instead of ``labels/``, see :func:`export_dataset`)::

    OUT/
      data.yaml                  path, train, val, names (the model's classes, by id)
      images/train/<name>        the image files, copied byte for byte
      images/val/<name>
      labels/train/<name>.txt    one "class cx cy w h" line per object, normalized to the image
      labels/val/<name>.txt      (an empty file: an image checked and found to hold no object)

Images are split into train and val by image, deterministically: by the SHA-256 of ``seed`` and the
image id, so the same verified images always fall the same way, whatever their paths or order, and an
image verified later does not move the others. File names are ``<first 12 hex digits of the image
id>-<file name>``: unique, and never outside ``OUT``.

Examples
--------
>>> export_dataset(run, "datasets/checked")                     # doctest: +SKIP
>>> YOLO("data/models/mussel-demo.pt").train(data="datasets/checked/data.yaml", epochs=20)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from ..errors import MusselToolsError
from ..store.store import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from .api import CorrectableRun

__all__ = ["FORMATS", "export_dataset"]

log = logging.getLogger(__name__)

#: Dataset formats :func:`export_dataset` writes.
FORMATS = ("yolo", "coco", "cvat")
_MARK = ".musseltools-dataset"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _split(image_ids: list[str], val_fraction: float, seed: int) -> set[str]:
    """The image ids that go to val: the first ``round(n * val_fraction)`` by hash (at least one of two)."""
    order = sorted(image_ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    n_val = int(round(len(order) * val_fraction))
    if len(order) >= 2 and val_fraction > 0:
        n_val = min(max(n_val, 1), len(order) - 1)
    return set(order[:n_val])


def _prepare(out: Path) -> None:
    """An empty folder for the dataset: created, or a previous export of ours emptied."""
    if out.exists() and not out.is_dir():
        raise MusselToolsError(f"dataset folder {str(out)!r} is a file — expected a folder — choose another OUT")
    if out.is_dir() and any(out.iterdir()):
        if not (out / _MARK).exists():
            raise MusselToolsError(
                f"dataset folder {str(out)!r} is not empty and was not written by musseltools export-dataset — "
                "refusing to mix datasets — choose an empty or new folder"
            )
        for sub in ("images", "labels", "annotations"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "annotations.xml").unlink(missing_ok=True)
        for stale in out.glob("*.cache"):  # Ultralytics' label caches of the previous export
            stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARK).write_text("written by musseltools export-dataset; the folder is rewritten by the next export\n")


def _label_lines(boxes: pd.DataFrame, width: float, height: float) -> str:
    x1 = np.clip(boxes["x1"].to_numpy(np.float64), 0, width)
    x2 = np.clip(boxes["x2"].to_numpy(np.float64), 0, width)
    y1 = np.clip(boxes["y1"].to_numpy(np.float64), 0, height)
    y2 = np.clip(boxes["y2"].to_numpy(np.float64), 0, height)
    keep = (x2 > x1) & (y2 > y1)
    cls = boxes["class_id"].to_numpy(np.int64)
    rows = zip(cls[keep], ((x1 + x2) / 2 / width)[keep], ((y1 + y2) / 2 / height)[keep],
               ((x2 - x1) / width)[keep], ((y2 - y1) / height)[keep])
    return "".join(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in rows)


def export_dataset(run: CorrectableRun, out: str | os.PathLike, *, format: Literal["yolo", "coco", "cvat"] = "yolo",
                   val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write the run's verified images and their corrected labels as a training dataset.

    Parameters
    ----------
    run : musseltools.Run
    out : path
        The dataset folder (created; a previous export there is replaced; any other content is refused).
    format : {"yolo", "coco", "cvat"}
        Ultralytics detection labels (``class cx cy w h``, normalized); COCO (``annotations/
        instances_train.json`` and ``instances_val.json``, ``file_name`` relative to ``images/<split>/``);
        CVAT for images 1.1 (``annotations.xml``, image names ``train/<name>`` and ``val/<name>``
        relative to ``images/``). The images are copied into ``images/train`` and ``images/val`` in each.
    val_fraction : float
        Share of the images in the val split (at least one image of two or more).
    seed : int
        Changes the split.

    Returns
    -------
    Path
        ``OUT/data.yaml`` (yolo), ``OUT/annotations`` (coco), ``OUT/annotations.xml`` (cvat).

    Raises
    ------
    MusselToolsError
        An unknown format, no verified image, or an ``out`` that holds something else.
    """
    import yaml

    from .review import verified_labels

    if format not in FORMATS:
        raise MusselToolsError(f"dataset format {format!r} is not supported — expected one of {list(FORMATS)}")
    if not 0 <= val_fraction < 1:
        raise MusselToolsError(f"val_fraction {val_fraction!r} is not a share — expected a number in [0, 1)")
    images, boxes = verified_labels(run)
    if images.empty:
        raise MusselToolsError(
            f"run {run.run_id} has no verified image — expected images checked by hand — mark images verified "
            "in the editor, with run.verify(image), or by importing 'verify' rows, then export again"
        )
    out = Path(out)
    _prepare(out)
    val = _split(images["image_id"].tolist(), val_fraction, seed)
    by_image = dict(tuple(boxes.groupby("image_id"))) if len(boxes) else {}
    names: dict[str, str] = {}
    for row in images.itertuples(index=False):
        split = "val" if row.image_id in val else "train"
        name = f"{row.image_id[:12]}-{_UNSAFE.sub('_', Path(str(row.path)).name)[-120:]}"
        names[row.image_id] = f"{split}/{name}"
        src = Path(str(row.path))
        dst = out / "images" / split / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(src, dst)
        except OSError as exc:
            raise MusselToolsError(f"cannot copy verified image {str(src)!r} into the dataset: {exc} — the image "
                                   "must still be where the run last saw it") from exc
        if format == "yolo":
            mine = by_image.get(row.image_id, boxes.iloc[:0])
            text = _label_lines(mine, float(row.width), float(row.height))
            atomic_write_bytes(out / "labels" / split / (Path(name).stem + ".txt"), text.encode())
    if format != "yolo":
        return _write_annotations(run, out, format, images, boxes, names)
    names = dict(enumerate(run.class_names))
    # one verified image (or val_fraction 0): Ultralytics needs a val split, so it validates on train
    doc = {"path": str(out.resolve()), "train": "images/train", "val": "images/val" if val else "images/train",
           "names": names}
    atomic_write_bytes(out / "data.yaml", yaml.safe_dump(doc, sort_keys=False).encode())
    log.info("[run %s] dataset of %d verified images (%d val) written to %s", run.run_id, len(images), len(val), out)
    return out / "data.yaml"


def _write_annotations(run: CorrectableRun, out: Path, format: str, images: pd.DataFrame, boxes: pd.DataFrame,
                       names: dict[str, str]) -> Path:
    """The COCO files (one per split) or the CVAT XML of an exported dataset's images."""
    from .annotations import annotations_of
    from .formats import save_coco, save_cvat

    labels = list(run.class_names)
    source = f"run {run.run_id}, verified images"
    if format == "cvat":
        ann = annotations_of(images, boxes, labels, names, source=source, scores=False)
        return save_cvat(ann, out / "annotations.xml", name=f"musseltools run {run.run_id}")
    (out / "annotations").mkdir(exist_ok=True)
    for split in ("train", "val"):
        mine = images[[names[i].startswith(f"{split}/") for i in images["image_id"]]]
        files = {i: names[i].split("/", 1)[1] for i in mine["image_id"]}
        ann = annotations_of(mine, boxes[boxes["image_id"].isin(files)], labels, files, source=source, scores=False)
        save_coco(ann, out / "annotations" / f"instances_{split}.json")
    return out / "annotations"
