"""Tile merge methods and NMS IoU by count error: musseltools' ``edge`` / ``ios`` / ``nmm`` next to SAHI.

Which way of merging the duplicates that overlapping tiles create counts mussels best, and with which
NMS IoU? Measured on synthetic quadrat photos with exact labels, from sparse scattered shells to
dense beds where shells overlap.

Scenes
    ``musseltools.synth`` quadrat frames (``--size``, 4000x3000 by default; 20-40 px mussels), one per
    generator seed (``--seeds``; 61, 62, 63 by default: never the demo detector's training,
    validation, calibration or test seeds, nor the demo collection's 2026) and density level:

    - ``sparse``  density 0.4;
    - ``typical`` density 1.0 (the detector's calibration quadrat);
    - ``crowded`` density 5 (many more clusters; the generator's default placement: a new shell may
      cover at most a third of its own area over earlier shells);
    - ``dense``   density 20 with the placement rule relaxed to half of a shell's area
      (``musseltools.synth.frames.MAX_NEW_OVERLAP`` is set to 0.5 while these frames are drawn, and
      restored): a bed of touching, overlapping shells. A shell is labelled only while half of it
      stays visible, with the box of its visible part (the generator's own rule).

    True counts per image and class come from the labels. The script prints, per level, the share of
    labelled shells whose box has a same-class neighbour with intersection over the smaller box (IoS)
    >= 0.5: the pairs that an IoS merge can fuse into one.

musseltools
    For each tile size (``--tiles``: 320 and 640, each at native resolution, i.e. model input size =
    tile size; overlap ``--overlap`` 0.2) and each NMS IoU (``--ious``: 0.7, 0.5, 0.4, 0.3) the tiles
    of ``musseltools.models.tiling.tile_grid`` run once through the model (musseltools' YOLO
    predictor, confidence floor 0.01). The raw tile detections are gathered exactly as
    ``TiledPredictor`` does (shifted into the image, a detection is *cut* when it touches an inner tile
    edge within ``max(2, tile / 64)`` px) and merged with every method of ``MERGE_METHODS`` by the
    public ``merge_tiles`` (then capped at ``max_det`` as ``TiledPredictor``), so the methods differ in
    nothing but the merge. ``--check`` (on by default) verifies on the first scene that this gives
    exactly what ``TiledPredictor`` returns.

SAHI
    ``get_sliced_prediction`` on the same images and the same tiles (its slice grid is checked to be
    the same as ``tile_grid``), with its default postprocess (greedy NMM, IoS 0.5, class by class, no
    full-image pass), the same per-slice NMS IoU, model input size and ``max_det`` (set through the
    Ultralytics overrides, as ``benchmarks/tiling.py`` sets the IoU; SAHI's own ``max_det`` would be
    Ultralytics' 300 per slice, which a 640-px slice of a dense bed exceeds). SAHI takes one confidence:
    it runs at the lowest threshold counted (0.23); counts at higher thresholds filter its output
    class by class. That is exact: Ultralytics' NMS and SAHI's greedy NMM both visit detections by
    decreasing confidence, and whether a detection survives depends only on those more confident than
    it, so filtering at T keeps what a run at confidence T would (musseltools' merges have the same
    property, which is why they run once at the 0.01 floor).

Scoring
    Counts at the recommended per-class thresholds (``--recommended``: live 0.35, dead 0.23) and at a
    single 0.5. Count error = predicted - true, per image and class; tables give its sum (signed) and
    the sum of its absolute value over images x classes, overall and per density level. Recall and
    precision: one-to-one greedy matching by confidence at IoU >= 0.5, same class
    (``benchmarks/tiling.py``'s ``matched``, computed on sparse candidate pairs; ``--check`` compares).
    ``lost`` (musseltools only): labelled shells that some raw tile detection (at the threshold, same
    class) covers with IoU >= 0.5 but no merged detection does: mussels the merge itself removed, the
    mark of over-merging.

Output: tables on stdout, ``benchmarks/results/tile_merge.md`` (the tables) and
``benchmarks/results/tile_merge.json`` (settings, scenes, per image x class numbers, summaries);
last lines: the (method, NMS IoU) with the lowest summed absolute count error for each tile size,
overall and on the dense scenes.

Run on one thread (the machine is shared; the timings are printed)::

    OMP_NUM_THREADS=1 YOLO_OFFLINE=1 python benchmarks/tile_merge.py            # ~25 min
    python benchmarks/tile_merge.py --seeds 61 --size 2000x1500 --ious 0.4 --no-sahi   # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiling as tb  # noqa: E402  (benchmarks/tiling.py: truth loading, matching, SAHI set-up)

from musseltools.core.detections import Detections  # noqa: E402

CLASSES = tb.CLASSES  # {0: "live", 1: "dead"}
MODEL = ROOT / "data" / "models" / "mussel-demo.pt"
#: Per-class thresholds when the weights come with no card (those of the demo detector's card).
DEFAULT_THRESHOLDS = {0: 0.35, 1: 0.23}
RESULTS = ROOT / "benchmarks" / "results"
#: Density levels: name -> (synth density, placement overlap limit or None for the generator's own).
LEVELS: dict[str, tuple[float, float | None]] = {
    "sparse": (0.4, None),
    "typical": (1.0, None),
    "crowded": (5.0, None),
    "dense": (20.0, 0.5),
}
#: Generator seeds: none of the demo detector's (scripts/train_demo_model.py) nor the demo collection's.
SEEDS = (61, 62, 63)
USED_SEEDS = {1, 2, 3, 4, 101, 102, 201, 202, 203, 11, 111, 211, 31, 131, 231, 21, 41, 141, 241, 2026}
MATCH_IOU = 0.5
SAHI = "sahi"


# ---------------------------------------------------------------------------------------------- scenes
@dataclass
class Scene:
    name: str
    seed: int
    level: str
    density: float
    max_overlap: float | None
    image: tb.Image
    stats: dict = field(default_factory=dict)


def pairs_above(a: np.ndarray, b: np.ndarray, thr: float, chunk: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (i of ``a``, j of ``b``) with IoU >= ``thr``, and their IoU (chunked: dense beds hold
    thousands of boxes)."""
    ii, jj, vv = [], [], []
    if len(a) and len(b):
        for s in range(0, len(a), chunk):
            m = tb.iou_matrix(a[s : s + chunk], b)
            i, j = np.nonzero(m >= thr)
            ii.append(i + s)
            jj.append(j)
            vv.append(m[i, j])
    if not ii:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    return np.concatenate(ii), np.concatenate(jj), np.concatenate(vv)


