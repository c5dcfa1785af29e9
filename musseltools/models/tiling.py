"""Tiled inference for large images: cut tiles at native resolution, batch them, merge the seams.

A 4000x3000 quadrat photograph shrunk to a 640-pixel model input turns a 30-pixel mussel into five
pixels, and the model misses it. :class:`TiledPredictor` cuts the image into overlapping tiles at
native resolution, runs them through the model in batches (tiles of one image share one shape, so
they batch), maps each tile's detections back into the image with
:meth:`~musseltools.core.detections.Detections.shifted`, and merges the duplicates that tile overlaps
create.

Tile geometry
    :func:`tile_grid` covers the image with tiles of the requested size overlapping by
    ``round(tile * overlap)`` pixels at least. The last tile of a row or column is shifted inward so
    that every tile has the full size when the image is larger than a tile; a side shorter than a
    tile is one tile of that side's length.

Merging across seams (default ``"edge"``, see :data:`MERGE_METHODS`)
    The model's own NMS already resolved duplicates *within* a tile, so (but for ``"nmm"``) only
    detections of *different, overlapping* tiles are compared, and only those of the same class. Detections are
    visited in decreasing confidence; each one not yet absorbed keeps its place and absorbs the
    lower-confidence detections of other tiles that match it:

    - ``"edge"``: a pair matches when its IoU is at least :data:`MERGE_IOU` (the same mussel seen
      whole by both tiles), or when one of the two boxes is *cut*, i.e. touches an inner edge of
      its tile (an edge that is not the image border), and the intersection over the smaller box
      (IoS) is at least :data:`MERGE_IOS` (the half that a neighbouring tile saw).
    - ``"ios"``: a pair matches when its IoS is at least :data:`MERGE_IOS` (SAHI's greedy NMM
      criterion, but never between detections of the same tile).
    - ``"nmm"``: IoS as ``"ios"``, between any two detections, those of one tile included, as
      SAHI's greedy NMM does: it also merges the partial boxes that the model's own NMS kept within
      a tile (an NMS matter, which whole-image inference shares: lower ``iou`` there).

    When the kept detection is itself cut, its outline is replaced by that of the best uncut
    detection it absorbed (the whole mussel as the neighbouring tile saw it), or by the union of
    the group when every member is cut (a mussel larger than the overlap). The kept confidence is
    the kept detection's own. Two halves of a mussel centred on the overlap band share the band
    only, so they are merged while the mussel is at most about three times as long as the overlap
    (IoS = 2 x overlap / (length + overlap) >= 0.5): 192 px for 320-px tiles overlapping by 0.2.

    ``"edge"`` is the default, chosen by count error (``benchmarks/tile_merge.py``: 12 generated
    4000x3000 quadrats, 44,732 mussels from sparse scatter to dense beds of overlapping shells, the demo
    detector at its card's thresholds, 320-px tiles, merges and NMS IoUs applied to the same tile
    detections). Summed absolute count error per image and class at NMS IoU 0.4: ``edge`` 1060,
    ``ios`` 1098, ``nmm`` and SAHI 1904 (the same rule: the same counts); on the dense beds 734, 772
    and 1559, where ``nmm`` fuses touching shells (750 mussels lost against 256). At NMS IoU 0.7 the
    model's own partial boxes dominate (``edge`` 6085, ``nmm`` 1755): the IoU belongs to the model
    and its card (the demo detector's says 0.4), the merge to the seams.

Exact threshold views
    Matching uses the original boxes and visits detections by confidence, so whether a detection
    survives depends only on the detections more confident than it: the merged detections stored
    down to the confidence floor, filtered at any threshold ``T``, are exactly what merging only the
    detections at or above ``T`` would keep (counts are exact at every threshold). Merging is done
    once, at the floor, and never depends on the threshold.

Streams
    On a CPU where the model runs on one torch thread (a 2-core machine in one process: one core is left
    to decoding, which a tiled image hardly needs), tile batches run on several copies of the model at
    once, one per core (:func:`~musseltools.models.tile_streams`; torch releases the GIL). Their
    detections are added in tile order, so the result is exactly that of one copy. One 4000x3000
    quadrat, 192 tiles of 320 px, demo model, 2 cores: 2.6 s with two streams, 5.2 s with one, 2.8 s
    with one stream on two torch threads (SAHI with its default two threads: 3.9 s).

``tile="auto"``
    Images whose longest side exceeds :data:`AUTO_TILE_FACTOR` times the model input size are cut
    into tiles of the model input size (native resolution, no rescaling); others run whole.
"""

