"""Models: load YOLO weights, fingerprint them, and the Predictor seam the engine runs through.

The :class:`Predictor` turns decoded images into :class:`~musseltools.detections.Detections`. It
splits the work in two so that the engine can overlap them: :meth:`Predictor.prepare` (letterbox and
tensor conversion, run in the prefetch thread) and :meth:`Predictor.predict` (the network and NMS,
run in batches). Images are batched only with images of the same size, which makes every result
independent of the model batch size (Ultralytics pads mixed-size batches differently).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .detections import Detections
from .errors import ModelLoadError

__all__ = [
    "InferenceSettings",
    "ModelInfo",
    "LoadedModel",
    "Predictor",
    "Prepared",
    "fingerprint",
    "load_model",
    "make_predictor",
    "default_device",
]

log = logging.getLogger(__name__)

SUPPORTED_TASKS = ("detect", "segment", "obb")
#: Bumped when a change in musseltools would change stored results for the same settings.
RESULTS_FORMAT = 1


def fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file."""
    from .collection import sha256_file

    return sha256_file(path)


def default_device() -> str:
    """``cuda:0`` when a CUDA GPU is usable, else ``cpu``."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class InferenceSettings:
    """Everything that changes what the model outputs. Hashed with the model into ``inference_key``.

    Parameters
    ----------
    imgsz : int
        Model input size (longest side), as in Ultralytics.
    iou : float
        IoU threshold of non-maximum suppression.
    conf_floor : float
        Detections are stored down to this confidence; counts are exact at any threshold >= it.
    max_det : int
        Detection cap per image (images that hit it are flagged).
    tile : int or "auto" or None
        Tile size in pixels for tiled inference of large images (None: whole images).
    tile_overlap : float
        Overlap between neighbouring tiles, as a fraction of the tile size.
    """

    imgsz: int = 640
    iou: float = 0.7
    conf_floor: float = 0.01
    max_det: int = 10000
    tile: int | str | None = None
    tile_overlap: float = 0.2

    def __post_init__(self) -> None:
        if not (isinstance(self.imgsz, int) and self.imgsz >= 32):
            raise ValueError(f"imgsz must be an integer >= 32, got {self.imgsz!r}")
        if not 0 < self.iou <= 1:
            raise ValueError(f"iou must lie in (0, 1], got {self.iou!r}")
        if not 0 < self.conf_floor < 1:
            raise ValueError(f"conf_floor must lie in (0, 1), got {self.conf_floor!r}")
        if not (isinstance(self.max_det, int) and self.max_det >= 1):
            raise ValueError(f"max_det must be a positive integer, got {self.max_det!r}")
        if self.tile is not None and self.tile != "auto" and not (isinstance(self.tile, int) and self.tile >= 32):
            raise ValueError(f"tile must be None, 'auto' or an integer >= 32 pixels, got {self.tile!r}")
        if not 0 <= self.tile_overlap < 1:
            raise ValueError(f"tile_overlap must lie in [0, 1), got {self.tile_overlap!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self, model_fingerprint: str) -> str:
        """The ``inference_key``: results are cached by (image_id, inference_key)."""
        payload = {"model": model_fingerprint, "format": RESULTS_FORMAT, **self.to_dict()}
        if self.tile is None:  # overlap means nothing without tiles
            payload.pop("tile_overlap")
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelInfo:
    """What identifies a model: its file, content hash, task and class names."""

    path: str
    fingerprint: str
    task: str
    names: dict[int, str]
    class_map: dict[str, str] | None = None

    @property
    def categories(self) -> list[str]:
        """Names counted in totals: the class map's categories, else the class names."""
        if self.class_map:
            return list(dict.fromkeys(self.class_map.get(n, n) for n in self.names.values()))
        return list(self.names.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["names"] = {str(k): v for k, v in self.names.items()}
        return d


@dataclass
class LoadedModel:
    """An Ultralytics model in memory with its :class:`ModelInfo`."""

    info: ModelInfo
    yolo: Any = field(repr=False)

    @property
    def train_imgsz(self) -> int:
        """The input size the model was trained at (Ultralytics keeps it in the checkpoint), else 640."""
        size = getattr(self.yolo, "overrides", {}).get("imgsz") or 640
        return int(max(size) if isinstance(size, (list, tuple)) else size)


def _check_class_map(class_map: Mapping[str, str] | None, names: Mapping[int, str], path: str) -> dict | None:
    if not class_map:
        return None
    unknown = sorted(set(class_map) - set(names.values()))
    if unknown:
        raise ModelLoadError(
            f"class map names {unknown} are not classes of {path} — the model's classes are "
            f"{sorted(names.values())} — fix the class map"
        )
    return {str(k): str(v) for k, v in class_map.items()}


def load_model(weights: str | os.PathLike, *, class_map: Mapping[str, str] | None = None) -> LoadedModel:
    """Load Ultralytics YOLO weights (.pt) for the detect, segment or OBB task.

    .pt files are Python pickles: load only weights you trust.

    Raises
    ------
    ModelLoadError
        The file is missing, unreadable, not YOLO weights, or of an unsupported task.
    """
    path = Path(weights).expanduser()
    shown = str(weights)
    if not path.is_file():
        why = "is a directory" if path.is_dir() else "does not exist"
        raise ModelLoadError(
            f"weights file {shown!r} {why} — expected an Ultralytics YOLO .pt file — check the --model path"
        )
    try:
        fp = fingerprint(path)
    except OSError as exc:
        raise ModelLoadError(f"cannot read weights file {shown!r}: {exc.strerror or exc}") from exc
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        from ultralytics import YOLO

        yolo = YOLO(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle/build is a load error
        raise ModelLoadError(
            f"cannot load weights file {shown!r}: {type(exc).__name__}: {exc} — expected Ultralytics YOLO weights "
            "(.pt) — check that the file is complete and was saved by Ultralytics"
        ) from exc
    task = getattr(yolo, "task", None)
    if task not in SUPPORTED_TASKS:
        raise ModelLoadError(
            f"weights file {shown!r} is a {task!r} model — expected one of {', '.join(SUPPORTED_TASKS)}"
        )
    names = {int(k): str(v) for k, v in dict(yolo.names).items()}
    info = ModelInfo(
        path=str(path.resolve()), fingerprint=fp, task=task, names=names,
        class_map=_check_class_map(class_map, names, shown),
    )
    return LoadedModel(info=info, yolo=yolo)


@dataclass
class Prepared:
    """One decoded image, ready for the model: its letterboxed tensor and the original array."""

    image: np.ndarray  # H x W x 3, BGR uint8, as the user sees it
    tensor: Any  # torch.Tensor (1, 3, h, w) for whole-image inference; None when tiled


class Predictor:
    """Runs a YOLO model on decoded images: ``prepare`` in a worker thread, ``predict`` in batches.

    Parameters
    ----------
    model : LoadedModel
    settings : InferenceSettings
    device : str, optional
        ``cpu``, ``cuda:0``...; the fastest available by default.
    threads : int, optional
        torch CPU threads: all cores but one by default (the decode thread uses that one), or
        ``$MUSSELTOOLS_TORCH_THREADS``.
    """

    def __init__(
        self, model: LoadedModel, settings: InferenceSettings, *, device: str | None = None, threads: int | None = None
    ) -> None:
        import torch

        self.model = model
        self.settings = settings
        self.device = device or default_device()
        self.names = model.info.names
        yolo = model.yolo
        dummy = np.zeros((64, 64, 3), np.uint8)
        yolo.predict(dummy, verbose=False, **self._predict_args())  # builds Ultralytics' predictor once
        self._p = yolo.predictor
        if self.device.startswith("cpu"):
            # one core is left to the decode thread: oversubscribed OpenMP threads stall each other (on 2 cores,
            # 2 torch threads next to a busy decoder ran 20x slower than 1)
            threads = threads or int(os.environ.get("MUSSELTOOLS_TORCH_THREADS", 0)) or max(1, (os.cpu_count() or 2) - 1)
            torch.set_num_threads(threads)
        self._inference_mode = torch.inference_mode

    def _predict_args(self) -> dict[str, Any]:
        s = self.settings
        return {"conf": s.conf_floor, "iou": s.iou, "imgsz": s.imgsz, "max_det": s.max_det, "device": self.device}

    # -- the two halves -------------------------------------------------------------------------------
    def prepare(self, image: np.ndarray) -> Prepared:
        """Letterbox one BGR image into a model tensor (safe to call from a worker thread)."""
        with self._inference_mode():
            return Prepared(image=image, tensor=self._p.preprocess([image]))

    def predict(self, batch: Sequence[Prepared]) -> list[Detections]:
        """Detections for each prepared image, down to the confidence floor, in input order."""
        import torch

        out: list[Detections | None] = [None] * len(batch)
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault((tuple(item.tensor.shape), item.image.shape), []).append(i)
        with self._inference_mode():
            for idx in groups.values():
                x = torch.cat([batch[i].tensor for i in idx]) if len(idx) > 1 else batch[idx[0]].tensor
                origs = [batch[i].image for i in idx]
                for i, det in zip(idx, self._forward(x, origs)):
                    out[i] = det
        return out  # type: ignore[return-value]

    def _forward(self, x: Any, origs: list[np.ndarray]) -> list[Detections]:
        p = self._p
        preds = p.inference(x)
        p.batch = ([""] * len(origs), origs, [""] * len(origs))
        return [Detections.from_ultralytics(r) for r in p.postprocess(preds, x, origs)]

    # -- batch size -----------------------------------------------------------------------------------
    def measure_batch_size(self, sample: Prepared, candidates: Sequence[int] | None = None, repeats: int = 2) -> int:
        """Time the model on copies of ``sample`` at several batch sizes and return the fastest.

        On CPU, batch 1 is often fastest; on a GPU, larger batches usually win. A larger batch must beat
        a smaller one by 5 % to be chosen.
        """
        if candidates is None:
            candidates = (1, 2, 4, 8) if self.device.startswith("cpu") else (1, 4, 8, 16, 32)
        best, best_rate = 1, 0.0
        for b in candidates:
            items = [sample] * b
            self.predict(items)  # warm-up at this size
            t0 = time.perf_counter()
            for _ in range(repeats):
                self.predict(items)
            rate = b * repeats / max(time.perf_counter() - t0, 1e-9)
            log.debug("batch size %d: %.1f images/s", b, rate)
            if rate > best_rate * 1.05:
                best, best_rate = b, rate
        return best


def make_predictor(
    model: LoadedModel, settings: InferenceSettings, *, device: str | None = None, threads: int | None = None
) -> Predictor:
    """The predictor for these settings (tiled when ``settings.tile`` is set)."""
    if settings.tile is not None:
        from .tiling import TiledPredictor

        return TiledPredictor(model, settings, device=device, threads=threads)
    return Predictor(model, settings, device=device, threads=threads)
