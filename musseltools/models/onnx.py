"""The ONNX Runtime backend: the same predictors, with the network run by ONNX Runtime on a CPU.

``backend`` (a run option, :mod:`musseltools.core.options`) chooses what runs the network:

- ``torch`` (the default): the family's torch model, as always;
- ``onnx``: an ONNX graph derived from the weights, run by ONNX Runtime; pre- and post-processing (letterbox,
  NMS, masks) stay the family's own, so only the forward pass changes; but for Ultralytics detect models,
  whose letterbox and NMS run in numpy (:mod:`~musseltools.models.onnx_detect`, checked as such), so that a
  process with a checked graph never imports torch (:mod:`~musseltools.models.onnx_lean`);
- ``auto``: ``onnx`` on a CPU when ``onnxruntime`` is installed, else torch (always torch on a GPU: the CPU
  wheel of ``onnxruntime`` has no GPU provider).

:func:`with_backend` wraps a family's predictor in an :class:`OnnxPredictor`, which on its first batch:

Export, cached by content
    The graph is exported from the weights in the process that needs it, under a file lock, into a cache
    folder (the store's ``cache/onnx``, else the machine's), named by :func:`graph_key`: the weights'
    SHA-256, the family, imgsz, the opset, the settings baked into the graph (Faster R-CNN: floor, IoU, cap)
    and the versions of the libraries involved. It is written atomically and recorded with its SHA-256;
    a graph whose bytes do not match (a damaged file) is exported again, never used. YOLO graphs come from
    Ultralytics' exporter, with a dynamic batch and image size (they take the very tensor the torch
    model takes; measured on 2 cores, interleaved, demo model at 320 px: a static square 1x3x320x320
    graph 0.85x the dynamic one's forwards/s at 1 and 2 threads, a static graph of the exact 256x320
    input 1.12x and 0.95x, within the noise and one graph per input shape); Faster R-CNN graphs from
    ``torch.onnx.export`` (opset 11+), one image per call.

A check before use
    The first images a process infers with a graph that has no verdict yet run through both the graph and
    torch (:data:`CHECK_IMAGES` images). The graph passes when, per class, the counts at every threshold
    of :data:`CHECK_THRESHOLDS` are equal but for detections within 1e-3 of that threshold, and every
    detection above the floor has a match in the other set with its box corners within 0.5 px (OBB: the
    rotated box's four corners; segment: also its mask outline, within 1.5 mask pixels vertex to outline or
    overlapping by IoU 0.9, see :func:`compare_detections`). The verdict is kept beside the graph. A graph that fails is not used: the run logs why and goes on with
    torch. So does a family or variant that cannot be exported (one warning line, the reason).

Threads: one ONNX Runtime session per graph in a process (:data:`SESSIONS`, like the worker's model
cache), with ``intra_op_num_threads`` = the predictor's torch threads (a worker's share of the cores).

Determinism: ONNX Runtime on CPU with a fixed thread count and batch 1 gives bit-identical results from
run to run (tested); between torch and ONNX Runtime, results agree within the contract's tolerance
(docs/what-survives-what.md), and a run records which backend inferred it (``run.meta["inferred_with"]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._failpoints import armed
from ..core.detections import Detections
from .base import LoadedModel, ModelInfo, Predictor, Prepared, fastest_batch_size
from .onnx_detect import POSTPROCESS, LeanDetectPredictor, geometry_of

__all__ = ["OPSET", "TASKS", "CHECK_IMAGES", "CHECK_THRESHOLDS", "SESSIONS", "OnnxPredictor", "backend_in_use",
           "compare_detections", "default_cache", "graph_key", "lean_applies", "read_record", "runtimes_used",
           "session", "valid_graph", "with_backend"]

log = logging.getLogger(__name__)

#: The ONNX opset of exported graphs (torchvision's detection models need 11 or later).
OPSET = 17
#: Images of a run checked on both backends before a graph without a verdict is trusted.
CHECK_IMAGES = 4
#: Thresholds at which the check compares counts: any threshold a run may later be tuned to lies among them.
CHECK_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
#: The tasks whose graphs are used: all that musseltools stores. The graph replaces the forward pass only:
#: NMS (rotated for OBB) and the masks from the graph's coefficients and prototypes stay Ultralytics' own.
TASKS = ("detect", "segment", "obb")
#: The check's tolerances: confidences near a threshold may fall either side; box corners in pixels.
CONF_TOL = 1e-3
BOX_TOL = 0.5
#: Segment outlines agree within this many pixels of the mask (vertex to outline), or when they overlap by
#: :data:`OUTLINE_IOU` (intersection over union).
OUTLINE_TOL = 1.5
OUTLINE_IOU = 0.9
#: This process's ONNX Runtime sessions by (graph path, threads): one per graph, shared by tile streams.
SESSIONS: dict[tuple[str, int], Any] = {}
_SESSIONS_LOCK = threading.Lock()
_LIBRARIES = ("torch", "torchvision", "ultralytics", "onnx", "onnxslim", "onnxruntime")


def backend_in_use(backend: str, device: str) -> str:
    """``onnx`` when the backend setting asks for ONNX Runtime on this device, else ``torch``.

    >>> backend_in_use("auto", "cuda:0"), backend_in_use("torch", "cpu")
    ('torch', 'torch')
    """
    if backend == "torch" or not device.startswith("cpu"):
        return "torch"
    if backend == "auto":
        try:
            importlib.metadata.version("onnxruntime")
        except importlib.metadata.PackageNotFoundError:
            return "torch"
    return "onnx"


def _versions() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def lean_applies(info: ModelInfo) -> bool:
    """Whether a model's graph runs with the torch-free pre- and post-processing
    (:mod:`~musseltools.models.onnx_detect`): Ultralytics detect models."""
    return info.family == "ultralytics" and info.task == "detect"


def graph_key(model: LoadedModel | ModelInfo, settings: Any) -> str:
    """The name of a model's graph in the cache: what the exported graph depends on, hashed. A detect
    model's includes the version of the torch-free post-processing that its check proves
    (:data:`~musseltools.models.onnx_detect.POSTPROCESS`): a graph checked with Ultralytics' own, by older
    code, is not taken for one checked with it."""
    info = model.info if isinstance(model, LoadedModel) else model
    payload = {"weights": info.fingerprint, "family": info.family, "imgsz": settings.imgsz,
               "opset": OPSET, "versions": _versions(), "dynamic": True}
    if info.family != "ultralytics":  # NMS, the floor and the cap are inside a Faster R-CNN graph
        payload.update(conf_floor=settings.conf_floor, iou=settings.iou, max_det=settings.max_det)
    if lean_applies(info):
        payload["postprocess"] = POSTPROCESS
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------- the cache
def _file_lock(path: Path) -> Any:
    from filelock import FileLock

    return FileLock(str(path))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_record(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(path.read_text())
        if isinstance(record, dict):
            return record
    return {}


def valid_graph(graph: Path, record: dict[str, Any]) -> bool:
    """The graph's bytes are those recorded when it was exported (a damaged or half-copied file is not)."""
    try:
        return graph.is_file() and record.get("sha256") == _sha256(graph)
    except OSError:
        return False


