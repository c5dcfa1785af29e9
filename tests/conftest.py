"""Shared fixtures: tiny YOLO models built from yaml, small generated images, a temporary store.

No network and no downloaded weights: models are built from Ultralytics' yaml definitions, their
batch-norm statistics calibrated on random input so that an untrained network still gives varied
confidences, and saved to a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np
import pytest

IMGSZ = 128  # small model input keeps the suite fast


def build_tiny_model(path: Path, task: str = "detect", seed: int = 0, names=("live", "dead")) -> Path:
    """An untrained YOLOv8n (detect, segment or obb) with two classes and varied outputs, saved to ``path``."""
    import torch
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    base = {"detect": "yolov8n.yaml", "segment": "yolov8n-seg.yaml", "obb": "yolov8n-obb.yaml"}[task]
    cfg = yaml_model_load(base)
    cfg["nc"] = len(names)
    cfg.pop("yaml_file", None)
    ypath = path.with_name(f"{path.stem}-{Path(base).stem}.yaml")
    ypath.write_text(yaml.safe_dump(cfg))
    torch.manual_seed(seed)
    model = YOLO(str(ypath))
    net = model.model
    for mod in net.modules():  # calibrate BN so activations neither vanish nor explode
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(2, 3, IMGSZ, IMGSZ))
    net.eval()
    head = net.model[-1]
    for seq in head.cv3:  # class logits: mostly low, some high, so thresholds matter
        torch.nn.init.normal_(seq[-1].weight, 0, 0.25)
        seq[-1].bias.data.fill_(-3.0)
    net.names = dict(enumerate(names))
    model.save(str(path))
    return path


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory):
    """``model_factory(task="detect", seed=0)`` -> path of a tiny saved model (cached per session)."""
    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("models")

    def make(task: str = "detect", seed: int = 0) -> Path:
        key = (task, seed)
        if key not in cache:
            cache[key] = build_tiny_model(root / f"tiny-{task}-{seed}.pt", task=task, seed=seed)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_model(model_factory) -> Path:
    return model_factory("detect")


def make_image(rng: np.random.Generator, size=(128, 96)) -> np.ndarray:
    """A small BGR image: textured background with a few dark and pale ellipses."""
    import cv2

    w, h = size
    img = (rng.random((h, w, 3)) * 80 + 90).astype(np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(6, max(7, w // 5))), int(rng.integers(3, max(4, h // 8))))
        colour = (30, 25, 20) if rng.random() < 0.6 else (200, 210, 220)
        cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    return img


def write_images(folder: Path, n: int, *, seed: int = 0, size=(128, 96), ext: str = "jpg", start: int = 0) -> list[Path]:
    """Write ``n`` distinct generated images ``img0000.jpg``... into ``folder``."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(start, start + n):
        p = folder / f"img{i:04d}.{ext}"
        ok = cv2.imwrite(str(p), make_image(rng, size))
        assert ok
        paths.append(p)
    return paths


@pytest.fixture
def images(tmp_path) -> Path:
    """A folder of 6 small generated images."""
    folder = tmp_path / "images"
    write_images(folder, 6)
    return folder


def _isolate(mp: pytest.MonkeyPatch, folder: Path) -> None:
    mp.chdir(folder)
    mp.setenv("MUSSELTOOLS_BATCH_SIZE", "1")
    mp.delenv("MUSSELTOOLS_STORE", raising=False)
    mp.delenv("MUSSELTOOLS_FAILPOINTS", raising=False)
    mp.setenv("MPLBACKEND", "Agg")
    mp.setenv("MUSSELTOOLS_CACHE", str(folder / "user-cache"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_session(tmp_path_factory):
    """The same isolation for the whole session, set up before any module- or session-scoped fixture
    (a survey built once per module must not write into the real working directory or user cache)."""
    mp = pytest.MonkeyPatch()
    _isolate(mp, tmp_path_factory.mktemp("session"))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test works in its own folder (so the default store is private) with batch size 1 unless a
    test measures it."""
    _isolate(monkeypatch, tmp_path)


#: How many tests the whole suite has, recorded when this session collected the whole of tests/ (make test);
#: tests/test_readme.py checks the README's figure against it.
SUITE_SIZE: dict[str, int] = {}


def pytest_collection_finish(session):
    config = session.config
    whole = [Path(a).resolve() for a in config.args] == [Path(config.rootpath, "tests").resolve()]
    if whole and not config.option.keyword and not config.option.markexpr:
        SUITE_SIZE["tests"] = len(session.items)