from __future__ import annotations

import logging
import math
import queue
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..core.detections import Detections
from ..core.options import OPTIONS, TILE_MERGE_METHODS
from .base import InferenceSettings, Predictor, Prepared

__all__ = [
    "AUTO_TILE_FACTOR",
    "MERGE_IOS",
    "MERGE_IOU",
    "MERGE_METHODS",
    "DEFAULT_MERGE",
    "Tile",
    "TiledPredictor",
    "merge_tiles",
    "tile_grid",
    "tile_origins",
]

log = logging.getLogger(__name__)

#: ``tile="auto"`` tiles an image when its longest side exceeds this multiple of the model input size.
AUTO_TILE_FACTOR = 2.0
#: Ways of merging duplicates across tile seams (see the module docstring).
MERGE_METHODS = TILE_MERGE_METHODS
#: The merge method used when neither the run nor the weights' card names one (``tile_merge``).
DEFAULT_MERGE = OPTIONS.tile_merge.fallback
#: Two detections of different tiles with at least this IoU are the same object seen twice.
MERGE_IOU = 0.5
#: Minimum intersection over the smaller box for a cut detection to be merged into another.
MERGE_IOS = 0.5


class Tile(NamedTuple):
    """A tile: pixel bounds ``[x0, x1) x [y0, y1)`` in its image."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


# ---------------------------------------------------------------------------------------------- geometry
def tile_origins(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` along a side of ``length`` pixels.

    Neighbouring tiles overlap by at least ``round(tile * overlap)`` pixels; the last tile is shifted
    inward so that it ends at the border. A side no longer than a tile gets one tile at 0.

    Examples
    --------
    >>> tile_origins(1000, 320, 0.2)
    [0, 256, 512, 680]
    >>> tile_origins(200, 320, 0.2)
    [0]
    """
    if tile < 1 or length < 1:
        raise ValueError(f"tile and length must be positive, got tile={tile}, length={length}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap!r}")
    if length <= tile:
        return [0]
    step = max(1, tile - round(tile * overlap))
    n = math.ceil((length - tile) / step) + 1
    return [min(i * step, length - tile) for i in range(n)]


def tile_grid(width: int, height: int, tile: int, overlap: float) -> list[Tile]:
    """Tiles covering a ``width`` x ``height`` image, row by row.

    Every tile is ``tile`` x ``tile`` pixels when the image is larger than a tile in both directions;
    a side shorter than a tile gives tiles of that side's length (an image smaller than a tile is one
    tile, the whole image).

    Examples
    --------
    >>> tiles = tile_grid(1000, 600, 320, 0.2)
    >>> len(tiles), tiles[0], tiles[-1]
    (12, Tile(x0=0, y0=0, x1=320, y1=320), Tile(x0=680, y0=280, x1=1000, y1=600))
    >>> tile_grid(100, 80, 320, 0.2)
    [Tile(x0=0, y0=0, x1=100, y1=80)]
    """
    tw, th = min(tile, width), min(tile, height)
    return [
        Tile(x, y, x + tw, y + th)
        for y in tile_origins(height, tile, overlap)
        for x in tile_origins(width, tile, overlap)
    ]


def _overlapping_pairs(tiles: Sequence[Tile]) -> list[tuple[int, int]]:
    """Index pairs (a < b) of tiles whose areas intersect."""
    pairs = []
    for a in range(len(tiles)):
        ta = tiles[a]
        for b in range(a + 1, len(tiles)):
            tb = tiles[b]
            if tb.x0 < ta.x1 and ta.x0 < tb.x1 and tb.y0 < ta.y1 and ta.y0 < tb.y1:
                pairs.append((a, b))
    return pairs


