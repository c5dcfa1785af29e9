"""Truth from the images a researcher verified by hand: :func:`verified_truth`.

An image marked verified (:meth:`musseltools.Run.verify`, the editor's "verified" mark, or a
``verify`` row of ``musseltools corrections import``) has a truth: its corrected detections at the
thresholds in use when it was marked (:func:`musseltools.corrections.review.verified_labels`).
``mt.evaluate(run, "verified")`` scores the model alone against it, so calibrated thresholds improve
as a researcher corrects.

Examples
--------
>>> ev = mt.evaluate(run, "verified")        # doctest: +SKIP
>>> ev.calibration                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import pandas as pd

from .truth import Truth, TruthError

if TYPE_CHECKING:  # pragma: no cover
    from ..runs.run import Run

__all__ = ["VERIFIED", "verified_truth"]

log = logging.getLogger(__name__)

#: The name that asks for the verified images as truth (``mt.evaluate(run, "verified")``).
VERIFIED = "verified"


def verified_truth(run: Run) -> Truth:
    """The verified images of a run as a :class:`Truth` with boxes in pixels.

    Raises
    ------
    TruthError
        No image of the run is marked verified.
    """
    from ..corrections.review import verified_labels

    images, boxes = verified_labels(run)
    if images.empty:
        raise TruthError(
            f"no image of run {run.run_id} is marked verified — expected images checked by hand — verify some in "
            "the editor (musseltools.jupyter.editor.CorrectionEditor), with run.verify(image), or by importing 'verify' "
            "rows (musseltools corrections import)"
        )
    root = (run.meta.get("collection", {}).get("source") or {}).get("root")

    def key(path: str) -> str:
        p = Path(path)
        if root:
            try:
                p = p.relative_to(root)
            except ValueError:
                pass
        return PurePosixPath(*p.with_suffix("").parts).as_posix()

    images = images.assign(key=images["path"].astype(str).map(key))
    dup = images["key"].duplicated()
    if dup.any():
        log.warning("verified images %s share a name with another verified image (e.g. a.jpg and a.png); they are "
                    "left out of the truth", images.loc[dup, "path"].tolist()[:5])
        images = images[~dup]
    keys = images.set_index("image_id")["key"]
    obj = boxes[boxes["image_id"].isin(keys.index)]
    objects = pd.DataFrame({
        "key": obj["image_id"].map(keys).to_numpy(), "class_id": obj["class_id"].astype("int64").to_numpy(),
        "class_name": obj["class_name"].astype(str).to_numpy(),
        **{c: obj[c].astype("float64").to_numpy() for c in ("x1", "y1", "x2", "y2")},
        "normalized": False, "corners": None,
    })
    img = pd.DataFrame({"key": images["key"].to_numpy(), "file": images["path"].astype(str).to_numpy(),
                        "width": images["width"].astype("float64").to_numpy(),
                        "height": images["height"].astype("float64").to_numpy()})
    names = dict(enumerate(run.class_names))
    return Truth(f"verified images of run {run.run_id}", VERIFIED, img.reset_index(drop=True),
                 objects.reset_index(drop=True), None, names)
