"""A run on a CUDA device counts what a run on the CPU counts (where a GPU is; CI machines have none).

The determinism contract promises bit-identical results only on one device: a GPU's kernels give other last
bits, so counts are compared away from each threshold (no CPU confidence within 1e-3 of it) and matched boxes
within a pixel. Both runs go through ``mt.run(device=...)``, the path a researcher takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import musseltools as mt
from musseltools import synth

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "models" / "mussel-demo.pt"
THRESHOLDS = (0.1, 0.25, 0.5, 0.75)


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cuda-survey")
    synth.generate(out, n=6, seed=5, size=(640, 480))
    return out / "images"


def _runs(frames: Path, tmp_path: Path, **kw) -> tuple[mt.Run, mt.Run]:
    cpu = mt.run(frames, model=DEMO, store=tmp_path / "cpu", device="cpu", quiet=True, **kw)
    torch.cuda.reset_peak_memory_stats()
    gpu = mt.run(frames, model=DEMO, store=tmp_path / "gpu", device="cuda:0", quiet=True, **kw)
    assert torch.cuda.max_memory_allocated() > 0, "the cuda run never used the GPU"
    return cpu, gpu


def _assert_counts_agree(cpu: mt.Run, gpu: mt.Run) -> None:
    a, b = cpu.detections(corrected=False), gpu.detections(corrected=False)
    compared = 0
    for t in THRESHOLDS:
        if np.abs(a["confidence"].to_numpy() - t).min(initial=1.0) <= 1e-3:
            continue  # a CPU score at the threshold's edge may fall either side on the GPU
        ca, cb = cpu.per_image(t, corrected=False), gpu.per_image(t, corrected=False)
        for cat in ("live", "dead"):
            assert ca[cat].tolist() == cb[cat].tolist(), f"{cat} counts differ at threshold {t}"
        compared += 1
    assert compared, "every threshold was at the edge of a CPU score: nothing was compared"
    strong_a = a[a["confidence"] >= 0.5].sort_values(["image_id", "x1", "y1"])
    strong_b = b[b["confidence"] >= 0.5].sort_values(["image_id", "x1", "y1"])
    if len(strong_a) == len(strong_b):
        assert np.allclose(strong_a[["x1", "y1", "x2", "y2"]].to_numpy(), strong_b[["x1", "y1", "x2", "y2"]].to_numpy(),
                           atol=1.0)


def test_a_cuda_run_counts_as_a_cpu_run(frames, tmp_path):
    cpu, gpu = _runs(frames, tmp_path, imgsz=320, tile="none")
    assert cpu.status == gpu.status == "completed"
    assert gpu.meta["failed_count"] == 0
    _assert_counts_agree(cpu, gpu)


def test_a_tiled_cuda_run_counts_as_a_tiled_cpu_run(frames, tmp_path):
    cpu, gpu = _runs(frames, tmp_path, imgsz=320, tile=320)
    _assert_counts_agree(cpu, gpu)
