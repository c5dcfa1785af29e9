"""The Ultralytics YOLO family: detect, segment and OBB models from Ultralytics ``.pt`` weights.

This is the only module of musseltools that imports Ultralytics or touches its internals (the
predictor's pre- and post-processing). Ultralytics itself is imported lazily, when a model is built.

Images are batched only with images of the same size, which makes every result independent of the
model batch size (Ultralytics pads mixed-size batches differently). Detections are converted with
:meth:`~musseltools.core.detections.Detections.from_ultralytics`, which stays in ``detections.py``: it
only reads the public attributes of Ultralytics' ``Results``, as supervision's adapters do.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.detections import Detections
from ..core.options import OPTIONS
from ..errors import ModelLoadError
from .base import (
    LoadedModel,
    ModelCard,
    Prepared,
    cpu_threads,
    default_device,
    fastest_batch_size,
    pin_threads,
    register_family,
)

__all__ = ["UltralyticsFamily", "YoloPredictor"]

log = logging.getLogger(__name__)

_SETTINGS_BANNER = "Creating new Ultralytics Settings"


class _NoSettingsBanner(logging.Filter):
    """Drops Ultralytics' "Creating new Ultralytics Settings ..." banner (printed to stdout on the first
    import on a machine, where it would also break ``musseltools run --json``). Its other messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_SETTINGS_BANNER)


def _yolo_class() -> Any:
    """``ultralytics.YOLO``, imported offline and without the settings banner."""
    logger = logging.getLogger("ultralytics")  # the logger Ultralytics configures on import (filters are kept)
    if not any(isinstance(f, _NoSettingsBanner) for f in logger.filters):
        logger.addFilter(_NoSettingsBanner())
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    return YOLO


class UltralyticsFamily:
    """Ultralytics YOLO weights (.pt): the ``ultralytics`` model family."""

    expects = "an Ultralytics YOLO .pt file"

    def claims(self, data: bytes, filename: str) -> bool:
        """A torch checkpoint whose pickle names Ultralytics' model classes (read, never unpickled)."""
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                pickles = [n for n in z.namelist() if n.endswith("data.pkl")]
                return any(b"ultralytics" in z.read(n) for n in pickles)
        except (zipfile.BadZipFile, OSError, ValueError):
            return b"ultralytics" in data[: 1 << 20]  # a legacy (not zipped) torch file: the pickle comes first

    def sidecar_names(self, filename: str) -> tuple[str, ...]:
        """None: an Ultralytics .pt file holds its class names and settings."""
        return ()

    def build(self, data: bytes, filename: str, shown: str, *, sidecars: Mapping[str, bytes] | None = None,
              trust_pickle: bool = False) -> tuple[Any, ModelCard]:
        """Build a YOLO model from the weights' bytes.

        Ultralytics loads from a path only, so the bytes (those that were hashed) are written to a
        private temporary folder (mode 0700, removed at once) under the file's own name: Ultralytics
        chooses the model class from it. No other process can change that copy. An Ultralytics .pt file
        is always a full pickle (Ultralytics unpickles it whatever ``trust_pickle`` says): load only
        weights you trust.
        """
        yolo_class = _yolo_class()
        with tempfile.TemporaryDirectory(prefix="musseltools-weights-") as tmp:
            copy = Path(tmp) / (Path(filename).name or "weights.pt")
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                yolo = yolo_class(str(copy))
            except Exception as exc:  # noqa: BLE001 - any failure to unpickle/build is a load error
                raise ModelLoadError(
                    f"cannot load weights file {shown!r}: {type(exc).__name__}: {exc} — expected Ultralytics YOLO "
                    "weights (.pt) — check that the file is complete and was saved by Ultralytics"
                ) from exc
        size = getattr(yolo, "overrides", {}).get("imgsz") or OPTIONS.imgsz.fallback
        train_imgsz = int(max(size) if isinstance(size, (list, tuple)) else size)
        names = {int(k): str(v) for k, v in dict(yolo.names).items()}
        return yolo, ModelCard("ultralytics", getattr(yolo, "task", None), names, train_imgsz)

    def predictor(self, model: LoadedModel, settings: Any, *, device: str | None = None,
                  threads: int | None = None) -> YoloPredictor:
        return YoloPredictor(model, settings, device=device, threads=threads)