def _cut_flags(xyxy: np.ndarray, t: Tile, width: int, height: int, margin: float) -> np.ndarray:
    """Which boxes (in image coordinates) touch an inner edge of tile ``t`` (not the image border)."""
    cut = np.zeros(len(xyxy), bool)
    if t.x0 > 0:
        cut |= xyxy[:, 0] <= t.x0 + margin
    if t.x1 < width:
        cut |= xyxy[:, 2] >= t.x1 - margin
    if t.y0 > 0:
        cut |= xyxy[:, 1] <= t.y0 + margin
    if t.y1 < height:
        cut |= xyxy[:, 3] >= t.y1 - margin
    return cut


# ---------------------------------------------------------------------------------------------- merging
def _pair_metrics(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection-over-smaller of every box of ``a`` with every box of ``b``."""
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    eps = 1e-9
    iou = inter / np.maximum(area_a + area_b - inter, eps)
    ios = inter / np.maximum(np.minimum(area_a, area_b), eps)
    return iou, ios


@dataclass
class _TileDetections:
    """Detections of one image gathered tile by tile, in image coordinates."""

    width: int
    height: int
    tiles: list[Tile]
    margin: float
    parts: list[Detections] = field(default_factory=list)
    tile_index: list[np.ndarray] = field(default_factory=list)
    cut: list[np.ndarray] = field(default_factory=list)

    def add(self, index: int, det: Detections) -> None:
        t = self.tiles[index]
        shifted = det.shifted(t.x0, t.y0)
        self.parts.append(shifted)
        self.tile_index.append(np.full(len(det), index, np.int32))
        self.cut.append(_cut_flags(shifted.xyxy, t, self.width, self.height, self.margin))


def _reaching_into(xyxy: np.ndarray, idx: np.ndarray, area: Tile) -> np.ndarray:
    """The indices ``idx`` whose boxes overlap ``area`` (only those can match a detection of the other tile)."""
    bx = xyxy[idx]
    return idx[(bx[:, 0] < area.x1) & (bx[:, 2] > area.x0) & (bx[:, 1] < area.y1) & (bx[:, 3] > area.y0)]


def _matches(det: Detections, order: np.ndarray, tile_index: np.ndarray, cut: np.ndarray, tiles: Sequence[Tile],
             method: str, iou: float, ios: float) -> list[list[int]]:
    """For each detection, the detections of lower confidence rank that match it (see the module docstring)."""
    n = len(det)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    members: list[list[int]] = [[] for _ in range(n)]
    by_tile = {int(t): np.flatnonzero(tile_index == t) for t in np.unique(tile_index)}
    pairs = _overlapping_pairs(tiles)
    if method == "nmm":  # also within a tile, as SAHI's greedy NMM
        pairs = [(t, t) for t in range(len(tiles))] + pairs
    for a, b in pairs:
        ia, ib = by_tile.get(a), by_tile.get(b)
        if ia is None or ib is None:
            continue
        ta, tb = tiles[a], tiles[b]
        shared = Tile(max(ta.x0, tb.x0), max(ta.y0, tb.y0), min(ta.x1, tb.x1), min(ta.y1, tb.y1))
        ia, ib = _reaching_into(det.xyxy, ia, shared), _reaching_into(det.xyxy, ib, shared)
        if not len(ia) or not len(ib):
            continue
        m_iou, m_ios = _pair_metrics(det.xyxy[ia], det.xyxy[ib])
        same = det.class_id[ia][:, None] == det.class_id[ib][None, :]
        if method in ("ios", "nmm"):
            match = m_ios >= ios
        else:
            either_cut = cut[ia][:, None] | cut[ib][None, :]
            match = (m_iou >= iou) | (either_cut & (m_ios >= ios))
        for i, j in zip(*np.nonzero(match & same)):
            gi, gj = int(ia[i]), int(ib[j])
            if gi == gj:
                continue
            if rank[gi] < rank[gj]:
                members[gi].append(gj)
            else:
                members[gj].append(gi)
    return members


def _kept_outlines(det: Detections, keep: list[int], groups: list[list[int]], tile_index: np.ndarray,
                   cut: np.ndarray, task: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Boxes and outlines of the kept detections: a cut one takes the whole one seen next door, else the union."""
    xyxy = det.xyxy[keep].copy()
    polygons = [det.polygons[i] for i in keep]
    for k, (i, group) in enumerate(zip(keep, groups)):
        if not group or not cut[i]:
            continue
        whole = [j for j in group if not cut[j] and tile_index[j] != tile_index[i]]  # seen whole next door
        if whole:
            best = max(whole, key=lambda j: (det.confidence[j], -j))
            xyxy[k] = det.xyxy[best]
            polygons[k] = det.polygons[best]
        else:
            idx = [i, *group]
            bx = det.xyxy[idx]
            xyxy[k] = [bx[:, 0].min(), bx[:, 1].min(), bx[:, 2].max(), bx[:, 3].max()]
            polygons[k] = _join_outlines([det.polygons[j] for j in idx], xyxy[k], task)
    return xyxy, polygons


def merge_tiles(
    det: Detections,
    tile_index: np.ndarray,
    cut: np.ndarray,
    tiles: Sequence[Tile],
    *,
    method: str = DEFAULT_MERGE,
    iou: float = MERGE_IOU,
    ios: float = MERGE_IOS,
    task: str = "detect",
) -> Detections:
    """Merge the duplicates that overlapping tiles produced, class by class.

    Parameters
    ----------
    det : Detections
        All tiles' detections, already in image coordinates.
    tile_index : array (N,)
        The tile each detection came from (index into ``tiles``).
    cut : array (N,) of bool
        Whether each detection touches an inner edge of its tile.
    tiles : sequence of Tile
    method : {"edge", "ios", "nmm"}
        The matching rule (see the module docstring).
    iou, ios : float
        Matching thresholds.
    task : str
        ``detect``, ``segment`` or ``obb``: how outlines are joined when every member of a group is cut.

    Returns
    -------
    Detections
        One detection per object, sorted by decreasing confidence.

    Examples
    --------
    >>> tiles = [Tile(0, 0, 100, 100), Tile(80, 0, 180, 100)]
    >>> d = Detections([[70, 10, 100, 30], [70, 10, 95, 30]], [0.9, 0.8], [0, 0], names={0: "live"})
    >>> len(merge_tiles(d, np.array([0, 1]), np.array([True, False]), tiles))
    1
    """
    if method not in MERGE_METHODS:
        raise ValueError(f"unknown tile merge method {method!r} — expected one of {', '.join(MERGE_METHODS)}")
    n = len(det)
    order = np.argsort(-det.confidence, kind="stable")
    if n == 0:
        return det
    tile_index = np.asarray(tile_index)
    cut = np.asarray(cut, bool)
    members = _matches(det, order, tile_index, cut, tiles, method, iou, ios)
    absorbed = np.zeros(n, bool)
    keep: list[int] = []
    groups: list[list[int]] = []
    for i in order.tolist():
        if absorbed[i]:
            continue
        group = [j for j in members[i] if not absorbed[j]]
        absorbed[group] = True
        keep.append(i)
        groups.append(group)
    xyxy, polygons = _kept_outlines(det, keep, groups, tile_index, cut, task)
    return Detections(xyxy, det.confidence[keep], det.class_id[keep], polygons, det.names, det.image_size)


def _join_outlines(polys: Sequence[np.ndarray], box: np.ndarray, task: str) -> np.ndarray:
    """One outline for pieces of one object: box corners (detect), rotated rectangle (obb), hull (segment)."""
    if task == "detect":
        x1, y1, x2, y2 = (float(v) for v in box)
        return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)
    import cv2

    pts = np.concatenate([np.asarray(p, np.float32).reshape(-1, 2) for p in polys])
    if task == "obb":
        return cv2.boxPoints(cv2.minAreaRect(pts)).astype(np.float32)
    return cv2.convexHull(pts).reshape(-1, 2).astype(np.float32)