def ios_neighbour_share(boxes: np.ndarray, classes: np.ndarray, thr: float = 0.5, chunk: int = 512) -> float:
    """Share of boxes with a same-class neighbour whose intersection over the smaller box is >= ``thr``."""
    if len(boxes) < 2:
        return 0.0
    has = np.zeros(len(boxes), bool)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for s in range(0, len(boxes), chunk):
        a = boxes[s : s + chunk]
        ix = np.clip(np.minimum(a[:, None, 2], boxes[None, :, 2]) - np.maximum(a[:, None, 0], boxes[None, :, 0]), 0, None)
        iy = np.clip(np.minimum(a[:, None, 3], boxes[None, :, 3]) - np.maximum(a[:, None, 1], boxes[None, :, 1]), 0, None)
        ios = ix * iy / np.maximum(np.minimum(area[s : s + chunk, None], area[None, :]), 1e-9)
        ios[np.arange(len(a)), np.arange(s, s + len(a))] = 0
        ios[classes[s : s + chunk, None] != classes[None, :]] = 0
        has[s : s + chunk] = (ios >= thr).any(1)
    return float(has.mean())


def make_scenes(out: Path, seeds: list[int], levels: list[str], size: tuple[int, int]) -> list[Scene]:
    """Generate (once; reused when the folder exists) and load one quadrat per seed and level."""
    from musseltools import synth
    from musseltools.synth import frames

    w, h = size
    scenes = []
    for level in levels:
        density, max_overlap = LEVELS[level]
        for seed in seeds:
            name = f"{level}-s{seed}"
            d = out / f"{name}-{w}x{h}-d{density:g}-o{max_overlap or frames.MAX_NEW_OVERLAP:g}"
            if not (d / "counts.csv").exists():
                saved = frames.MAX_NEW_OVERLAP
                try:
                    if max_overlap is not None:
                        frames.MAX_NEW_OVERLAP = max_overlap
                    synth.generate_frames(d, [synth.FrameSpec(name, w, h, "quadrat", density, jpeg_quality=75)],
                                          seed=seed)
                finally:
                    frames.MAX_NEW_OVERLAP = saved
            [image] = tb.load_images(d / "images", d / "labels", 0, None)
            sc = Scene(name, seed, level, density, max_overlap, image)
            sc.stats = {
                "true": {CLASSES[c]: int((image.classes == c).sum()) for c in CLASSES},
                "ios_neighbour_share": ios_neighbour_share(image.boxes, image.classes),
                "median_box_side": float(np.median(np.maximum(image.boxes[:, 2] - image.boxes[:, 0],
                                                              image.boxes[:, 3] - image.boxes[:, 1])))
                if len(image.boxes) else 0.0,
            }
            scenes.append(sc)
    return scenes


