"""The committed demo detector finds most mussels on held-out synthetic frames."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from musseltools import synth

#: starts processes, kernels or models: left out of `make test-fast`
pytestmark = pytest.mark.slow

MODEL = Path(__file__).resolve().parents[1] / "data" / "models" / "mussel-demo.pt"
HELD_OUT_SEED = 90210  # not used for training (1), validation (11) or the model card's test set (21)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box ``a`` against many ``b`` (N, 4)."""
    x0 = np.maximum(a[0], b[:, 0])
    y0 = np.maximum(a[1], b[:, 1])
    x1 = np.minimum(a[2], b[:, 2])
    y1 = np.minimum(a[3], b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter + 1e-9)


def _greedy_matches(pred: np.ndarray, conf: np.ndarray, truth: np.ndarray, thr: float = 0.5) -> int:
    """Number of truth boxes matched by predictions (highest confidence first, IoU >= thr)."""
    if len(pred) == 0 or len(truth) == 0:
        return 0
    free = np.ones(len(truth), bool)
    hits = 0
    for i in np.argsort(-conf, kind="stable"):
        ious = np.where(free, _iou(pred[i], truth), -1.0)
        j = int(np.argmax(ious))
        if ious[j] >= thr:
            free[j] = False
            hits += 1
    return hits


def _truth_boxes(label_file: Path, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.array(
        [[float(v) for v in line.split()] for line in label_file.read_text().splitlines()]
    ).reshape(-1, 5)
    cls = rows[:, 0].astype(int)
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    return cls, np.column_stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])


def test_greedy_matching_helper():
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    pred = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], float)
    assert _greedy_matches(pred, np.array([0.9, 0.8, 0.7]), truth) == 1
    assert _greedy_matches(pred[:0], np.array([]), truth) == 0


def test_demo_model_recall(tmp_path):
    assert MODEL.is_file(), f"{MODEL} is missing — run scripts/train_demo_model.py"
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    counts = synth.generate(tmp_path, n=3, seed=HELD_OUT_SEED, size=(640, 480))
    model = YOLO(str(MODEL))
    assert model.names == {0: "live", 1: "dead"}
    found = {0: 0, 1: 0}
    total = {0: 0, 1: 0}
    for name in counts["image"]:
        res = model.predict(str(tmp_path / "images" / name), verbose=False, device="cpu")[
            0
        ]  # default conf 0.25
        h, w = res.orig_shape
        tcls, tbox = _truth_boxes(tmp_path / "labels" / name.replace(".jpg", ".txt"), w, h)
        pcls = res.boxes.cls.cpu().numpy().astype(int)
        pbox = res.boxes.xyxy.cpu().numpy()
        pconf = res.boxes.conf.cpu().numpy()
        for c in (0, 1):
            total[c] += int((tcls == c).sum())
            found[c] += _greedy_matches(pbox[pcls == c], pconf[pcls == c], tbox[tcls == c])
    assert total[0] >= 10 and total[1] >= 5, total
    recall = {c: found[c] / total[c] for c in (0, 1)}
    assert recall[0] >= 0.8, f"live recall {recall[0]:.2f} ({found[0]}/{total[0]})"
    assert recall[1] >= 0.8, f"dead recall {recall[1]:.2f} ({found[1]}/{total[1]})"
