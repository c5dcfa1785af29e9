"""A torch-free predictor for Ultralytics detect graphs: letterbox, ONNX Runtime, NMS, all in numpy and cv2.

Why: with ``backend=onnx`` the network already runs in ONNX Runtime, yet Ultralytics' letterbox and
post-processing kept torch, torchvision (which imports ``torch._dynamo``) and Ultralytics imported in every
worker process, and the torch model loaded: about 3.5 s of CPU per cold run; and Ultralytics' letterbox and
post-processing took about 2.7 ms an image around an 18-19 ms forward pass, against 1.5 ms here (demo
detector at 320 px, one thread). For a detect model, what Ultralytics does
around the network is small and is written here again in numpy, so that a worker needs only numpy, cv2 and
onnxruntime.

It is used only where it was proved to give torch's results: :class:`~musseltools.models.onnx.OnnxPredictor`
checks :class:`LeanDetectPredictor` itself (not Ultralytics' post-processing) against torch on a run's first
images, and records the geometry it needs (:func:`geometry_of`: input size and stride) with the verdict;
a later process builds it from that record alone (:func:`~musseltools.models.onnx.lean_predictor`).

What it reproduces of Ultralytics (8.4; :data:`POSTPROCESS` names this version of the rules, and is part of
the graph's name, so that a change here means a new graph and a new check):

- the letterbox of one image at a time for a ``.pt`` model: the smallest rectangle padded to the stride,
  centred, grey 114, ``cv2.INTER_LINEAR``, BGR to RGB, CHW, float32 / 255;
- NMS: the best class per anchor, kept above the confidence floor; at most :data:`MAX_NMS` candidates by
  confidence; class-aware by offsetting boxes by class x :data:`MAX_WH` (classes never suppress each other);
  greedy by descending confidence, a box suppressed when its IoU with a kept one is over the setting; at
  most ``max_det``;
- the boxes scaled back to the image as ``scale_boxes`` does (its gain and rounded padding) and clipped.

This module imports nothing of torch, torchvision or Ultralytics, directly or through musseltools.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ..core.detections import Detections
from .base import Prepared, fastest_batch_size

__all__ = ["POSTPROCESS", "MAX_WH", "MAX_NMS", "LeanDetectPredictor", "letterbox", "nms", "scale_boxes"]

#: The version of the pre- and post-processing rules written here (part of a detect graph's cache name).
POSTPROCESS = "numpy-detect-1"
#: Class offset of class-aware NMS, in pixels (Ultralytics' ``max_wh``): boxes of two classes never overlap.
MAX_WH = 7680
#: Candidates NMS considers per image at most, the most confident first (Ultralytics' ``max_nms``).
MAX_NMS = 30000
#: The letterbox's padding grey.
PAD_VALUE = 114


def letterbox(image: np.ndarray, imgsz: tuple[int, int], stride: int) -> np.ndarray:
    """One BGR uint8 image as the model's input: a 1x3xHxW float32 array in [0, 1], RGB.

    Scaled by the largest factor that fits ``imgsz`` (height, width; up or down), each side rounded (at
    least 1 px), then padded on both sides to the next multiple of ``stride`` (the extra pixel, if odd,
    at the bottom or right), as Ultralytics' ``LetterBox(auto=True)`` does for one image.
    """
    h0, w0 = image.shape[:2]
    r = min(imgsz[0] / h0, imgsz[1] / w0)
    new_w, new_h = max(round(w0 * r), 1), max(round(h0 * r), 1)
    dw, dh = ((imgsz[1] - new_w) % stride) / 2, ((imgsz[0] - new_h) % stride) / 2
    if (new_w, new_h) != (w0, h0):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    image = cv2.copyMakeBorder(image, round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1),
                               cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    chw = np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32)
    chw /= 255
    return chw


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of xyxy ``box`` (one, or a column of them: ``n x 1 x 4``) with each of ``boxes``, in their dtype
    (float32 for the model's, as torchvision computes it)."""
    w = np.clip(np.minimum(boxes[..., 2], box[..., 2]) - np.maximum(boxes[..., 0], box[..., 0]), 0, None)
    h = np.clip(np.minimum(boxes[..., 3], box[..., 3]) - np.maximum(boxes[..., 1], box[..., 1]), 0, None)
    inter = w * h
    area = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    return inter / (area + (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]) - inter)


#: Candidates up to which NMS measures every pair's overlap at once (an n x n matrix: 4 MB of float32 at
#: 1024), and then only walks the candidates (1.4 to 0.8 ms an image on the demo model's frames, 150 to 450
#: candidates, 40 to 170 kept); beyond, one vectorised step per kept box.
PAIRWISE_MAX = 1024


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    """Indices of the boxes class-aware greedy NMS keeps, most confident first, at most ``max_det``.

    Each step keeps the most confident box left (ties: the first listed, as torchvision's stable sort) and
    drops the boxes that overlap it by an IoU over ``iou``. Classes are kept apart by offsetting each box by
    class x :data:`MAX_WH`, as Ultralytics does, so that a box never suppresses one of another class.
    """
    order = np.argsort(-scores, kind="stable")
    shifted = (boxes + (classes.astype(boxes.dtype) * MAX_WH)[:, None])[order]
    keep: list[int] = []
    if len(order) <= PAIRWISE_MAX:
        over = _iou(shifted[:, None], shifted[None]).astype(np.float64) > iou
        removed = np.zeros(len(order), bool)
        for i in range(len(order)):
            if not removed[i] and len(keep) < max_det:
                keep.append(i)
                removed |= over[i]
        return order[np.asarray(keep, np.int64)]
    left = np.arange(len(order))
    while left.size and len(keep) < max_det:
        i, left = left[0], left[1:]
        keep.append(int(i))
        left = left[_iou(shifted[i], shifted[left]).astype(np.float64) <= iou]
    return order[np.asarray(keep, np.int64)]


