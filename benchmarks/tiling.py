"""Tiled inference on large quadrat photographs: with and without tiles, musseltools against SAHI.

On large images with known mussels (YOLO label files), the same weights, the same tile size,
overlap and model input size:

- **whole**: the image squeezed into one model input (no tiling), musseltools' ``Predictor``;
- **musseltools**: ``TiledPredictor`` (tiles batched through the model, seams merged), once per
  merge method (``edge``, the default; ``ios``; ``nmm``, which also merges within a tile as SAHI
  does), detections kept down to the 0.01 floor and counted at ``--threshold``;
- **sahi**: SAHI's ``get_sliced_prediction`` (one forward pass per tile, its default ``batch_size=1``;
  greedy NMM with intersection over the smaller box 0.5, no extra full-image pass), at confidence
  ``--threshold`` as a SAHI user would run it.

Images are decoded once before timing; every method is warmed up once; a method's time is the best
of ``--repeat`` passes over all images (passes alternate between methods), and all methods run on
the same number of torch threads (``--threads``, 1 by default: on a shared 2-core machine two
threads per process oversubscribe the cores and the timings measure the contention).
Recall is the share of labelled mussels matched one-to-one (greedy by confidence) by a detection of
the same class with IoU >= 0.5; count error is predicted minus true count per image and class.
Prints a table and a last line ``ratio_vs_sahi=X.XX`` (musseltools' default merge images/s over
SAHI's images/s).

    python benchmarks/tiling.py                                # demo quadrats (> 2000 px) and demo model
    python benchmarks/tiling.py --images DIR --model W.pt --tile 320 --overlap 0.2 --threshold 0.5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musseltools.detections import Detections  # noqa: E402

CLASSES = {0: "live", 1: "dead"}


# ---------------------------------------------------------------------------------------------- truth
@dataclass
class Image:
    name: str
    bgr: np.ndarray
    boxes: np.ndarray  # (N, 4) xyxy pixels
    classes: np.ndarray  # (N,)


def load_images(folder: Path, labels: Path, min_side: int, limit: int | None) -> list[Image]:
    import cv2

    from musseltools.collection import IMAGE_SUFFIXES

    out = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None or max(bgr.shape[:2]) <= min_side:
            continue
        h, w = bgr.shape[:2]
        label = labels / f"{path.stem}.txt"
        rows = np.loadtxt(label, ndmin=2) if label.exists() and label.stat().st_size else np.zeros((0, 5))
        cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        out.append(Image(path.name, bgr, boxes, rows[:, 0].astype(int)))
        if limit and len(out) >= limit:
            break
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def matched(det_boxes: np.ndarray, det_conf: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> int:
    """Labelled boxes matched one-to-one by detections (greedy in decreasing confidence)."""
    if not len(det_boxes) or not len(truth):
        return 0
    m = iou_matrix(det_boxes[np.argsort(-det_conf, kind="stable")], truth)
    taken = np.zeros(len(truth), bool)
    n = 0
    for row in m:
        row = np.where(taken, -1, row)
        j = int(np.argmax(row))
        if row[j] >= iou:
            taken[j] = True
            n += 1
    return n


@dataclass
class Score:
    found: int = 0
    truth: int = 0
    abs_count_error: float = 0.0
    count_error: float = 0.0
    n_pred: int = 0

    def add(self, det: Detections, image: Image, threshold: float) -> None:
        d = det.above(threshold)
        for c in CLASSES:
            t = image.boxes[image.classes == c]
            sel = d.class_id == c
            self.found += matched(d.xyxy[sel], d.confidence[sel], t)
            self.truth += len(t)
            self.count_error += int(sel.sum()) - len(t)
            self.abs_count_error += abs(int(sel.sum()) - len(t))
            self.n_pred += int(sel.sum())


# ---------------------------------------------------------------------------------------------- methods
def timed(fns: list[Callable[[Image], Detections]], images: list[Image], repeat: int,
          threads: int) -> list[tuple[float, list]]:
    """Images/s (best pass) and detections of each method; passes alternate between methods so that
    a busy spell of a shared machine does not fall on one method only."""
    import torch

    for fn in fns:
        torch.set_num_threads(threads)
        fn(images[0])  # warm-up (model set up, kernels warm, batch size measured)
    best = [float("inf")] * len(fns)
    dets: list[list] = [[] for _ in fns]
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            torch.set_num_threads(threads)  # Ultralytics' set-up resets it: same threads for every method
            t0 = time.perf_counter()
            dets[k] = [fn(im) for im in images]
            best[k] = min(best[k], time.perf_counter() - t0)
    return [(len(images) / b, d) for b, d in zip(best, dets)]


def musseltools_fn(weights: str, imgsz: int, tile: int | None, overlap: float, merge: str, batch: int | None,
                   threads: int, iou: float) -> tuple[Callable[[Image], Detections], dict]:
    from musseltools.models import InferenceSettings, TiledPredictor, load_model, make_predictor

    model = load_model(weights)
    settings = InferenceSettings(imgsz=imgsz, tile=tile, tile_overlap=overlap, iou=iou, tile_merge=merge)
    info: dict = {}
    if tile is None:
        p = make_predictor(model, settings, threads=threads)
        return (lambda im: p.predict([p.prepare(im.bgr)])[0]), info
    inner = make_predictor(model, InferenceSettings(imgsz=imgsz, tile_overlap=overlap, iou=iou), threads=threads)
    p = TiledPredictor(inner, settings)

    def fn(im: Image) -> Detections:
        prepared = p.prepare(im.bgr)
        if p.batch_size is None:
            p.batch_size = batch or p.measure_batch_size(prepared)
            info["batch"] = p.batch_size
        return p.predict([prepared])[0]

    return fn, info


def sahi_fn(weights: str, imgsz: int, tile: int, overlap: float, threshold: float, device: str, iou: float,
            batch: int = 1) -> Callable[[Image], Detections]:
    from sahi import AutoDetectionModel
    from sahi.predict import get_sliced_prediction

    model = AutoDetectionModel.from_pretrained(model_type="ultralytics", model_path=weights, device=device,
                                               confidence_threshold=threshold, image_size=imgsz)
    model.model.overrides["iou"] = iou  # the per-slice NMS IoU (SAHI passes only conf and imgsz)

    def fn(im: Image) -> Detections:
        rgb = np.ascontiguousarray(im.bgr[:, :, ::-1])
        res = get_sliced_prediction(rgb, model, slice_height=tile, slice_width=tile, overlap_height_ratio=overlap,
                                    overlap_width_ratio=overlap, perform_standard_pred=False, verbose=0,
                                    batch_size=batch)
        preds = res.object_prediction_list
        xyxy = np.array([p.bbox.to_xyxy() for p in preds], np.float32).reshape(-1, 4)
        return Detections(xyxy, [p.score.value for p in preds], [p.category.id for p in preds], names=CLASSES,
                          image_size=(im.bgr.shape[1], im.bgr.shape[0]))

    return fn


# ---------------------------------------------------------------------------------------------- main
def model_imgsz(weights: str) -> int:
    import torch

    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    return int((ckpt.get("train_args") or {}).get("imgsz", 640))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=ROOT / "data/demo/images")
    ap.add_argument("--labels", type=Path, help="YOLO label folder (default: IMAGES/../labels)")
    ap.add_argument("--model", default=str(ROOT / "data/models/mussel-demo.pt"))
    ap.add_argument("--imgsz", type=int, help="model input size (default: the size the model was trained at)")
    ap.add_argument("--tile", type=int, help="tile size in pixels (default: the model input size)")
    ap.add_argument("--overlap", type=float, default=0.2)
    ap.add_argument("--threshold", type=float, default=0.5, help="confidence at which mussels are counted")
    ap.add_argument("--iou", type=float, default=0.7, help="NMS IoU within a tile (whole image), for every method")
    ap.add_argument("--min-side", type=int, default=2000, help="use images whose longest side exceeds this")
    ap.add_argument("--limit", type=int, help="at most this many images")
    ap.add_argument("--batch-size", type=int, help="tiles per forward pass for musseltools (default: measured)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every method (1: on a busy machine more threads time the contention)")
    ap.add_argument("--sahi-batch", type=int, help="also time SAHI with this batch_size (its default is 1)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--device", default=None, help="cpu, cuda:0 (default: the fastest available)")
    ap.add_argument("--no-sahi", action="store_true", help="skip SAHI (when it is not installed)")
    args = ap.parse_args(argv)

    from musseltools.models import default_device

    device = args.device or default_device()
    labels = args.labels or args.images.parent / "labels"
    imgsz = args.imgsz or model_imgsz(args.model)
    tile = args.tile or imgsz
    images = load_images(args.images, labels, args.min_side, args.limit)
    if not images:
        sys.exit(f"no image larger than {args.min_side} px in {args.images} — pass --images or --min-side")
    n_truth = sum(len(im.boxes) for im in images)
    sizes = sorted({f"{im.bgr.shape[1]}x{im.bgr.shape[0]}" for im in images})
    print(f"{len(images)} images ({', '.join(sizes)}), {n_truth} labelled mussels; model {Path(args.model).name} "
          f"at imgsz {imgsz}, NMS IoU {args.iou}; tiles {tile} px, overlap {args.overlap}; counted at conf >= "
          f"{args.threshold}; "
          f"{args.threads} torch threads on {device}")

    methods: list[tuple[str, Callable[[], tuple[Callable, dict]]]] = [
        ("whole image (no tiles)", lambda: musseltools_fn(args.model, imgsz, None, args.overlap, "edge", None,
                                                          args.threads, args.iou)),
        ("musseltools tiled, merge=edge", lambda: musseltools_fn(args.model, imgsz, tile, args.overlap, "edge",
                                                                 args.batch_size, args.threads, args.iou)),
        ("musseltools tiled, merge=ios", lambda: musseltools_fn(args.model, imgsz, tile, args.overlap, "ios",
                                                                args.batch_size, args.threads, args.iou)),
        ("musseltools tiled, merge=nmm", lambda: musseltools_fn(args.model, imgsz, tile, args.overlap, "nmm",
                                                                args.batch_size, args.threads, args.iou)),
    ]
    if not args.no_sahi:
        if args.sahi_batch:
            methods.append((f"sahi, batch_size={args.sahi_batch}", lambda: (
                sahi_fn(args.model, imgsz, tile, args.overlap, args.threshold, device, args.iou,
                        args.sahi_batch), {})))
        methods.append(("sahi get_sliced_prediction", lambda: (
            sahi_fn(args.model, imgsz, tile, args.overlap, args.threshold, device, args.iou), {})))
    made = [make() for _, make in methods]
    results = timed([fn for fn, _ in made], images, args.repeat, args.threads)
    rows = []
    for (name, _), (_, info), (rate, dets) in zip(methods, made, results):
        score = Score()
        for det, im in zip(dets, images):
            score.add(det, im, args.threshold)
        rows.append((name, rate, score, info))

    print()
    print(f"{'method':32s} {'images/s':>9s} {'recall':>7s} {'precision':>9s} {'count err':>10s} "
          f"{'|err|/img':>10s} {'batch':>6s}")
    for name, rate, s, info in rows:
        precision = s.found / s.n_pred if s.n_pred else 0.0
        print(f"{name:32s} {rate:9.3f} {s.found / max(s.truth, 1):7.3f} {precision:9.3f} {s.count_error:+10.0f} "
              f"{s.abs_count_error / len(images):10.1f} {info.get('batch', ''):>6}")
    print("count err: predicted minus labelled mussels over all images and classes; |err|/img: mean absolute "
          "error per image, summed over classes")
    ours = rows[1]
    if not args.no_sahi:
        sahi = rows[-1]
        ratio = ours[1] / sahi[1]
        print(f"musseltools (merge=edge) vs SAHI: {ratio:.2f}x the images/s, recall {ours[2].found / n_truth:.3f} vs "
              f"{sahi[2].found / n_truth:.3f}")
        print(f"ratio_vs_sahi={ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