class YoloPredictor:
    """Runs a YOLO model on decoded images: ``prepare`` in a worker thread, ``predict`` in batches.

    Implements :class:`~musseltools.models.base.Predictor`.

    Parameters
    ----------
    model : LoadedModel
        Built by :func:`~musseltools.models.load_model`.
    settings : InferenceSettings
    device : str, optional
        ``cpu``, ``cuda:0``...; the fastest available by default.
    threads : int, optional
        torch CPU threads per forward pass: all cores but one by default (the decode thread uses that
        one), or ``$MUSSELTOOLS_TORCH_THREADS``; set again before each forward pass.
    """

    def __init__(
        self, model: LoadedModel, settings: Any, *, device: str | None = None, threads: int | None = None
    ) -> None:
        import torch

        if model.model is None:
            raise ValueError("the model is described but not built — load it with musseltools.models.load_model")
        self.settings = settings
        self.device = device or default_device()
        self.names = model.info.names
        self.task = model.info.task
        self.batch_size: int | None = None
        yolo = model.model
        dummy = np.zeros((64, 64, 3), np.uint8)
        yolo.predict(dummy, verbose=False, **self._predict_args())  # builds Ultralytics' predictor once
        self._p = yolo.predictor
        self._yolo = yolo
        #: torch threads per forward pass on CPU (None on a GPU): pinned before each one, since results
        #: change in the last bits with it (:func:`~musseltools.models.base.cpu_threads`)
        self.threads = cpu_threads(threads) if self.device.startswith("cpu") else None
        pin_threads(self.threads)
        self._inference_mode = torch.inference_mode
        self._forward_lock = threading.Lock()
        #: what runs the network in place of the torch model when set (an ONNX Runtime graph:
        #: :mod:`musseltools.models.onnx`); pre- and post-processing stay Ultralytics' either way
        self.runner: Any = None

    def _predict_args(self) -> dict[str, Any]:
        s = self.settings
        return {"conf": s.conf_floor, "iou": s.iou, "imgsz": s.imgsz, "max_det": s.max_det, "device": self.device}

    # -- the two halves -------------------------------------------------------------------------------
    def prepare(self, image: np.ndarray) -> Prepared:
        """Letterbox one BGR image into a model tensor (safe to call from a worker thread)."""
        with self._inference_mode():
            return Prepared(image=image, tensor=self._p.preprocess([image]))

    def predict(self, batch: Sequence[Prepared]) -> list[Detections]:
        """Detections for each prepared image, down to the confidence floor, in input order.

        Images of one shape run together, :attr:`batch_size` at a time (all at once when it is None).
        """
        import torch

        out: list[Detections | None] = [None] * len(batch)
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault((tuple(item.tensor.shape), item.image.shape), []).append(i)
        with self._inference_mode():
            for same_shape in groups.values():
                step = self.batch_size or len(same_shape)
                for k in range(0, len(same_shape), step):
                    idx = same_shape[k : k + step]
                    x = torch.cat([batch[i].tensor for i in idx]) if len(idx) > 1 else batch[idx[0]].tensor
                    origs = [batch[i].image for i in idx]
                    for i, det in zip(idx, self._forward(x, origs)):
                        out[i] = det
                for i in [i for i in same_shape if out[i] is None]:  # a result missing from a batch: alone
                    out[i] = self._forward(batch[i].tensor, [batch[i].image])[0]
        return out  # type: ignore[return-value]

    def _forward(self, x: Any, origs: list[np.ndarray]) -> list[Detections]:
        p = self._p
        with self._forward_lock:  # Ultralytics keeps the batch on the predictor: one forward at a time
            pin_threads(self.threads)
            preds = p.inference(x) if self.runner is None else self.runner(x)
            p.batch = ([""] * len(origs), origs, [""] * len(origs))
            results = [Detections.from_ultralytics(r) for r in p.postprocess(preds, x, origs)]
        if len(results) != len(origs):
            from ..errors import InferenceError

            raise InferenceError(f"the model gave {len(results)} results for {len(origs)} images — run again; if it "
                                 "persists, run with --batch-size 1")
        return results

    # -- ONNX (musseltools.models.onnx) ---------------------------------------------------------------
    def export_onnx(self, folder: Path, opset: int) -> Path:
        """Export the network with Ultralytics' exporter into ``folder`` (dynamic batch and image size, so
        that the graph takes the same letterboxed input as the torch model; simplified with onnxslim)."""
        yolo, logger = self._yolo, logging.getLogger("ultralytics")
        kept, level = getattr(yolo.model, "pt_path", None), logger.level
        yolo.model.pt_path = str(folder / "graph.pt")  # the exporter writes beside it: a private folder
        logger.setLevel(logging.ERROR)  # its progress lines go to stdout (and would break --json)
        try:
            out = yolo.export(format="onnx", imgsz=self.settings.imgsz, dynamic=True, simplify=True, opset=opset,
                              device="cpu", batch=1, verbose=False)
        finally:
            yolo.model.pt_path = kept
            logger.setLevel(level)
        return Path(out)

    def onnx_runner(self, session: Any) -> Any:
        """A stand-in for the torch forward pass: the graph's outputs as torch tensors, as Ultralytics' own
        ONNX backend returns them (one tensor, or a list: boxes and mask prototypes)."""
        import torch

        name = session.get_inputs()[0].name

        def run(x: Any) -> Any:
            outs = [torch.from_numpy(o) for o in session.run(None, {name: x.cpu().numpy()})]
            return outs[0] if len(outs) == 1 else outs

        return run

    def input_geometry(self) -> tuple[list[int], int] | None:
        """The letterbox's input size (height, width) and stride, which a torch-free letterbox needs
        (:mod:`musseltools.models.onnx_detect`); None for an end-to-end model (no NMS: not one it runs)."""
        if getattr(self._p.model, "end2end", False):
            return None
        size = self._p.imgsz
        return [int(size[0]), int(size[1])], int(self._p.model.stride)

    # -- batch size -----------------------------------------------------------------------------------
    def images_per_call(self, batch_size: int) -> int:
        """Images handed to :meth:`predict` at once: one model batch."""
        return batch_size

    def measure_batch_size(self, sample: Prepared, candidates: Sequence[int] | None = None, repeats: int = 2) -> int:
        """Time the model on copies of ``sample`` at several batch sizes and return the fastest
        (:func:`~musseltools.models.base.fastest_batch_size`)."""
        return fastest_batch_size(self, sample, candidates, repeats)


register_family("ultralytics", UltralyticsFamily())
