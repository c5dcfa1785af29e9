"""Throughput of musseltools against plain Ultralytics on the same weights and images.

In one process, on the same images and weights:

(a) ``YOLO(w).predict(source=dir, stream=True)``, as a user would write it (Ultralytics defaults);
(b) musseltools end to end: ``mt.run(dir, model=w)`` into a fresh store (scan + SHA-256, decode,
    inference down to the 0.01 confidence floor, Parquet commits, run metadata, Zarr cube);
(c) model only: forward + NMS on images already decoded and letterboxed (the ceiling).

Each is warmed up once first (model loaded, kernels warm, the batch size measured once per
machine); timings are the best of ``--repeat`` passes. Prints images/s, the ratios b/a and b/c, and
a last line ``ratio_vs_ultralytics=X.XX``.

    python benchmarks/throughput.py                      # demo images and demo model
    python benchmarks/throughput.py IMAGES --model W.pt --imgsz 640 --repeat 3
    python benchmarks/throughput.py --synth 200          # 200 generated survey frames (seed 7)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def _images(folder: Path) -> list[Path]:
    from musseltools.collection import IMAGE_SUFFIXES

    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def bench_ultralytics(folder: Path, weights: str, imgsz: int | None) -> float:
    from ultralytics import YOLO

    model = YOLO(weights)
    n = 0
    size = {"imgsz": imgsz} if imgsz else {}  # default: the model's training size, as a user would get
    t0 = time.perf_counter()
    for _ in model.predict(source=str(folder), stream=True, verbose=False, **size):
        n += 1
    return n / (time.perf_counter() - t0)


def bench_musseltools(folder: Path, weights: str, imgsz: int | None) -> tuple[float, dict]:
    import musseltools as mt

    with tempfile.TemporaryDirectory() as store:
        t0 = time.perf_counter()
        run = mt.run(folder, model=weights, imgsz=imgsz, store=store, quiet=True)
        dt = time.perf_counter() - t0
        meta = run.meta
    assert meta["inferred_this_call"] == meta["total_images"], meta
    return meta["total_images"] / dt, meta


def bench_model_only(folder: Path, weights: str, imgsz: int, batch_size: int) -> float:
    import cv2

    from musseltools.models import InferenceSettings, load_model, make_predictor

    predictor = make_predictor(load_model(weights), InferenceSettings(imgsz=imgsz))
    prepared = [predictor.prepare(cv2.imread(str(p))) for p in _images(folder)]
    t0 = time.perf_counter()
    for i in range(0, len(prepared), batch_size):
        predictor.predict(prepared[i : i + batch_size])
    return len(prepared) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="?", default=str(ROOT / "data" / "demo" / "images"))
    ap.add_argument("--model", default=str(ROOT / "data" / "models" / "mussel-demo.pt"))
    ap.add_argument("--imgsz", type=int, help="model input size (default: the model's training size)")
    ap.add_argument("--repeat", type=int, default=2, help="passes per contender; the best is kept")
    ap.add_argument("--synth", type=int, metavar="N", help="use N synthetic survey frames instead of IMAGES")
    args = ap.parse_args(argv)
    folder = Path(args.images)
    if args.synth:
        from musseltools import synth

        folder = Path(tempfile.mkdtemp(prefix="mt-bench-")) / "survey"
        synth.generate(folder, n=args.synth, seed=7)
        folder = folder / "images"
    n = len(_images(folder))
    if not n:
        print(f"no images in {folder}", file=sys.stderr)
        return 1
    import torch

    print(f"{n} images in {folder}, weights {args.model}, imgsz {args.imgsz or 'of the model'}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, CUDA {'yes' if torch.cuda.is_available() else 'no'}")

    # warm-up: load everything once, measure musseltools' batch size once per machine
    bench_ultralytics(folder, args.model, args.imgsz)
    _, meta = bench_musseltools(folder, args.model, args.imgsz)
    batch = int(meta.get("batch_size") or 1)
    imgsz = int(meta["settings"]["imgsz"])

    rates: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    for _ in range(args.repeat):  # interleaved so that machine noise hits all three alike
        rates["a"].append(bench_ultralytics(folder, args.model, args.imgsz))
        rates["b"].append(bench_musseltools(folder, args.model, args.imgsz)[0])
        rates["c"].append(bench_model_only(folder, args.model, imgsz, batch))
    a, b, c = (max(rates[k]) for k in "abc")
    print(f"(a) ultralytics predict(source=dir, stream=True)   {a:8.1f} images/s")
    print(f"(b) musseltools run, end to end (batch {batch:<2d})        {b:8.1f} images/s")
    print(f"(c) model only: forward + NMS, pre-decoded      {c:8.1f} images/s")
    print(f"b/a = {b / a:.2f}   b/c = {b / c:.2f}")
    print(f"ratio_vs_ultralytics={b / a:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
