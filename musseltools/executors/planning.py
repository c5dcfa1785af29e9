"""Planning: which images a run processes, cut into commit units with deterministic keys, and run ids.

Resume is *planned minus committed*: the engine lists the images without a result and hands them
here; a unit's key comes from its image ids and the inference key, so a unit that is redone writes
the same part name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..models import InferenceSettings
from ..models.base import LEGACY_FAMILY

__all__ = ["ImageRef", "Unit", "UnitSummary", "make_units", "make_run_id", "sub_unit", "unit_key"]


@dataclass(frozen=True)
class ImageRef:
    """An image to process: its id, printable path, path to open, and scan-time error if any."""

    image_id: str
    path: str
    fspath: str | bytes
    error: str | None = None


@dataclass(frozen=True)
class Unit:
    """A commit unit: images whose results are committed together, under a deterministic key."""

    key: str
    images: tuple[ImageRef, ...]

    @property
    def size(self) -> int:
        return len(self.images)


@dataclass
class UnitSummary:
    """What committing a unit produced: image, failure and inference numbers, counts per category."""

    key: str
    n_images: int
    n_failed: int
    n_inferred: int
    counts: dict[str, int] = field(default_factory=dict)
    #: False for the smaller part committed when a unit was cancelled part-way (see :func:`sub_unit`).
    complete: bool = True
    #: Paths of the unit's images whose detections reached the cap (``max_det``).
    cap_hit: tuple[str, ...] = ()
    #: What ran the network in the process that committed the unit: ``torch``, ``onnxruntime`` or both (a
    #: graph that failed its check part-way); empty when it inferred nothing.
    runtimes: tuple[str, ...] = ()


def unit_key(inference_key: str, image_ids: Sequence[str]) -> str:
    """The deterministic key of a commit unit: from the inference key and its image ids (any order)."""
    digest = hashlib.sha256((inference_key + "\n" + "\n".join(sorted(image_ids))).encode())
    return digest.hexdigest()[:20]


def sub_unit(unit: Unit, image_ids: Sequence[str], inference_key: str) -> Unit:
    """The images of ``unit`` whose ids are given, as a unit of its own (its own deterministic key): what
    is committed when a run is cancelled part-way through a unit."""
    keep = set(image_ids)
    images = tuple(r for r in unit.images if r.image_id in keep)
    return Unit(key=unit_key(inference_key, [r.image_id for r in images]), images=images)


def make_units(refs: Sequence[ImageRef], inference_key: str, commit_every: int) -> list[Unit]:
    """Chunk images into commit units; a unit's key is derived from its image ids.

    >>> [u.key for u in make_units([ImageRef("a", "a.jpg", "a.jpg")], "k", 32)]
    ['571bc511d13998aa4301']
    """
    units = []
    for i in range(0, len(refs), commit_every):
        chunk = tuple(refs[i : i + commit_every])
        units.append(Unit(key=unit_key(inference_key, [r.image_id for r in chunk]), images=chunk))
    return units


def make_run_id(
    collection_identity: str,
    model_path: str,
    threshold: float | Mapping[str, float],
    settings: InferenceSettings,
    class_map: Mapping[str, str] | None = None,
    family: str = LEGACY_FAMILY,
    min_length_mm: float | None = None,
) -> str:
    """Runs are identified by what the researcher asks: collection, model file, class map, threshold, settings.

    The threshold is one number, or one per class or category (a mapping). The family enters the id only
    when it is not the ``ultralytics`` one, and the minimum shell length only when one is asked (ids of
    existing runs are kept).
    """
    t: Any = ({str(k): round(float(v), 6) for k, v in sorted(threshold.items())} if isinstance(threshold, Mapping)
              else round(float(threshold), 6))
    payload = {"collection": collection_identity, "model": model_path, "threshold": t,
               "settings": settings.identity()}
    if class_map:
        payload["class_map"] = dict(sorted(class_map.items()))
    if family != LEGACY_FAMILY:
        payload["family"] = family
    if min_length_mm:
        payload["min_length_mm"] = round(float(min_length_mm), 6)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
