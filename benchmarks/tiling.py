"""Tiled inference on large quadrat photographs: musseltools against SAHI, for counts and for speed.

On large images with known mussels (YOLO label files), the same weights, tile size, overlap, model
input size and NMS IoU (by default those of the weights' card, ``data/models/mussel-demo.yaml``):

**Counts** (each method on images decoded once, one torch thread each, best of ``--repeat`` passes):

- **whole**: the image squeezed into one model input (no tiling);
- **musseltools, merge=M**: ``TiledPredictor`` (tiles batched, seams merged) once per merge method
  (``edge``, ``ios``, ``nmm``; see ``musseltools.models.tiling``), detections kept down to the 0.01
  floor and counted at the thresholds (per class: the card's);
- **sahi**: SAHI's ``get_sliced_prediction`` (one forward pass per tile, its default ``batch_size=1``;
  greedy NMM, intersection over the smaller box 0.5, no full-image pass) at the lowest of the
  thresholds, then each class at its own; this is also the model-only ceiling's peer.

Recall: labelled mussels matched one to one (greedy by confidence) by a detection of their class with
IoU >= 0.5; count error: predicted minus labelled, per image and class, summed (and its absolute value).

**Speed, end to end** (from the call to the last result, loading the model and starting workers
included; each contender with its own default torch threads):

- SAHI: ``AutoDetectionModel.from_pretrained`` and ``get_sliced_prediction`` for each image file;
- musseltools with 1 worker (``workers=1``: this process);
- musseltools with the default workers (what ``musseltools run`` chooses);
- musseltools on a Dask ``LocalCluster`` (one worker process per core, one thread each);
- the model-only ceiling: the tiled predictor on decoded images in this process (no store);
- with ``--onnx``, musseltools with ``backend="onnx"`` and the default workers (its graph exported and checked
  once before timing, and copied into each fresh store, as a store keeps it).

The last line is ``ratio_vs_sahi=X.XX``: musseltools' default end to end over SAHI end to end.

    python benchmarks/tiling.py                        # the 3 demo quadrats (> 2000 px) and the demo model
    python benchmarks/tiling.py --synth 8              # 8 generated 4000x3000 quadrats (seed 77)
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

from musseltools.core.detections import Detections  # noqa: E402

CLASSES = {0: "live", 1: "dead"}
#: torch's default number of threads in this process (set in main, before any method pins it).
DEFAULT_THREADS = 1


# ---------------------------------------------------------------------------------------------- truth
@dataclass
class Image:
    name: str
    bgr: np.ndarray
    boxes: np.ndarray  # (N, 4) xyxy pixels
    classes: np.ndarray  # (N,)


def load_images(folder: Path, labels: Path, min_side: int, limit: int | None) -> list[Image]:
    import cv2

    from musseltools.images.collection import IMAGE_SUFFIXES

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

    def add(self, det: Detections, image: Image, threshold: float | dict[int, float]) -> None:
        """Score one image's detections at a threshold (one, or one per class id)."""
        per_class = threshold if isinstance(threshold, dict) else {c: threshold for c in CLASSES}
        for c in CLASSES:
            d = det.above(per_class[c])
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


# ---------------------------------------------------------------------------------------------- end to end
def sahi_installed() -> bool:
    """Whether SAHI, the peer of the SAHI rows, can be imported; if not, says how to install it."""
    import importlib.util

    if importlib.util.find_spec("sahi") is not None:
        return True
    print("SAHI is not installed: its rows are left out — `make bench`, or `pip install -c "
          "requirements/constraints.txt \".[bench]\"`, installs it", file=sys.stderr)
    return False