# ---------------------------------------------------------------------------------------------- predictor
class TiledPredictor:
    """Tiled inference around any :class:`~musseltools.models.base.Predictor`: native-resolution tiles,
    batched, seams merged.

    ``prepare`` (run in the decode thread) only decides whether an image is tiled: an image that is
    run whole is prepared there by the inner predictor; a tiled image is passed on as it is
    (``tensor=None``). ``predict`` streams the tiles of a batch of images through the inner predictor
    ``batch_size`` tiles at a time, so that neither all tiles nor all raw predictions of a large image
    are held at once, and returns one merged :class:`Detections` per image. Only the inner predictor's
    public methods are used, so tiling works for every model family.

    Parameters
    ----------
    inner : Predictor
        Runs the model on whole images and on tiles (the same inference settings).
    settings : InferenceSettings
        ``settings.tile`` is the tile size in pixels or ``"auto"``; ``settings.tile_merge`` says how
        duplicates across seams are merged (``"edge"``, ``"ios"`` or ``"nmm"``).

    Attributes
    ----------
    batch_size : int or None
        Tiles per forward pass. Set by :meth:`measure_batch_size` or by the engine (the run's model
        batch size); ``None`` uses the number of images handed to :meth:`predict`.

    Examples
    --------
    >>> from musseltools.models import InferenceSettings, load_model, make_predictor      # doctest: +SKIP
    >>> settings = InferenceSettings(imgsz=640, tile=640, tile_overlap=0.2)
    >>> p = make_predictor(load_model("data/models/mussel-demo.pt"), settings)           # doctest: +SKIP
    >>> p.batch_size = 8                                                                  # doctest: +SKIP
    >>> [dets] = p.predict([p.prepare(cv2.imread("quadrat.jpg"))])                        # doctest: +SKIP
    """

    def __init__(self, inner: Predictor, settings: InferenceSettings, *, replicas: Sequence[Predictor] = ()) -> None:
        if settings.tile is None:
            raise ValueError("TiledPredictor needs settings.tile (a size in pixels or 'auto'); got None")
        self.settings = settings
        self.merge = settings.tile_merge
        self.inner = inner
        self.streams = [inner, *replicas]
        self.device = inner.device
        self.names = inner.names
        self.task = inner.task
        self.batch_size: int | None = None

    # -- geometry -------------------------------------------------------------------------------------
    @property
    def tile_size(self) -> int:
        """Tile side in pixels (the model input size for ``tile="auto"``)."""
        t = self.settings.tile
        return self.settings.imgsz if t == "auto" else int(t)  # type: ignore[arg-type]

    def tiles_for(self, width: int, height: int) -> list[Tile]:
        """The tiles an image of this size is cut into (one tile: the image runs whole)."""
        if self.settings.tile == "auto" and max(width, height) <= AUTO_TILE_FACTOR * self.settings.imgsz:
            return [Tile(0, 0, width, height)]
        return tile_grid(width, height, self.tile_size, self.settings.tile_overlap)

    # -- the Predictor protocol -----------------------------------------------------------------------
    def prepare(self, image: np.ndarray) -> Prepared:
        """Letterbox an image that runs whole; pass a tiled one on untouched (cheap, thread-safe)."""
        h, w = image.shape[:2]
        if len(self.tiles_for(w, h)) == 1:
            return self.inner.prepare(image)
        return Prepared(image=image, tensor=None)

    def predict(self, batch: Sequence[Prepared]) -> list[Detections]:
        """One merged :class:`Detections` per image, down to the confidence floor, in input order."""
        out: list[Detections | None] = [None] * len(batch)
        whole = [i for i, p in enumerate(batch) if p.tensor is not None]
        if whole:
            for i, d in zip(whole, self.inner.predict([batch[i] for i in whole])):
                out[i] = d
        tiled = [i for i, p in enumerate(batch) if p.tensor is None]
        if tiled:
            size = self.batch_size or len(batch)
            for i, d in zip(tiled, self._predict_tiled([batch[i].image for i in tiled], size)):
                out[i] = d
        return out  # type: ignore[return-value]

    @staticmethod
    def _jobs(gathered: list[_TileDetections]) -> Iterator[tuple[int, int]]:
        """(image, tile) pairs in order, generated lazily: tiles are cut only when their batch runs."""
        for k, g in enumerate(gathered):
            for t in range(len(g.tiles)):
                yield k, t

    def _predict_tiled(self, images: Sequence[np.ndarray], batch_size: int) -> list[Detections]:
        margin = max(2.0, self.tile_size / 64)
        gathered = []
        for image in images:
            h, w = image.shape[:2]
            gathered.append(_TileDetections(w, h, self.tiles_for(w, h), margin))
        jobs = list(self._jobs(gathered))
        chunks = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
        if len(self.streams) == 1:
            for chunk in chunks:
                self._add(gathered, chunk, self._run_chunk(self.inner, images, gathered, chunk))
        else:
            self._run_streams(images, gathered, chunks)
        log.debug("%d tiles of %d images in batches of %d, %d at once", len(jobs), len(images), batch_size,
                  len(self.streams))
        return [self._merge(g) for g in gathered]

    def _run_streams(self, images: Sequence[np.ndarray], gathered: list[_TileDetections],
                     chunks: list[list[tuple[int, int]]]) -> None:
        """Run the chunks on every stream at once (each its own model copy; torch releases the GIL), and add
        their detections in chunk order, so that merging sees exactly what one stream would give."""
        free: queue.SimpleQueue[Predictor] = queue.SimpleQueue()
        for p in self.streams:
            free.put(p)

        def run(chunk: list[tuple[int, int]]) -> list[Detections]:
            p = free.get()
            try:
                return self._run_chunk(p, images, gathered, chunk)
            finally:
                free.put(p)

        with ThreadPoolExecutor(len(self.streams), thread_name_prefix="musseltools-tiles") as pool:
            for chunk, dets in zip(chunks, pool.map(run, chunks)):
                self._add(gathered, chunk, dets)

    @staticmethod
    def _run_chunk(predictor: Predictor, images: Sequence[np.ndarray], gathered: list[_TileDetections],
                   chunk: list[tuple[int, int]]) -> list[Detections]:
        prepared = []
        for k, t in chunk:
            tile = gathered[k].tiles[t]
            crop = np.ascontiguousarray(images[k][tile.y0 : tile.y1, tile.x0 : tile.x1])
            prepared.append(predictor.prepare(crop))
        return predictor.predict(prepared)

    @staticmethod
    def _add(gathered: list[_TileDetections], chunk: list[tuple[int, int]], dets: list[Detections]) -> None:
        for (k, t), det in zip(chunk, dets):
            gathered[k].add(t, det)

    def _merge(self, g: _TileDetections) -> Detections:
        size = (g.width, g.height)
        all_dets = Detections.concat(g.parts, names=self.names, image_size=size)
        if not len(all_dets):
            return all_dets
        parts = [p for p in g.parts if len(p)]
        tile_index = np.concatenate([ti for ti, p in zip(g.tile_index, g.parts) if len(p)]) if parts else np.zeros(0)
        cut = np.concatenate([c for c, p in zip(g.cut, g.parts) if len(p)]) if parts else np.zeros(0, bool)
        merged = merge_tiles(all_dets, tile_index, cut, g.tiles, method=self.merge, task=self.task)
        if len(merged) > self.settings.max_det:  # the cap applies to the image, like whole-image inference
            merged = merged[np.arange(self.settings.max_det)]
        log.debug("%d tile detections merged into %d", len(all_dets), len(merged))
        return merged

    # -- batch size -----------------------------------------------------------------------------------
    def images_per_call(self, batch_size: int) -> int:
        """Images handed to :meth:`predict` at once: the batch size, but at most 2 (this predictor batches
        *tiles*; holding a batch of 8000x6000 photos would cost gigabytes)."""
        return min(batch_size, 2)

    def measure_batch_size(self, sample: Prepared) -> int:
        """The fastest model batch size: of tiles for a tiled image, of images for one run whole.

        The result is also kept as :attr:`batch_size` when the sample is tiled.
        """
        if sample.tensor is not None:
            return self.inner.measure_batch_size(sample)
        h, w = sample.image.shape[:2]
        tiles = self.tiles_for(w, h)
        t = tiles[len(tiles) // 2]
        crop = np.ascontiguousarray(sample.image[t.y0 : t.y1, t.x0 : t.x1])
        self.batch_size = self.inner.measure_batch_size(self.inner.prepare(crop))
        return self.batch_size