# ---------------------------------------------------------------------------------------------- musseltools
@dataclass
class Raw:
    """All tile detections of one image (image coordinates), as ``TiledPredictor`` gathers them."""

    det: Detections
    tile_index: np.ndarray
    cut: np.ndarray
    tiles: list


def raw_tile_detections(inner, image: np.ndarray, tile: int, overlap: float, batch: int) -> Raw:
    """Run the tiles of ``tile_grid`` through ``inner`` and gather them as ``TiledPredictor._predict_tiled``."""
    from musseltools.models import tiling as mtiling

    h, w = image.shape[:2]
    tiles = mtiling.tile_grid(w, h, tile, overlap)
    g = mtiling._TileDetections(w, h, tiles, max(2.0, tile / 64))  # the predictor's own gathering (cut flags)
    for s in range(0, len(tiles), batch):
        idx = range(s, min(s + batch, len(tiles)))
        prepared = [inner.prepare(np.ascontiguousarray(image[tiles[i].y0 : tiles[i].y1, tiles[i].x0 : tiles[i].x1]))
                    for i in idx]
        for i, det in zip(idx, inner.predict(prepared)):
            g.add(i, det)
    det = Detections.concat(g.parts, names=inner.names, image_size=(w, h))
    parts = [p for p in g.parts if len(p)]
    tile_index = np.concatenate([t for t, p in zip(g.tile_index, g.parts) if len(p)]) if parts else np.zeros(0, int)
    cut = np.concatenate([c for c, p in zip(g.cut, g.parts) if len(p)]) if parts else np.zeros(0, bool)
    return Raw(det, tile_index, cut, tiles)


def merged(raw: Raw, method: str, task: str, max_det: int) -> Detections:
    """``TiledPredictor._merge``: the public ``merge_tiles``, then the per-image ``max_det`` cap."""
    from musseltools.models.tiling import merge_tiles

    if not len(raw.det):
        return raw.det
    out = merge_tiles(raw.det, raw.tile_index, raw.cut, raw.tiles, method=method, task=task)
    if len(out) > max_det:
        print(f"  warning: {len(out)} merged detections capped at max_det={max_det}")
        out = out[np.arange(max_det)]
    return out


def tiled_predictor_reference(inner, settings, method: str):
    """A ``TiledPredictor`` merging with ``method`` (its API is changing: ``settings.tile_merge`` or ``merge=``)."""
    import dataclasses

    from musseltools.models import TiledPredictor

    if "tile_merge" in {f.name for f in dataclasses.fields(settings)}:
        try:
            return TiledPredictor(inner, dataclasses.replace(settings, tile_merge=method))
        except TypeError:
            pass
    return TiledPredictor(inner, settings, merge=method)


# ---------------------------------------------------------------------------------------------- SAHI
def sahi_fn(weights: str, tile: int, overlap: float, conf: float, iou: float, max_det: int, device: str):
    """``benchmarks/tiling.py``'s SAHI set-up, with ``max_det`` set as musseltools' (see the docstring)."""
    from sahi import AutoDetectionModel
    from sahi.predict import get_sliced_prediction

    model = AutoDetectionModel.from_pretrained(model_type="ultralytics", model_path=weights, device=device,
                                               confidence_threshold=conf, image_size=tile)
    model.model.overrides["iou"] = iou
    model.model.overrides["max_det"] = max_det

    def fn(im: tb.Image) -> Detections:
        rgb = np.ascontiguousarray(im.bgr[:, :, ::-1])
        res = get_sliced_prediction(rgb, model, slice_height=tile, slice_width=tile, overlap_height_ratio=overlap,
                                    overlap_width_ratio=overlap, perform_standard_pred=False, verbose=0)
        preds = res.object_prediction_list
        xyxy = np.array([p.bbox.to_xyxy() for p in preds], np.float32).reshape(-1, 4)
        return Detections(xyxy, [p.score.value for p in preds], [p.category.id for p in preds], names=CLASSES,
                          image_size=(im.bgr.shape[1], im.bgr.shape[0]))

    return fn