def _export(predictor: Any, graph: Path) -> None:
    """Export ``predictor``'s network to ``graph`` (atomically: the file appears whole or not at all)."""
    if armed("onnx-export-fails"):
        raise RuntimeError("export refused by the onnx-export-fails failpoint")
    missing = [n for n in ("onnx", "onnxslim") if importlib.util.find_spec(n) is None]
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} not installed: the graph is exported with them — "
                           "pip install 'musseltools[onnx]'")
    with tempfile.TemporaryDirectory(dir=graph.parent, prefix=".export-") as tmp:
        if hasattr(predictor, "export_onnx"):
            out = predictor.export_onnx(Path(tmp), OPSET)
        elif hasattr(predictor, "net"):  # a torch module taking a list of image tensors (Faster R-CNN)
            out = _export_torch_detector(predictor, Path(tmp))
        else:
            raise RuntimeError(f"{type(predictor).__name__} has no ONNX export")
        os.replace(out, graph)  # the same file system: the graph appears whole

def _export_torch_detector(predictor: Any, folder: Path) -> Path:
    """torchvision's ONNX export of a detection model (its transform and NMS inside the graph)."""
    import warnings

    import torch

    out = folder / "graph.onnx"
    side = int(predictor.settings.imgsz)
    dummy = [torch.rand(3, side, side * 4 // 3)]
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(predictor.net.cpu(), (dummy,), str(out), opset_version=OPSET, dynamo=False,
                          input_names=["images"], output_names=["boxes", "labels", "scores"],
                          dynamic_axes={"images": [1, 2], "boxes": [0], "labels": [0], "scores": [0]})
    return out


def _torch_detector_runner(session: Any) -> Any:
    """A stand-in for a torchvision detector's forward: a list of images in, a list of result dicts out."""
    import torch

    def run(images: Sequence[Any]) -> list[dict[str, Any]]:
        out = []
        for image in images:
            boxes, labels, scores = session.run(None, {"images": image.cpu().numpy()})
            out.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                        "scores": torch.from_numpy(scores)})
        return out

    return run


