"""The one detections type of musseltools.

A :class:`Detections` holds what a model found in one image: boxes, confidences, class ids and one
polygon per detection (the box corners for detect models, the mask outline for segment models, the
rotated corners for OBB models). It is validated when it is built, so downstream code can trust it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from .thresholds import ThresholdLike, Thresholds

__all__ = ["Detections", "DETECTIONS_SCHEMA", "detection_ids", "DETECTION_ID_LENGTH"]

#: Hex digits of SHA-256 kept in a detection id (64 bits: no collision in any survey).
DETECTION_ID_LENGTH = 16

#: Arrow schema of the stored detections table (one row per detection).
DETECTIONS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("class_id", pa.int16()),
        ("class_name", pa.string()),
        ("confidence", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("polygon", pa.list_(pa.list_(pa.float32(), 2))),
    ]
)


def detection_ids(
    image_id: Iterable[str],
    inference_key: str,
    class_name: Iterable[str],
    xyxy: np.ndarray,
    confidence: Iterable[float],
) -> np.ndarray:
    """Stable ids of detections: the same detection gets the same id on any machine, in any run.

    The id of a detection is the first :data:`DETECTION_ID_LENGTH` hex digits of the SHA-256 of the
    UTF-8 text ``"{image_id}|{inference_key}|{class_name}|{x1}|{y1}|{x2}|{y2}"``, where the box corners
    are rounded to the nearest pixel (half to even, :func:`numpy.rint`) and written as integers. So it
    depends on the image's content (``image_id``), the model and inference settings (``inference_key``),
    the class and the box: not on file paths, parts, thresholds or the order results were stored in.
    Boxes identical after rounding, of one class in one image, are told apart by confidence: the most
    confident keeps the bare id, the next ones get ``-2``, ``-3``... (equal confidences keep their
    stored order, which is the model's).

    Parameters
    ----------
    image_id, class_name : sequences of str
        One entry per detection.
    inference_key : str
        The key of the results (model fingerprint and inference settings).
    xyxy : array (N, 4)
        Boxes in pixels.
    confidence : sequence of float

    Returns
    -------
    numpy.ndarray of str

    Examples
    --------
    >>> detection_ids(["img"], "key", ["live"], np.array([[1.2, 2, 30.6, 40]]), [0.9]).tolist()
    ['10c4829d92a53bac']
    """
    image_id = [str(v) for v in image_id]
    names = [str(v) for v in class_name]
    n = len(image_id)
    if not n:
        return np.array([], dtype=object)
    box = np.rint(np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)).astype(np.int64).tolist()
    base = [
        hashlib.sha256(f"{i}|{inference_key}|{c}|{b[0]}|{b[1]}|{b[2]}|{b[3]}".encode()).hexdigest()[:DETECTION_ID_LENGTH]
        for i, c, b in zip(image_id, names, box)
    ]
    ids = np.array(base, dtype=object)
    uniq, inverse, counts = np.unique(ids.astype(str), return_inverse=True, return_counts=True)
    if (counts > 1).any():  # identical boxes: suffix by descending confidence, ties in stored order
        conf = np.asarray(list(confidence), dtype=np.float64).reshape(-1)
        dup = np.flatnonzero(counts[inverse] > 1)
        order = dup[np.lexsort((dup, -conf[dup], inverse[dup]))]
        rank = 0
        for k, row in enumerate(order):
            rank = rank + 1 if k and inverse[order[k - 1]] == inverse[row] else 0
            if rank:
                ids[row] = f"{base[row]}-{rank + 1}"
    return ids


def _box_corners(xyxy: np.ndarray) -> list[np.ndarray]:
    x1, y1, x2, y2 = (xyxy[:, i] for i in range(4))
    corners = np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1), np.stack([x2, y2], 1), np.stack([x1, y2], 1)], 1)
    return [c.astype(np.float32) for c in corners]


@dataclass(frozen=True, eq=False)
class Detections:
    """Detections in one image, in that image's pixel coordinates.

    Parameters
    ----------
    xyxy : array (N, 4)
        Axis-aligned boxes ``x1, y1, x2, y2``.
    confidence : array (N,)
        Scores in [0, 1].
    class_id : array (N,)
        Integer class ids, keys of ``names``.
    polygons : sequence of arrays (K_i, 2)
        One outline per detection. Defaults to the four box corners.
    names : mapping of int to str
        Class names of the model.
    image_size : (width, height), optional
        Size of the image the detections belong to.

    Examples
    --------
    >>> d = Detections(xyxy=[[0, 0, 10, 5]], confidence=[0.9], class_id=[0], names={0: "live"})
    >>> len(d), d.polygons[0].tolist()
    (1, [[0.0, 0.0], [10.0, 0.0], [10.0, 5.0], [0.0, 5.0]])
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    polygons: Sequence[np.ndarray] | None = None
    names: Mapping[int, str] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        conf = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
        cls = np.asarray(self.class_id).reshape(-1)
        n = len(xyxy)
        if len(conf) != n or len(cls) != n:
            raise ValueError(
                f"Detections: xyxy has {n} rows but confidence has {len(conf)} and class_id {len(cls)}; "
                "they must have one entry per detection"
            )
        if n and (not np.all(np.isfinite(xyxy)) or np.any(xyxy[:, 2] < xyxy[:, 0]) or np.any(xyxy[:, 3] < xyxy[:, 1])):
            raise ValueError("Detections: boxes must be finite with x2 >= x1 and y2 >= y1")
        if n and (np.any(conf < 0) or np.any(conf > 1)):
            raise ValueError("Detections: confidence must lie in [0, 1]")
        if n and cls.size and not np.all(np.equal(np.mod(cls, 1), 0)):
            raise ValueError("Detections: class_id must be integers")
        cls = cls.astype(np.int16)
        if self.polygons is None:
            polys: list[np.ndarray] = _box_corners(xyxy) if n else []
        else:
            polys = [np.asarray(p, dtype=np.float32).reshape(-1, 2) for p in self.polygons]
            if len(polys) != n:
                raise ValueError(f"Detections: {len(polys)} polygons for {n} detections")
            # a segment mask can vanish at low resolution: fall back to the box outline
            polys = [p if len(p) >= 3 else c for p, c in zip(polys, _box_corners(xyxy))] if n else []
        names = {int(k): str(v) for k, v in dict(self.names).items()}
        missing = set(np.unique(cls).tolist()) - set(names) if names else set()
        if missing:
            raise ValueError(f"Detections: class ids {sorted(missing)} have no name in {names}")
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "confidence", conf)
        object.__setattr__(self, "class_id", cls)
        object.__setattr__(self, "polygons", tuple(polys))
        object.__setattr__(self, "names", names)
        if self.image_size is not None:
            object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def empty(cls, names: Mapping[int, str] | None = None, image_size: tuple[int, int] | None = None) -> Detections:
        """No detections."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int16), [], names or {},
                   image_size)

    @classmethod
    def from_ultralytics(cls, result: Any) -> Detections:
        """Build from one ``ultralytics.engine.results.Results`` (detect, segment or OBB)."""
        names = dict(result.names)
        size = (int(result.orig_shape[1]), int(result.orig_shape[0]))
        if getattr(result, "obb", None) is not None:
            obb = result.obb
            corners = obb.xyxyxyxy.cpu().numpy().reshape(-1, 4, 2)
            return cls(obb.xyxy.cpu().numpy(), obb.conf.cpu().numpy(), obb.cls.cpu().numpy(), list(corners), names,
                       size)
        boxes = result.boxes
        if boxes is None:
            return cls.empty(names, size)
        xyxy = boxes.xyxy.cpu().numpy()
        polygons = None
        if getattr(result, "masks", None) is not None:
            polygons = list(result.masks.xy)
        return cls(xyxy, boxes.conf.cpu().numpy(), boxes.cls.cpu().numpy(), polygons, names, size)

    @classmethod
    def concat(
        cls,
        parts: Sequence[Detections],
        names: Mapping[int, str] | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> Detections:
        """Join several detections of the same image (e.g. tiles mapped back to the image)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(names, image_size)
        return cls(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.confidence for p in parts]),
            np.concatenate([p.class_id for p in parts]),
            [poly for p in parts for poly in p.polygons],
            names if names is not None else parts[0].names,
            image_size,
        )

    # ------------------------------------------------------------------ operations
    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: Any) -> Detections:
        """Select detections with a boolean mask, an index array or a slice."""
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Detections(
            self.xyxy[idx], self.confidence[idx], self.class_id[idx], [self.polygons[i] for i in idx], self.names,
            self.image_size,
        )

    def above(self, threshold: ThresholdLike) -> Detections:
        """The detections that count at a threshold (one value, or one per class name; the rule of
        :mod:`musseltools.core.thresholds`)."""
        t = Thresholds.parse(threshold, classes=list(self.names.values()) or None)
        return self[t.keep(self.confidence, self.class_names)]

    @property
    def class_names(self) -> list[str]:
        """The class name of each detection."""
        return [self.names.get(int(c), str(int(c))) for c in self.class_id]

    def shifted(self, dx: float, dy: float) -> Detections:
        """The same detections moved by (dx, dy): maps a tile's detections into its image."""
        off = np.array([dx, dy, dx, dy], np.float32)
        return Detections(
            self.xyxy + off, self.confidence, self.class_id, [p + off[:2] for p in self.polygons], self.names,
            self.image_size,
        )

    def counts(self, threshold: ThresholdLike = 0.0) -> dict[str, int]:
        """Number of detections per class name at a threshold (every class of the model listed)."""
        kept = self.above(threshold)
        ids, n = np.unique(kept.class_id, return_counts=True)
        out = {name: 0 for name in self.names.values()}
        for i, k in zip(ids.tolist(), n.tolist()):
            out[self.names.get(i, str(i))] = out.get(self.names.get(i, str(i)), 0) + k
        return out

    def to_arrow(self, image_id: str, path: str) -> pa.Table:
        """The detections as rows of the stored detections table."""
        n = len(self)
        names = self.class_names
        polys = pa.array([p.tolist() for p in self.polygons], type=DETECTIONS_SCHEMA.field("polygon").type)
        return pa.table(
            {
                "image_id": pa.array([image_id] * n, pa.string()),
                "path": pa.array([path] * n, pa.string()),
                "class_id": pa.array(self.class_id, pa.int16()),
                "class_name": pa.array(names, pa.string()),
                "confidence": pa.array(self.confidence, pa.float32()),
                "x1": pa.array(self.xyxy[:, 0], pa.float32()),
                "y1": pa.array(self.xyxy[:, 1], pa.float32()),
                "x2": pa.array(self.xyxy[:, 2], pa.float32()),
                "y2": pa.array(self.xyxy[:, 3], pa.float32()),
                "polygon": polys,
            },
            schema=DETECTIONS_SCHEMA,
        )

    def __repr__(self) -> str:
        return f"Detections(n={len(self)}, classes={self.counts()})"