# ---------------------------------------------------------------------------------------------- scoring
def matched_sparse(det_boxes: np.ndarray, det_conf: np.ndarray, truth: np.ndarray, pairs) -> int:
    """``tb.matched`` (one-to-one, greedy by decreasing confidence, best IoU first, ties to the lowest
    truth index) on precomputed candidate pairs with IoU >= MATCH_IOU."""
    i_det, j_truth, v = pairs
    if not len(i_det):
        return 0
    cand: dict[int, list[tuple[float, int]]] = {}
    for i, j, x in zip(i_det.tolist(), j_truth.tolist(), v.tolist()):
        cand.setdefault(i, []).append((-x, j))
    taken = set()
    n = 0
    for i in np.argsort(-det_conf, kind="stable").tolist():
        for _, j in sorted(cand.get(i, ())):
            if j not in taken:
                taken.add(j)
                n += 1
                break
    return n


def score_image(det: Detections, image: tb.Image, thresholds: dict[str, dict[int, float]],
                raw: Detections | None) -> dict[str, list[dict]]:
    """Per threshold set, one row per class: n_true, n_pred, matched, lost (None for SAHI)."""
    out: dict[str, list[dict]] = {k: [] for k in thresholds}
    floor = min(min(t.values()) for t in thresholds.values())
    for c in CLASSES:
        truth = image.boxes[image.classes == c]
        sel = (det.class_id == c) & (det.confidence >= floor)
        boxes, conf = det.xyxy[sel], det.confidence[sel]
        p = pairs_above(boxes, truth, MATCH_IOU)  # once at the lowest threshold, filtered below
        if raw is not None:
            rsel = (raw.class_id == c) & (raw.confidence >= floor)
            rboxes, rconf = raw.xyxy[rsel], raw.confidence[rsel]
            rp = pairs_above(rboxes, truth, MATCH_IOU)
        for name, thr in thresholds.items():
            t = thr[c]
            keep = conf >= t
            remap = np.cumsum(keep) - 1
            k = keep[p[0]]
            pk = (remap[p[0][k]], p[1][k], p[2][k])
            row = {"class": CLASSES[c], "threshold": t, "n_true": len(truth), "n_pred": int(keep.sum()),
                   "matched": matched_sparse(boxes[keep], conf[keep], truth, pk), "lost": None}
            if raw is not None:
                covered_raw = np.zeros(len(truth), bool)
                covered_raw[rp[1][rconf[rp[0]] >= t]] = True
                covered = np.zeros(len(truth), bool)
                covered[pk[1]] = True
                row["lost"] = int((covered_raw & ~covered).sum())
            out[name].append(row)
    return out


def summarize(rows: list[dict]) -> dict:
    err = [r["n_pred"] - r["n_true"] for r in rows]
    n_true = sum(r["n_true"] for r in rows)
    n_pred = sum(r["n_pred"] for r in rows)
    found = sum(r["matched"] for r in rows)
    lost = [r["lost"] for r in rows]
    return {"n": len(rows), "n_true": n_true, "n_pred": n_pred, "count_error": int(sum(err)),
            "abs_count_error": int(sum(abs(e) for e in err)), "recall": found / n_true if n_true else 0.0,
            "precision": found / n_pred if n_pred else 0.0,
            "lost": None if any(x is None for x in lost) else int(sum(lost))}


# ---------------------------------------------------------------------------------------------- checks
def check(scene: Scene, model, tiles: list[int], iou: float, overlap: float, batch: int, sahi: bool,
          max_det: int) -> None:
    """This script's raw gathering + merge equals TiledPredictor; sparse matching equals tb.matched;
    SAHI's slices are tile_grid's tiles."""
    from musseltools.models import InferenceSettings, make_predictor
    from musseltools.models.tiling import MERGE_METHODS, tile_grid

    im = scene.image
    tile = tiles[0]
    inner = make_predictor(model, InferenceSettings(imgsz=tile, iou=iou, tile_overlap=overlap, max_det=max_det),
                           threads=1)
    raw = raw_tile_detections(inner, im.bgr, tile, overlap, batch)
    settings = InferenceSettings(imgsz=tile, iou=iou, tile=tile, tile_overlap=overlap, max_det=max_det)
    for method in MERGE_METHODS:
        ref_p = tiled_predictor_reference(inner, settings, method)
        ref_p.batch_size = batch
        [ref] = ref_p.predict([ref_p.prepare(im.bgr)])
        ours = merged(raw, method, inner.task, settings.max_det)
        same = (len(ref) == len(ours) and np.array_equal(ref.xyxy, ours.xyxy)
                and np.array_equal(ref.confidence, ours.confidence) and np.array_equal(ref.class_id, ours.class_id))
        if not same:
            sys.exit(f"check failed: merge={method}: {len(ours)} detections here, {len(ref)} from TiledPredictor")
        for c in CLASSES:
            d = ours.above(0.35)
            sel = d.class_id == c
            truth = im.boxes[im.classes == c]
            a = tb.matched(d.xyxy[sel], d.confidence[sel], truth)
            b = matched_sparse(d.xyxy[sel], d.confidence[sel], truth, pairs_above(d.xyxy[sel], truth, MATCH_IOU))
            if a != b:
                sys.exit(f"check failed: sparse matching {b} != tiling.matched {a} ({method}, {CLASSES[c]})")
    if sahi:
        from sahi.slicing import get_slice_bboxes

        h, w = im.bgr.shape[:2]
        for t in tiles:
            s = sorted(tuple(b) for b in get_slice_bboxes(h, w, t, t, overlap_height_ratio=overlap,
                                                          overlap_width_ratio=overlap))
            g = sorted(tuple(x) for x in tile_grid(w, h, t, overlap))
            if s != g:
                sys.exit(f"check failed: SAHI's {t}-px slices differ from tile_grid's ({len(s)} vs {len(g)})")
    print(f"check ok on {scene.name}: merge == TiledPredictor for {', '.join(MERGE_METHODS)} (tile {tile}, "
          f"iou {iou}); sparse matching == tiling.matched; SAHI slices == tile_grid")


