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
    overlapping by IoU 0.9, see :func:`compare_detections`). A detect graph is checked with the torch-free
    predictor that will run it, which must also give, on the same graph output, Ultralytics' post-processing's
    boxes within 0.01 px (no tie forgiven). The verdict is kept beside the graph. A graph that fails is
    not used: the run logs why and goes on with torch. So does a family or variant that cannot be exported (one warning line, the reason).

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
from .onnx_check import BOX_TOL, CHECK_THRESHOLDS, CONF_TOL, OUTLINE_IOU, OUTLINE_TOL, compare_detections
from .onnx_detect import POSTPROCESS, LeanDetectPredictor, geometry_of

__all__ = ["OPSET", "TASKS", "CHECK_IMAGES", "CHECK_THRESHOLDS", "SESSIONS", "OnnxPredictor", "backend_in_use",
           "BOX_TOL", "CONF_TOL", "OUTLINE_IOU", "OUTLINE_TOL",
           "compare_detections", "default_cache", "graph_key", "lean_applies", "read_record", "runtimes_used",
           "session", "valid_graph", "with_backend"]

log = logging.getLogger(__name__)

#: The ONNX opset of exported graphs (torchvision's detection models need 11 or later).
OPSET = 17
#: Images of a run checked on both backends before a graph without a verdict is trusted.
CHECK_IMAGES = 4
#: The tasks whose graphs are used: all that musseltools stores. The graph replaces the forward pass only:
#: NMS (rotated for OBB) and the masks from the graph's coefficients and prototypes stay Ultralytics' own
#: (detect: their numpy version, :mod:`~musseltools.models.onnx_detect`).
TASKS = ("detect", "segment", "obb")
#: Pixels within which the torch-free post-processing's boxes must be Ultralytics' on the same graph output.
LEAN_BOX_TOL = 0.01
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
        same_output = None
        if self.lean is not None:
            graph_dets, torch_dets = self.lean.predict(batch), self.inner.predict(batch)
            same_output = self._against_ultralytics(batch, graph_dets, self.lean.session)
        else:
            graph_dets = self.inner.predict(batch)
            runner, self.inner.runner = self.inner.runner, None
            try:
                torch_dets = self.inner.predict(batch)
            finally:
                self.inner.runner = runner
        why = next((w for g, t, item in zip(graph_dets, torch_dets, batch)
                    if (w := compare_detections(g, t, self.settings.conf_floor, iou=self._nms_iou, task=self.task,
                                                mask_px=_mask_pixel(item))) is not None), same_output)
        self._checked += len(batch)
        if why is not None or self._checked >= CHECK_IMAGES:
            self._record_check(why)
        if why is not None:
            self.inner.runner, self.lean = None, None
            self._fall_back(f"the ONNX graph failed its check against torch: {why}")
            return torch_dets
        return graph_dets

    def _against_ultralytics(self, batch: Sequence[Prepared], lean_dets: list[Detections], sess: Any) -> str | None:
        """Why the lean predictor's detections differ from those of Ultralytics' post-processing of the same
        graph output, else None. Strict (boxes within :data:`LEAN_BOX_TOL`, no tie forgiven: both NMS keep
        ties in anchor order), as the comparison with torch is not: its rule forgives a box for a rival of
        its class and confidence overlapping it past the IoU, which a box 2 px off on every image is."""
        self.inner.runner = self._runner(sess)
        try:
            theirs = self.inner.predict(batch)
        finally:
            self.inner.runner = None
        why = next((w for a, b in zip(lean_dets, theirs)
                    if (w := compare_detections(a, b, self.settings.conf_floor, LEAN_BOX_TOL)) is not None), None)
        return None if why is None else f"the torch-free post-processing differs from Ultralytics' on its output: {why}"

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
        ran |= stream.ran if isinstance(stream, (OnnxPredictor, LeanDetectPredictor)) else {"torch"}
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