def session(graph: Path, threads: int) -> Any:
    """This process's ONNX Runtime session of ``graph`` with ``threads`` intra-op threads (:data:`SESSIONS`);
    under the ``onnx-perturb`` failpoint, a stand-in whose boxes come out 2 px off (:func:`_perturbed`)."""
    import onnxruntime as ort

    key = (str(graph), threads)
    with _SESSIONS_LOCK:
        if key not in SESSIONS:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            if {k[0] for k in SESSIONS} - {str(graph)}:
                SESSIONS.clear()  # one model per worker process: a new run's graph replaces the last
            SESSIONS[key] = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        return _perturbed(SESSIONS[key]) if armed("onnx-perturb") else SESSIONS[key]


# ---------------------------------------------------------------------------------------------- the check
def _corner_gap(p: np.ndarray, q: np.ndarray) -> float:
    """The largest distance between paired corners of two rotated boxes, paired as the rectangles' corners
    (the same rectangle listed from another corner, or the other way round, is 0 px away)."""
    return min(float(np.abs(np.roll(r, k, axis=0) - p).max()) for r in (q, q[::-1]) for k in range(len(q)))


def _nearest(one: Detections, other: Detections, rotated: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For each detection of ``one``: the index of the nearest box of its class in ``other`` (-1: none) and
    the largest corner distance to it (inf: none); ``rotated``: the rotated boxes' corners, not the boxes'."""
    index, gap = np.full(len(one), -1), np.full(len(one), np.inf)
    for i in range(len(one)):
        same = np.flatnonzero(other.class_id == one.class_id[i])
        if len(same):
            d = (np.array([_corner_gap(one.polygons[i], other.polygons[j]) for j in same]) if rotated
                 else np.abs(other.xyxy[same] - one.xyxy[i]).max(axis=1))
            index[i], gap[i] = same[d.argmin()], d.min()
    return index, gap


def _polygon_iou(p: np.ndarray, qs: Sequence[np.ndarray]) -> np.ndarray:
    """Intersection over union of the outline ``p`` with each of ``qs`` (as areas; a self-crossing outline
    is taken as the area it encloses)."""
    import shapely

    a = shapely.make_valid(shapely.Polygon(p))
    bs = shapely.make_valid(shapely.polygons(list(qs))) if len(qs) else np.zeros(0, object)
    inter = shapely.area(shapely.intersection(a, bs))
    return inter / np.maximum(a.area + shapely.area(bs) - inter, 1e-9)


def _outlines_agree(p: np.ndarray, q: np.ndarray, mask_px: float) -> bool:
    """Two mask outlines of one detection agree: every vertex of each lies within :data:`OUTLINE_TOL` mask
    pixels of the other outline (mask edge pixels flip with the last bits of the mask's logits), or the
    outlines overlap by :data:`OUTLINE_IOU` (a one-pixel spur or gap of the mask appears in one only)."""
    import shapely

    if len(p) < 3 or len(q) < 3:
        return len(p) == len(q) and np.allclose(p, q, atol=OUTLINE_TOL * mask_px)
    if _polygon_iou(p, [q])[0] >= OUTLINE_IOU:
        return True
    return bool(shapely.hausdorff_distance(shapely.LinearRing(p), shapely.LinearRing(q)) <= OUTLINE_TOL * mask_px)


def _outline_mismatch(a: Detections, b: Detections, floor: float, box_tol: float, mask_px: float) -> str | None:
    """Why a segment's outline in one set has no counterpart in the other, else None. Its counterparts are
    the other set's detections of its class with the box within ``box_tol`` and the confidence within 1e-3;
    one must agree (:func:`_outlines_agree`). A saturated detection (confidence within 1e-3 of 1) is
    forgiven: NMS keeps one of several anchors tied at 1.0 over one box, each with its own mask."""
    for one, other in ((a, b), (b, a)):
        for i in np.flatnonzero((one.confidence >= floor + CONF_TOL) & (one.confidence < 1 - CONF_TOL)):
            twins = np.flatnonzero((other.class_id == one.class_id[i])
                                   & (np.abs(other.xyxy - one.xyxy[i]).max(axis=1) <= box_tol)
                                   & (np.abs(other.confidence - one.confidence[i]) <= CONF_TOL))
            if len(twins) and not any(_outlines_agree(one.polygons[i], other.polygons[j], mask_px) for j in twins):
                return (f"the outline of a class {one.class_id[i]} detection at {one.xyxy[i].round(1).tolist()} is "
                        f"over {OUTLINE_TOL:g} mask px from the other's, and overlaps it by under {OUTLINE_IOU:g}")
    return None


def _tied_rival(one: Detections, i: int, other: Detections, iou: float | None, rotated: bool = False) -> bool:
    """Whether ``other`` keeps, instead of ``one``'s detection ``i``, a box of its class that NMS would let
    suppress it (overlap over ``iou``) with a confidence within 1e-3: a tie NMS broke the other way (a
    saturated tile gives dozens of boxes at confidence 1.0). ``rotated``: overlaps of the rotated boxes (area
    IoU; Ultralytics' rotated NMS measures it with probiou, close to it); its NMS is "fast NMS", where a box
    suppressed by a box itself suppressed is gone too, so a saturated box (confidence within 1e-3 of 1)
    needs only a tied rival that overlaps it at all."""
    if iou is None:
        return False
    same = (other.class_id == one.class_id[i]) & (np.abs(other.confidence - one.confidence[i]) <= CONF_TOL)
    if not same.any():
        return False
    if rotated:  # fast NMS: a box suppressed by one that is itself suppressed, so the rival need not be kept
        limit = 0.0 if one.confidence[i] >= 1 - CONF_TOL else iou
        return bool((_polygon_iou(one.polygons[i], [other.polygons[j] for j in np.flatnonzero(same)]) > limit).any())
    box, boxes = one.xyxy[i], other.xyxy[same]
    inter = (np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
             * np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None))
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return bool((inter / np.maximum(area(boxes) + area(box) - inter, 1e-9) > iou).any())


def compare_detections(a: Detections, b: Detections, floor: float, box_tol: float = BOX_TOL,
                       iou: float | None = None, task: str = "detect", mask_px: float = 1.0) -> str | None:
    """None when two sets of detections of one image agree by the check's rule, else why not.

    Every detection above the floor (by more than 1e-3) has a box of its class in the other set within
    0.5 px. Per class, counts at the floor and at every :data:`CHECK_THRESHOLDS` are equal but for
    detections within 1e-3 of that threshold in both sets (0.4 against 0.3996 at 0.4 is forgiven, 0.4
    against 0.39 is not) and near-duplicates: a detection whose nearest box in the other
    set is also another's (NMS keeps or drops a near-duplicate whose overlap lies at the IoU threshold;
    1e-4 on an unclipped box decides it). With ``iou`` (the NMS IoU), a detection without a match is also
    forgiven when the other set keeps instead a box of its class overlapping it by more than ``iou`` with a
    confidence within 1e-3 (NMS broke a tie the other way).

    By task (the model's): ``obb`` matches the rotated boxes' four corners within 0.5 px (the corners paired
    as the rectangles', whichever corner each lists first) and measures NMS's overlap on the rotated boxes;
    ``segment`` also compares each mask outline with those of its twins in the other set (box within
    0.5 px, confidence within 1e-3): one must lie within 1.5 mask pixels (``mask_px``: image pixels per
    pixel of the mask) of it vertex by vertex, or overlap it by 0.9 (:func:`_outline_mismatch`).
    """
    rotated = task == "obb"
    na_, ga = _nearest(a, b, rotated)
    nb_, gb = _nearest(b, a, rotated)
    for one, index, gap in ((a, na_, ga), (b, nb_, gb)):
        other = b if one is a else a
        for i in np.flatnonzero((one.confidence >= floor + CONF_TOL) & (gap > box_tol)):
            if _tied_rival(one, i, other, iou, rotated):
                continue
            where = "has no match" if index[i] < 0 else f"is {gap[i]:.2f} px from the nearest (over {box_tol})"
            return f"a class {one.class_id[i]} box at {one.xyxy[i].round(1).tolist()} {where}"
    for cls in sorted(set(a.class_id.tolist()) | set(b.class_id.tolist())):
        for t in (floor, *CHECK_THRESHOLDS):
            shared, near, n = 0, [], []
            for one, index in ((a, na_), (b, nb_)):
                kept = (one.class_id == cls) & (one.confidence >= t)
                n.append(int(kept.sum()))
                near.append(int((np.abs(one.confidence[one.class_id == cls] - t) <= CONF_TOL).sum()))
                shared += int(kept.sum()) - len(set(index[kept].tolist()))  # several sharing one nearest box
            # A detection crosses t between the sets only when it lies within 1e-3 of t in both (its twin in
            # the other set is listed: it is above the floor), unless t is that close to the floor (the twin
            # may lie below it, unlisted).
            crossing = sum(near) if t - CONF_TOL < floor else min(near)
            if abs(n[0] - n[1]) > crossing + shared:
                return f"class {cls}: {n[0]} against {n[1]} detections at threshold {t:g}"
    return _outline_mismatch(a, b, floor, box_tol, mask_px) if task == "segment" else None


# ---------------------------------------------------------------------------------------------- the predictor
class OnnxPredictor:
    """A family's predictor whose forward pass ONNX Runtime runs once the graph is exported and checked.

    Implements :class:`~musseltools.models.base.Predictor`; ``prepare`` and the post-processing are the
    wrapped predictor's, but for an Ultralytics detect model (:func:`lean_applies`), whose graph runs in a
    :class:`~musseltools.models.onnx_detect.LeanDetectPredictor` (``lean``: numpy pre- and post-processing),
    which is what the check compares with torch. ``backend`` says what runs now: ``pending`` (before the
    first batch), ``onnx``, or ``torch`` (the graph failed its check or could not be made; ``reason`` says why).
    """

    def __init__(self, inner: Predictor, model: LoadedModel, settings: Any, cache: Path) -> None:
        self.inner = inner
        self.model = model
        self.settings = settings
        self.cache = Path(cache)
        self.device, self.names, self.task = inner.device, inner.names, inner.task
        self.backend = "pending"
        self.reason: str | None = None
        #: What gave the results this predictor returned: ``onnxruntime``, ``torch`` or both.
        self.ran: set[str] = set()
        self.lean: LeanDetectPredictor | None = None
        self._geometry: dict[str, Any] | None = None
        self._checked = 0
        self._lock = threading.Lock()

    @property
    def batch_size(self) -> int | None:
        return self.inner.batch_size

    @batch_size.setter
    def batch_size(self, n: int | None) -> None:
        self.inner.batch_size = n
        if self.lean is not None:
            self.lean.batch_size = n

    #: Threads per forward pass: the wrapped predictor's torch threads, which ONNX Runtime's session takes.
    threads = property(lambda self: self.inner.threads)

    @property
    def graph(self) -> Path:
        return self.cache / f"{graph_key(self.model, self.settings)}.onnx"

    def prepare(self, image: np.ndarray) -> Prepared:
        """The lean letterbox once the lean predictor is checked (the same tensor, without torch), else the
        wrapped predictor's (whose tensors the lean predictor takes too, during its check)."""
        lean = self.lean
        if lean is not None and self._checked >= CHECK_IMAGES:
            return lean.prepare(image)
        return self.inner.prepare(image)

    def images_per_call(self, batch_size: int) -> int:
        return self.inner.images_per_call(batch_size)

    def measure_batch_size(self, sample: Prepared) -> int:
        self._start()
        candidates = (1, 2, 4) if self.backend == "onnx" else None
        return fastest_batch_size(self.lean or self.inner, sample, candidates)

    def predict(self, batch: Sequence[Prepared]) -> list[Detections]:
        self._start()
        if self.backend == "onnx" and self._checked < CHECK_IMAGES:
            out = self._checked_predict(batch)
        elif self.lean is not None:
            out = self.lean.predict(batch)
        else:
            out = self.inner.predict(batch)
        self.ran.add("onnxruntime" if self.backend == "onnx" else "torch")  # torch from the batch that failed
        return out

    # -- getting there --------------------------------------------------------------------------------
    def _start(self) -> None:
        """Export (or find) the graph and open its session, once; torch, with the reason logged, if it fails."""
        with self._lock:
            if self.backend != "pending":
                return
            if self.task not in TASKS:
                return self._fall_back(f"ONNX Runtime is not used for {self.task} models")
            try:
                graph, record = self._graph()
                sess = session(graph, self.inner.threads or 1)
                geometry = geometry_of(self.inner) if lean_applies(self.model.info) else None
                runner = None if geometry else self._runner(sess)
            except Exception as exc:  # noqa: BLE001 - any failure to export or load: torch goes on
                return self._fall_back(f"the ONNX graph could not be made ({type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else ''})")
            if record.get("check") is not None and not record["check"]["passed"]:
                return self._fall_back(f"the ONNX graph failed its check against torch: {record['check']['why']}")
            self._checked = CHECK_IMAGES if record.get("check") else 0
            if geometry:
                self.lean = LeanDetectPredictor(sess, names=self.names, settings=self.settings, imgsz=geometry["imgsz"],
                                                stride=geometry["stride"], threads=self.inner.threads or 1)
                self.lean.batch_size = self.inner.batch_size
                self._geometry = geometry
            else:
                self.inner.runner = runner
            self.backend = "onnx"

    def _graph(self) -> tuple[Path, dict[str, Any]]:
        graph = self.graph
        graph.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(graph.with_suffix(".lock")):
            record = read_record(graph.with_suffix(".json"))
            if not valid_graph(graph, record):
                if graph.exists() or record:
                    log.warning("the cached ONNX graph %s is damaged or incomplete: exporting it again", graph.name)
                    with contextlib.suppress(OSError):
                        graph.unlink()
                _export(self.inner, graph)
                record = {"sha256": _sha256(graph), "versions": _versions(), "opset": OPSET, "check": None,
                          "weights": self.model.info.fingerprint, "task": self.task}
                _write_atomic(graph.with_suffix(".json"), json.dumps(record, indent=1).encode())
                log.info("exported an ONNX graph of %s to %s", Path(self.model.info.path).name, graph)
        return graph, record

    def _runner(self, sess: Any) -> Any:
        return (self.inner.onnx_runner(sess) if hasattr(self.inner, "onnx_runner")
                else _torch_detector_runner(sess))

    def _checked_predict(self, batch: Sequence[Prepared]) -> list[Detections]:
        """Both backends on one batch: the graph's results when they agree, torch's (and torch from now on) if
        not. The graph's are those of what runs after the check: the lean predictor, else the wrapped one."""
        if self.lean is not None:
            graph_dets, torch_dets = self.lean.predict(batch), self.inner.predict(batch)
        else:
            graph_dets = self.inner.predict(batch)
            runner, self.inner.runner = self.inner.runner, None
            try:
                torch_dets = self.inner.predict(batch)
            finally:
                self.inner.runner = runner
        why = next((w for g, t, item in zip(graph_dets, torch_dets, batch)
                    if (w := compare_detections(g, t, self.settings.conf_floor, iou=self._nms_iou, task=self.task,
                                                mask_px=_mask_pixel(item))) is not None), None)
        self._checked += len(batch)
        if why is not None or self._checked >= CHECK_IMAGES:
            self._record_check(why)
        if why is not None:
            self.inner.runner, self.lean = None, None
            self._fall_back(f"the ONNX graph failed its check against torch: {why}")
            return torch_dets
        return graph_dets

    @property
    def _nms_iou(self) -> float:
        """The NMS IoU the check forgives ties at: the run's, else 0.5 (the lower of the families' defaults)."""
        return float(self.settings.iou) if getattr(self.settings, "iou", None) is not None else 0.5

    def _record_check(self, why: str | None) -> None:
        """Keep the verdict beside the graph; for the lean predictor, with what it needs to be built again
        without torch (its geometry), so that a later process can (:func:`lean_predictor`)."""
        path = self.graph.with_suffix(".json")
        with contextlib.suppress(OSError), _file_lock(self.graph.with_suffix(".lock")):
            record = read_record(path)
            if record and record.get("check") is None:
                record["check"] = {"passed": why is None, "why": why, "images": self._checked}
                if self.lean is not None:
                    record["lean"] = self._geometry
                _write_atomic(path, json.dumps(record, indent=1).encode())

    def _fall_back(self, reason: str) -> None:
        self.backend, self.reason = "torch", reason
        log.warning("%s — going on with torch", reason)


def _mask_pixel(item: Prepared) -> float:
    """Image pixels per pixel of the model input (a segment's mask is made at the input's size and scaled up)."""
    shape = getattr(getattr(item, "tensor", None), "shape", None)
    if shape is None or len(shape) != 4:
        return 1.0
    (h, w), (th, tw) = item.image.shape[:2], shape[2:]
    return float(1 / min(th / h, tw / w))


def _perturbed(sess: Any) -> Any:
    """The ``onnx-perturb`` failpoint: a session whose boxes come out 2 px wider and taller."""
    class Perturbed:
        get_inputs = sess.get_inputs

        def run(self, names: Any, feed: dict[str, Any]) -> list[Any]:
            out = sess.run(names, feed)
            if len(out) == 3 and out[0].ndim == 2:  # Faster R-CNN: boxes, labels, scores
                out[0] = out[0] + 2.0
            else:
                out[0] = out[0].copy()
                out[0][:, 2:4] += 4.0  # YOLO: (batch, 4 + classes..., anchors), rows cx, cy, w, h
            return out

    return Perturbed()


def runtimes_used(predictor: Any) -> tuple[str, ...]:
    """What ran the network for the results ``predictor`` returned so far (every tile stream of a tiled one):
    ``onnxruntime``, ``torch`` (a torch predictor, or a graph not used), or both, in that order."""
    ran: set[str] = set()
    for stream in getattr(predictor, "streams", [predictor]):
        ran |= getattr(stream, "ran", None) or ({"torch"} if not isinstance(stream, (OnnxPredictor,
                                                                                     LeanDetectPredictor)) else set())
    return tuple(sorted(ran))


def default_cache() -> Path:
    """The machine's folder of graphs when a run has none (in its temporary directory)."""
    return Path(tempfile.gettempdir()) / f"musseltools-onnx-{os.getuid() if hasattr(os, 'getuid') else 0}"


def with_backend(predictor: Predictor, model: LoadedModel, settings: Any, cache: str | os.PathLike | None) -> Predictor:
    """``predictor`` itself for the torch backend, else an :class:`OnnxPredictor` around it (graphs cached in
    ``cache``, else in a folder of this machine's temporary directory)."""
    if backend_in_use(getattr(settings, "backend", "torch"), predictor.device) != "onnx":
        if settings.backend == "onnx":
            log.warning("backend onnx runs on a CPU only — going on with torch on %s", predictor.device)
        return predictor
    return OnnxPredictor(predictor, model, settings, Path(cache) if cache is not None else default_cache())