# ---------------------------------------------------------------------------------------------- tables
def fmt_cell(s: dict, lost: bool = False) -> str:
    cell = f"{s['abs_count_error']} ({s['count_error']:+d})"
    if lost and s.get("lost") is not None:
        cell += f" lost {s['lost']}"
    return cell


def table(summary: dict, tile: int, thr_name: str, ious: list[float], methods: list[str], levels: list[str]) -> str:
    head = ["NMS IoU", "method", "abs err (signed)", "live / dead signed", "recall", "precision"]
    head += [f"{lv} abs (signed)" for lv in levels]
    if "dense" in levels:
        head += ["dense recall", "dense lost"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for iou in ious:
        for m in methods:
            k = key(tile, iou, m, thr_name)
            if k not in summary:
                continue
            s = summary[k]
            cells = [f"{iou:g}", m, fmt_cell(s["all"]), f"{s['live']['count_error']:+d} / {s['dead']['count_error']:+d}",
                     f"{s['all']['recall']:.3f}", f"{s['all']['precision']:.3f}"]
            cells += [fmt_cell(s[lv]) for lv in levels]
            if "dense" in levels:
                d = s["dense"]
                cells += [f"{d['recall']:.3f}", "-" if d["lost"] is None else str(d["lost"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def key(tile: int, iou: float, method: str, thr_name: str) -> str:
    return f"tile={tile}|iou={iou:g}|method={method}|thr={thr_name}"


def best(summary: dict, tile: int, thr_name: str, ious: list[float], methods: list[str], part: str):
    """(method, iou, |err|) with the lowest summed absolute count error; ties listed."""
    cands = [(summary[key(tile, i, m, thr_name)][part]["abs_count_error"], m, i) for i in ious for m in methods
             if key(tile, i, m, thr_name) in summary]
    if not cands:
        return None
    lo = min(c[0] for c in cands)
    return lo, [(m, i) for e, m, i in cands if e == lo]


# ---------------------------------------------------------------------------------------------- main
def recommended_thresholds(weights: Path, card: Path | None) -> tuple[dict[int, float], str]:
    """Per-class thresholds of the weights' card: ``--recommended`` (a ``recommended.json`` with ``conf`` or a
    card ``.yaml`` with ``recommended.threshold``), else ``WEIGHTS.yaml``, else ``recommended.json`` beside
    the weights, else :data:`DEFAULT_THRESHOLDS`."""
    for path in [card] if card else [weights.with_suffix(".yaml"), weights.parent / "recommended.json"]:
        if path is None or not path.exists():
            continue
        if path.suffix == ".json":
            conf = json.loads(path.read_text()).get("conf", {})
        else:
            import yaml

            conf = (yaml.safe_load(path.read_text()) or {}).get("recommended", {}).get("threshold", {})
        if isinstance(conf, dict) and conf:
            return {c: float(conf.get(n, DEFAULT_THRESHOLDS[c])) for c, n in CLASSES.items()}, str(path)
    return dict(DEFAULT_THRESHOLDS), "defaults"


def parse_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--recommended", type=Path,
                    help="per-class thresholds: a recommended.json ('conf') or a card .yaml ('recommended.threshold'); "
                         "default: the weights' card (WEIGHTS.yaml), else live 0.35, dead 0.23")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="generator seeds, comma-separated")
    ap.add_argument("--levels", default=",".join(LEVELS), help=f"density levels among {', '.join(LEVELS)}")
    ap.add_argument("--size", default="4000x3000", help="quadrat size WxH")
    ap.add_argument("--tiles", default="320,640", help="tile sizes (each at native resolution: imgsz = tile)")
    ap.add_argument("--ious", default="0.7,0.5,0.4,0.3", help="NMS IoUs within a tile")
    ap.add_argument("--overlap", type=float, default=0.2)
    ap.add_argument("--single-threshold", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=8, help="tiles per forward pass (musseltools)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    ap.add_argument("--out", type=Path, help="where the scenes are generated (default: a temporary folder)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for tile_merge.json and tile_merge.md")
    ap.add_argument("--max-det", type=int, default=100_000,
                    help="detection cap per tile and per merged image, for every method (musseltools' default "
                         "10000 truncates a dense 4000x3000 bed at the 0.01 floor; the script reports where)")
    ap.add_argument("--no-sahi", action="store_true")
    ap.add_argument("--no-check", action="store_true", help="skip the equivalence checks on the first scene")
    args = ap.parse_args(argv)

    import torch

    from musseltools.models import InferenceSettings, default_device, load_model, make_predictor
    from musseltools.models.tiling import MERGE_METHODS
    from musseltools.synth import parse_size

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    seeds = [int(s) for s in args.seeds.split(",")]
    if set(seeds) & USED_SEEDS:
        sys.exit(f"seeds {sorted(set(seeds) & USED_SEEDS)} were used to train, calibrate or test the demo detector")
    levels = [lv for lv in args.levels.split(",") if lv]
    if unknown := [lv for lv in levels if lv not in LEVELS]:
        sys.exit(f"unknown levels {unknown}; known: {', '.join(LEVELS)}")
    size = parse_size(args.size)
    tiles = [int(t) for t in args.tiles.split(",")]
    ious = parse_floats(args.ious)
    per_class, per_class_from = recommended_thresholds(Path(args.model), args.recommended)
    thresholds = {"per-class": per_class, f"{args.single_threshold:g}": {c: args.single_threshold for c in CLASSES}}
    sahi_conf = min(min(t.values()) for t in thresholds.values())
    device = default_device()
    methods = list(MERGE_METHODS) + ([] if args.no_sahi else [SAHI])

    # -- scenes
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="tile_merge-")
        out = Path(tmp.name)
    else:
        out = args.out
    t0 = time.perf_counter()
    scenes = make_scenes(out, seeds, levels, size)
    timings["generate_s"] = time.perf_counter() - t0
    print(f"{len(scenes)} quadrats {size[0]}x{size[1]} (seeds {seeds}; levels {levels}) in {out}, generated/loaded "
          f"in {timings['generate_s']:.0f} s; model {Path(args.model).name}; tiles {tiles} px at native resolution, "
          f"overlap {args.overlap}; NMS IoU {ious}; thresholds {thresholds} (per-class from {per_class_from}); SAHI at conf {sahi_conf}; "
          f"{args.threads} torch thread(s) on {device}")
    print(f"{'level':8s} {'density':>7s} {'overlap':>7s} {'live':>12s} {'dead':>12s} {'IoS>=0.5 nbr':>13s}")
    for lv in levels:
        sc = [s for s in scenes if s.level == lv]
        d, o = LEVELS[lv]
        live = [s.stats["true"]["live"] for s in sc]
        dead = [s.stats["true"]["dead"] for s in sc]
        share = np.mean([s.stats["ios_neighbour_share"] for s in sc])
        print(f"{lv:8s} {d:7g} {o or 0.33:7g} {min(live):5d}-{max(live):<6d} {min(dead):5d}-{max(dead):<6d} "
              f"{share:13.3f}")
    print("(overlap: the most a new shell may cover over earlier ones; IoS>=0.5 nbr: share of labelled shells with a "
          "same-class neighbour box of IoS >= 0.5, which an IoS merge can fuse)")

    model = load_model(args.model)
    if not args.no_check:
        t0 = time.perf_counter()
        torch.set_num_threads(args.threads)
        check(scenes[0], model, tiles, ious[-1], args.overlap, args.batch, not args.no_sahi, args.max_det)
        timings["check_s"] = time.perf_counter() - t0

    rows: list[dict] = []
    timings.update({"model_s": 0.0, "merge_s": 0.0, "sahi_s": 0.0, "score_s": 0.0})
    max_det = args.max_det
    library_max_det = InferenceSettings(imgsz=tiles[0]).max_det
    volumes: list[dict] = []
    for tile in tiles:
        for iou in ious:
            t_cfg = time.perf_counter()
            inner = make_predictor(model, InferenceSettings(imgsz=tile, iou=iou, tile_overlap=args.overlap,
                                                            max_det=max_det), threads=args.threads)
            sahi_run = None if args.no_sahi else sahi_fn(args.model, tile, args.overlap, sahi_conf, iou, max_det,
                                                         device)
            for sc in scenes:
                torch.set_num_threads(args.threads)  # Ultralytics' set-up may reset it
                t0 = time.perf_counter()
                raw = raw_tile_detections(inner, sc.image.bgr, tile, args.overlap, args.batch)
                timings["model_s"] += time.perf_counter() - t0
                dets = {}
                for m in MERGE_METHODS:
                    t0 = time.perf_counter()
                    dets[m] = merged(raw, m, inner.task, max_det)
                    timings["merge_s"] += time.perf_counter() - t0
                if sahi_run is not None:
                    torch.set_num_threads(args.threads)
                    t0 = time.perf_counter()
                    dets[SAHI] = sahi_run(sc.image)
                    timings["sahi_s"] += time.perf_counter() - t0
                for m, d in dets.items():
                    volumes.append({"tile": tile, "iou": iou, "method": m, "image": sc.name, "raw": len(raw.det),
                                    "merged": len(d), "counted": int((d.confidence >= sahi_conf).sum())})
                t0 = time.perf_counter()
                for m, d in dets.items():
                    for thr_name, class_rows in score_image(d, sc.image, thresholds,
                                                            None if m == SAHI else raw.det).items():
                        for r in class_rows:
                            rows.append({"tile": tile, "iou": iou, "method": m, "thresholds": thr_name,
                                         "image": sc.name, "seed": sc.seed, "level": sc.level, **r})
                timings["score_s"] += time.perf_counter() - t0
            print(f"  tile {tile}, NMS IoU {iou:g}: {len(scenes)} scenes in {time.perf_counter() - t_cfg:.0f} s "
                  f"(elapsed {time.perf_counter() - t_start:.0f} s)", flush=True)

    # -- summaries
    summary: dict[str, dict] = {}
    for tile in tiles:
        for iou in ious:
            for m in methods:
                for thr_name in thresholds:
                    sel = [r for r in rows if r["tile"] == tile and r["iou"] == iou and r["method"] == m
                           and r["thresholds"] == thr_name]
                    s = {"all": summarize(sel)}
                    for lv in levels:
                        s[lv] = summarize([r for r in sel if r["level"] == lv])
                    for c in CLASSES.values():
                        s[c] = summarize([r for r in sel if r["class"] == c])
                    summary[key(tile, iou, m, thr_name)] = s
    timings["total_s"] = time.perf_counter() - t_start

    n_true = sum(len(s.image.boxes) for s in scenes)
    md = [
        "# Tile merge methods and NMS IoU by count error",
        "",
        f"`{' '.join(['python benchmarks/tile_merge.py', *(argv if argv is not None else sys.argv[1:])])}`",
        "",
        f"{len(scenes)} synthetic quadrats {size[0]}x{size[1]} (`musseltools.synth`, seeds {seeds}; {n_true} labelled "
        f"mussels), model `{Path(args.model).relative_to(ROOT) if Path(args.model).is_relative_to(ROOT) else args.model}`, "
        f"tiles at native resolution (imgsz = tile), overlap {args.overlap}. musseltools: raw tile detections once per "
        f"(scene, tile, NMS IoU) down to 0.01, merged by each method. SAHI: `get_sliced_prediction` (greedy NMM, "
        f"IoS 0.5), same slices, NMS IoU and max_det, run at conf {sahi_conf} and filtered per class.",
        "",
        "Cells: summed absolute count error over images x classes (summed signed error), count error = predicted - "
        "true; `live / dead signed`: the signed error per class over all scenes. Recall/precision: one-to-one matches at IoU >= 0.5. `lost`: labelled mussels covered (IoU >= 0.5) by "
        "a raw tile detection at the threshold but by no merged one (removed by the merge).",
        "",
        "| level | density | placement overlap | true live | true dead | shells with a same-class IoS >= 0.5 neighbour |",
        "|---|---|---|---|---|---|",
    ]
    for lv in levels:
        sc = [s for s in scenes if s.level == lv]
        d, o = LEVELS[lv]
        md.append(f"| {lv} | {d:g} | {o or 0.33:g} | {sum(s.stats['true']['live'] for s in sc)} | "
                  f"{sum(s.stats['true']['dead'] for s in sc)} | "
                  f"{np.mean([s.stats['ios_neighbour_share'] for s in sc]):.3f} |")
    winners: dict[str, dict] = {}
    for thr_name, thr in thresholds.items():
        for tile in tiles:
            title = (f"## Tile {tile} px, thresholds {thr_name} "
                     f"({', '.join(f'{CLASSES[c]} {t:g}' for c, t in thr.items())})")
            tab = table(summary, tile, thr_name, ious, methods, levels)
            print()
            print(title)
            print(tab)
            md += ["", title, "", tab]
    lines = ["", "## Lowest summed absolute count error (musseltools methods; SAHI for reference)", ""]
    for thr_name in thresholds:
        for tile in tiles:
            for part in ["all"] + (["dense"] if "dense" in levels else []):
                b = best(summary, tile, thr_name, ious, list(MERGE_METHODS), part)
                sb = best(summary, tile, thr_name, ious, [SAHI], part) if not args.no_sahi else None
                if b is None:
                    continue
                err, who = b
                winners[f"tile={tile}|thr={thr_name}|{part}"] = {"abs_count_error": err,
                                                                 "best": [{"method": m, "iou": i} for m, i in who],
                                                                 "sahi_best": None if sb is None else {
                                                                     "abs_count_error": sb[0],
                                                                     "iou": [i for _, i in sb[1]]}}
                text = " = ".join(f"{m} @ NMS IoU {i:g}" for m, i in who)
                sahi_text = f"; SAHI best {sb[0]} @ NMS IoU {'/'.join(f'{i:g}' for _, i in sb[1])}" if sb else ""
                lines.append(f"- tile {tile}, thresholds {thr_name}, {'all scenes' if part == 'all' else 'dense scenes'}: "
                             f"{text} (|err| {err}){sahi_text}")
    md += lines
    md += ["", f"Runtime {timings['total_s'] / 60:.1f} min on {args.threads} thread(s) ({platform.machine()}, "
           f"{os.cpu_count()} cores, shared): " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items()
                                                             if k != "total_s")]
    over_floor = [v for v in volumes if v["merged"] > library_max_det and v["method"] != SAHI]
    over_counted = [v for v in volumes if v["counted"] > library_max_det]
    cap_note = (f"Detection volume against musseltools' default max_det={library_max_det} (this run: {max_det}): "
                f"{len(over_floor)} of {sum(v['method'] != SAHI for v in volumes)} musseltools (scene, tile, IoU, "
                f"method) results held more merged detections at the 0.01 floor "
                f"(largest {max((v['merged'] for v in volumes), default=0)}; scenes: "
                f"{', '.join(sorted({v['image'] for v in over_floor})) or 'none'}), {len(over_counted)} of "
                f"{len(volumes)} results (SAHI included) more at conf >= {sahi_conf} "
                f"(largest {max((v['counted'] for v in volumes), default=0)}). The default cap keeps the most confident "
                f"{library_max_det} of an image's merged detections: counts of such scenes would be truncated.")
    lines += ["", cap_note]
    md += ["", cap_note]
    print("\n".join(lines))
    print("\ntimings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))

    args.results.mkdir(parents=True, exist_ok=True)
    payload = {
        "settings": {"model": args.model, "model_sha256": hashlib.sha256(Path(args.model).read_bytes()).hexdigest(),
                     "per_class_thresholds_from": per_class_from, "seeds": seeds, "levels": {lv: LEVELS[lv] for lv in levels},
                     "size": list(size), "tiles": tiles, "ious": ious, "overlap": args.overlap,
                     "thresholds": {k: {CLASSES[c]: t for c, t in v.items()} for k, v in thresholds.items()},
                     "sahi_conf": sahi_conf, "sahi": not args.no_sahi, "threads": args.threads, "device": device,
                     "max_det": max_det, "library_max_det": library_max_det, "match_iou": MATCH_IOU},
        "scenes": [{"name": s.name, "seed": s.seed, "level": s.level, "density": s.density,
                    "max_overlap": s.max_overlap, **s.stats} for s in scenes],
        "summary": summary,
        "winners": winners,
        "timings_s": timings,
        "volumes": volumes,
        "rows": rows,
    }
    (args.results / "tile_merge.json").write_text(json.dumps(payload, indent=1) + "\n")
    (args.results / "tile_merge.md").write_text("\n".join(md) + "\n")
    print(f"wrote {args.results / 'tile_merge.json'} and {args.results / 'tile_merge.md'}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