def e2e_sahi(paths: list[Path], weights: str, imgsz: int, tile: int, overlap: float, threshold: float, iou: float,
             device: str, threads: int | None = None) -> float:
    """Images/s of SAHI from its model load to the last image's prediction, images read from disk.

    As a user runs it, SAHI's Ultralytics model sets torch's threads when it loads (Ultralytics'
    ``NUM_THREADS``: cores - 1, at most 8, also when its predictor is set up); ``threads`` sets them after
    a first prediction on a blank tile instead.
    """
    import cv2
    import torch

    torch.set_num_threads(DEFAULT_THREADS)  # torch's own default (the counts table pinned 1)
    t0 = time.perf_counter()
    fn = sahi_fn(weights, imgsz, tile, overlap, threshold, device, iou)
    if threads:  # Ultralytics sets them again when its predictor is set up, on the first prediction
        fn(Image("warm-up", np.zeros((tile, tile, 3), np.uint8), np.zeros((0, 4)), np.zeros(0, int)))
        torch.set_num_threads(threads)
    for path in paths:
        fn(Image(path.name, cv2.imread(str(path)), np.zeros((0, 4)), np.zeros(0, int)))
    return len(paths) / (time.perf_counter() - t0)


def e2e_musseltools(folder: Path, weights: str, settings: dict, graphs: Path | None = None,
                    **how) -> tuple[float, str]:
    """Images/s of ``mt.run`` into a fresh store (every image inferred), and the executor it used; ``graphs``:
    ONNX graphs (exported and checked before) copied into the store's cache first, as a store keeps them."""
    import shutil
    import tempfile

    import musseltools as mt

    with tempfile.TemporaryDirectory() as store:
        if graphs is not None:
            shutil.copytree(graphs, Path(store) / "cache" / "onnx")
        t0 = time.perf_counter()
        run = mt.run(folder, model=weights, store=store, quiet=True, **settings, **how)
        dt = time.perf_counter() - t0
        meta = run.meta
    assert meta["inferred_this_call"] == meta["total_images"], meta
    return meta["total_images"] / dt, str(meta.get("executor"))


def _onnx_graphs(folder: Path, weights: str, settings: dict) -> Path:
    """A folder of the ONNX graph musseltools exports and checks for these settings (one run into a store kept
    for it); the timed ``backend=onnx`` runs copy it into their fresh stores."""
    import tempfile

    import musseltools as mt

    store = Path(tempfile.mkdtemp(prefix="mt-tiling-onnx-"))
    run = mt.run(folder, model=weights, store=store, quiet=True, workers=1, backend="onnx", **settings)
    used = run.meta.get("inferred_with")
    if not any("onnxruntime" in str(u) for u in used or ()):
        raise SystemExit(f"backend=onnx was not used for the tiles ({used}): see the run's log")
    return store / "cache" / "onnx"


def _cluster():
    """One Dask worker process per core (LocalCluster's nannies start them), 1 thread each: with
    ``worker_class=distributed.Worker`` its workers would be threads of this process, sharing its interpreter."""
    from distributed import Client, LocalCluster

    from musseltools.executors import cpu_cores

    cluster = LocalCluster(n_workers=cpu_cores(), threads_per_worker=1, processes=True, dashboard_address=None)
    return cluster, Client(cluster)


def synth_quadrats(n: int, seed: int) -> Path:
    """``n`` generated 4000x3000 quadrat photographs with YOLO labels, in a temporary folder."""
    import tempfile

    from musseltools import synth

    out = Path(tempfile.mkdtemp(prefix="mt-tiling-")) / "quadrats"
    synth.generate(out, n=n, seed=seed, large=n)
    return out / "images"


# ---------------------------------------------------------------------------------------------- main
def model_imgsz(weights: str) -> int:
    import torch

    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    return int((ckpt.get("train_args") or {}).get("imgsz", 640))


def card_settings(weights: str) -> dict:
    """The weights' card's recommendations (musseltools.models.card), or {}."""
    from musseltools.models import read_card

    card = read_card(weights)
    return dict(card.recommended) if card is not None else {}