def scale_boxes(xyxy: np.ndarray, input_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Boxes on the letterboxed input back on the image: less the padding, divided by each side's gain (as
    the letterbox rounded it), clipped to the image. Modifies and returns ``xyxy``."""
    (h1, w1), (h0, w0) = input_hw, image_hw
    gain = min(h1 / h0, w1 / w0)
    new_h, new_w = max(round(h0 * gain), 1), max(round(w0 * gain), 1)
    pad_x, pad_y = round((w1 - new_w) / 2 - 0.1), round((h1 - new_h) / 2 - 0.1)
    xyxy[:, [0, 2]] -= pad_x
    xyxy[:, [1, 3]] -= pad_y
    xyxy[:, [0, 2]] /= new_w / w0
    xyxy[:, [1, 3]] /= new_h / h0
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w0)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h0)
    return xyxy


def detections_of(out: np.ndarray, input_hw: tuple[int, int], image: np.ndarray, settings: Any,
                  names: dict[int, str]) -> Detections:
    """One image's detections from its slice of the graph's output (4 + classes rows: cx, cy, w, h, then
    each class's score, by anchor), down to the floor, after NMS, on the image."""
    scores = out[4:]
    conf = scores.max(axis=0)
    candidates = np.flatnonzero(conf > settings.conf_floor)
    if len(candidates) > MAX_NMS:
        candidates = candidates[np.argsort(-conf[candidates], kind="stable")[:MAX_NMS]]
    cls = scores[:, candidates].argmax(axis=0)
    conf = conf[candidates]
    xywh = out[:4, candidates].T
    half = xywh[:, 2:] / 2
    xyxy = np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)
    kept = nms(xyxy, conf, cls, float(settings.iou), int(settings.max_det))
    boxes = scale_boxes(xyxy[kept], input_hw, image.shape[:2])
    return Detections(boxes, conf[kept], cls[kept], None, names, (int(image.shape[1]), int(image.shape[0])))


class LeanDetectPredictor:
    """An Ultralytics detect graph run by ONNX Runtime with numpy pre- and post-processing (no torch).

    Implements :class:`~musseltools.models.base.Predictor`. ``session``: the graph's ONNX Runtime session
    (:func:`~musseltools.models.onnx.session`, one per graph and thread count in a process); ``imgsz``
    (height, width) and ``stride``: the letterbox's, as the torch predictor had them (:func:`geometry_of`).
    Images are batched only with images of the same input shape, as the torch predictor does.
    """

    def __init__(self, session: Any, *, names: dict[int, str], settings: Any, imgsz: Sequence[int], stride: int,
                 threads: int, device: str = "cpu", task: str = "detect") -> None:
        self.session, self.settings = session, settings
        self.names, self.task, self.device, self.threads = dict(names), task, device, threads
        self.imgsz, self.stride = (int(imgsz[0]), int(imgsz[1])), int(stride)
        self.batch_size: int | None = None
        #: What ran the network for the results returned so far (``runtimes_used``).
        self.ran: set[str] = set()
        self._input = session.get_inputs()[0].name
        self._lock = threading.Lock()  # one forward at a time, as the torch predictor

    def prepare(self, image: np.ndarray) -> Prepared:
        """Letterbox one BGR image (thread-safe: no state)."""
        return Prepared(image=image, tensor=letterbox(image, self.imgsz, self.stride))

    def predict(self, batch: Sequence[Prepared]) -> list[Detections]:
        """Detections for each prepared image, down to the confidence floor, in input order. A tensor made
        by the torch predictor's ``prepare`` (the same letterbox) is taken too."""
        out: list[Detections | None] = [None] * len(batch)
        groups: dict[tuple[int, ...], list[int]] = {}
        tensors = [np.asarray(item.tensor, dtype=np.float32) for item in batch]
        for i, x in enumerate(tensors):
            groups.setdefault(tuple(x.shape), []).append(i)
        for shape, same in groups.items():
            step = self.batch_size or len(same)
            for k in range(0, len(same), step):
                idx = same[k : k + step]
                x = tensors[idx[0]] if len(idx) == 1 else np.concatenate([tensors[i] for i in idx])
                with self._lock:
                    preds = self.session.run(None, {self._input: x})[0]
                for row, i in enumerate(idx):
                    out[i] = detections_of(preds[row], shape[2:], batch[i].image, self.settings, self.names)
        self.ran.add("onnxruntime")
        return out  # type: ignore[return-value]

    def images_per_call(self, batch_size: int) -> int:
        """Images handed to :meth:`predict` at once: one model batch."""
        return batch_size

    def measure_batch_size(self, sample: Prepared) -> int:
        """The fastest of batch 1, 2 and 4 on ``sample`` (ONNX Runtime on a CPU)."""
        return fastest_batch_size(self, sample, (1, 2, 4))


def geometry_of(predictor: Any) -> dict[str, Any] | None:
    """What the lean letterbox needs of a torch predictor (``YoloPredictor.input_geometry``), as a record
    keeps it: the input size (height, width) and the stride; None when it has none (not a model the lean
    predictor runs)."""
    geometry = predictor.input_geometry() if hasattr(predictor, "input_geometry") else None
    if geometry is None:
        return None
    imgsz, stride = geometry
    return {"imgsz": [int(imgsz[0]), int(imgsz[1])], "stride": int(stride), "postprocess": POSTPROCESS}