def counts_table(args: argparse.Namespace, images: list[Image], imgsz: int, tile: int,
                 thresholds: dict[int, float], device: str) -> list[tuple[str, float, Score, dict]]:
    """Count error and per-process speed of each merge method, whole images and SAHI (one table)."""
    methods: list[tuple[str, Callable[[], tuple[Callable, dict]]]] = [
        ("whole image (no tiles)", lambda: musseltools_fn(args.model, imgsz, None, args.overlap, "edge", None,
                                                          args.threads, args.iou)),
    ]
    for merge in ("edge", "ios", "nmm"):
        methods.append((f"musseltools, merge={merge}", lambda m=merge: musseltools_fn(
            args.model, imgsz, tile, args.overlap, m, args.batch_size, args.threads, args.iou)))
    if not args.no_sahi:
        methods.append(("sahi get_sliced_prediction", lambda: (
            sahi_fn(args.model, imgsz, tile, args.overlap, min(thresholds.values()), device, args.iou), {})))
    made = [make() for _, make in methods]
    results = timed([fn for fn, _ in made], images, args.repeat, args.threads)
    rows = []
    for (name, _), (_, info), (rate, dets) in zip(methods, made, results):
        score = Score()
        for det, im in zip(dets, images):
            score.add(det, im, thresholds)
        rows.append((name, rate, score, info))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Length: argument parsing, two tables and their explanation, in the order they print."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=ROOT / "data/demo/images")
    ap.add_argument("--synth", type=int, metavar="N", help="use N generated 4000x3000 quadrats instead of --images")
    ap.add_argument("--labels", type=Path, help="YOLO label folder (default: IMAGES/../labels)")
    ap.add_argument("--model", default=str(ROOT / "data/models/mussel-demo.pt"))
    ap.add_argument("--imgsz", type=int, help="model input size (default: the size the model was trained at)")
    ap.add_argument("--tile", type=int, help="tile size in pixels (default: the model input size)")
    ap.add_argument("--overlap", type=float, help="tile overlap (default: the card's, else 0.2)")
    ap.add_argument("--threshold", type=float, help="count at this confidence (default: the card's per class)")
    ap.add_argument("--iou", type=float, help="NMS IoU within a tile, for every method (default: the card's)")
    ap.add_argument("--min-side", type=int, default=2000, help="use images whose longest side exceeds this")
    ap.add_argument("--limit", type=int, help="at most this many images")
    ap.add_argument("--batch-size", type=int, help="tiles per forward pass for musseltools (default: measured)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each method in the counts table")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--device", default=None, help="cpu, cuda:0 (default: the fastest available)")
    ap.add_argument("--no-sahi", action="store_true", help="skip SAHI (when it is not installed)")
    ap.add_argument("--no-dask", action="store_true", help="leave out the Dask LocalCluster row")
    ap.add_argument("--onnx", action="store_true", help="add musseltools with backend=onnx (default workers), its "
                    "graph exported and checked once before timing")
    args = ap.parse_args(argv)
    args.no_sahi = args.no_sahi or not sahi_installed()

    global DEFAULT_THREADS
    import torch

    from musseltools.models import default_device

    DEFAULT_THREADS = torch.get_num_threads()  # before any method pins it
    card = card_settings(args.model)
    args.iou = args.iou or card.get("iou", 0.7)
    args.overlap = args.overlap if args.overlap is not None else card.get("tile_overlap", 0.2)
    rec = card.get("threshold", 0.5)
    by_name = rec if isinstance(rec, dict) else {c: rec for c in CLASSES.values()}
    if args.threshold is not None:
        by_name = {c: args.threshold for c in CLASSES.values()}
    thresholds = {k: float(by_name[name]) for k, name in CLASSES.items()}
    merge = card.get("tile_merge", "edge")
    device = args.device or default_device()
    folder = synth_quadrats(args.synth, 77) if args.synth else args.images
    labels = args.labels or folder.parent / "labels"
    imgsz = args.imgsz or model_imgsz(args.model)
    tile = args.tile or imgsz
    images = load_images(folder, labels, args.min_side, args.limit)
    if not images:
        sys.exit(f"no image larger than {args.min_side} px in {folder} — pass --images or --min-side")
    n_truth = sum(len(im.boxes) for im in images)
    sizes = sorted({f"{im.bgr.shape[1]}x{im.bgr.shape[0]}" for im in images})
    print(f"{len(images)} images ({', '.join(sizes)}), {n_truth} labelled mussels; model {Path(args.model).name} "
          f"at imgsz {imgsz}, NMS IoU {args.iou}; tiles {tile} px, overlap {args.overlap}; counted at "
          f"{', '.join(f'{CLASSES[k]} {t}' for k, t in thresholds.items())}; {device}")

    rows = counts_table(args, images, imgsz, tile, thresholds, device)
    print(f"\ncounts ({args.threads} torch thread per method, images decoded once)")
    print(f"{'method':32s} {'images/s':>9s} {'recall':>7s} {'precision':>9s} {'count err':>10s} "
          f"{'|err|':>7s} {'batch':>6s}")
    for name, rate, sc, info in rows:
        precision = sc.found / sc.n_pred if sc.n_pred else 0.0
        print(f"{name:32s} {rate:9.3f} {sc.found / max(sc.truth, 1):7.3f} {precision:9.3f} {sc.count_error:+10.0f} "
              f"{sc.abs_count_error:7.0f} {info.get('batch', ''):>6}")
    print("count err: predicted minus labelled mussels over all images and classes; |err|: the sum of absolute "
          "errors per image and class")

    print(f"\nend to end (call to last result; merge={merge}; each contender's own torch threads: SAHI's "
          f"Ultralytics model sets cores - 1, torch's default here is {DEFAULT_THREADS})")
    paths = [folder / im.name for im in images]
    run_folder = folder
    if len(paths) != len(list(p for p in folder.iterdir() if p.is_file())):  # only the large images
        import tempfile

        run_folder = Path(tempfile.mkdtemp(prefix="mt-tiling-large-"))
        for p in paths:
            (run_folder / p.name).symlink_to(p.resolve())
    settings = {"imgsz": imgsz, "tile": tile, "tile_overlap": args.overlap, "iou": args.iou, "tile_merge": merge}
    e2e_musseltools(run_folder, args.model, settings, workers=1)  # warm-up: page cache, batch size measured
    graphs = _onnx_graphs(run_folder, args.model, settings) if args.onnx else None
    speeds: list[tuple[str, float]] = []
    if not args.no_sahi:
        import torch

        torch.set_num_threads(DEFAULT_THREADS)
        speeds.append(("sahi (its default torch threads)", e2e_sahi(
            paths, args.model, imgsz, tile, args.overlap, min(thresholds.values()), args.iou, device)))
        speeds.append((f"sahi, torch threads set to {DEFAULT_THREADS} after its set-up", e2e_sahi(
            paths, args.model, imgsz, tile, args.overlap, min(thresholds.values()), args.iou, device, DEFAULT_THREADS)))

    speeds.append(("musseltools, 1 worker", e2e_musseltools(run_folder, args.model, settings, workers=1)[0]))
    default, executor = e2e_musseltools(run_folder, args.model, settings)
    speeds.append((f"musseltools, default: {executor}", default))
    if args.onnx:
        speeds.append(("musseltools, default workers, backend=onnx",
                       e2e_musseltools(run_folder, args.model, {**settings, "backend": "onnx"}, graphs)[0]))
    if not args.no_dask:
        cluster, client = _cluster()
        try:
            speeds.append(("musseltools, Dask LocalCluster", e2e_musseltools(run_folder, args.model, settings,
                                                                            client=client)[0]))
        finally:
            client.close()
            cluster.close()
    ceiling = next(rate for name, rate, _, _ in rows if name == f"musseltools, merge={merge}")
    speeds.append((f"model only, tiles batched ({args.threads} thread)", ceiling))
    base = speeds[0][1] if not args.no_sahi else None
    for name, rate in speeds:
        ratio = f"x{rate / base:.2f}" if base else ""
        print(f"{name:56s} {rate:8.3f} images/s {ratio}")
    if base:
        forced = speeds[1][1]
        print(f"musseltools default vs SAHI with {DEFAULT_THREADS} torch threads: x{default / forced:.2f}")
        print(f"ratio_vs_sahi={default / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
