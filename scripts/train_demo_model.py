"""Train the demo mussel detector on synthetic surveys, measure it and write its model card.

Stages (all on CPU):

1. generate the data with ``musseltools.synth`` (seeds listed in ``SEEDS``; the demo collection's seed
   2026 is never used):

   - train: whole small survey frames (416x320..640x480, density 0.5-2.0, several generator seeds),
     320-px crops of large survey frames (800x600..1280x960, what ``tile="auto"`` feeds the model for
     such frames) and 320-px crops of 4000x3000 quadrat photos (20-40 px mussels, density 0.7-2.0,
     dense beds), cut at native resolution exactly as tiled inference sees them;
   - val (best.pt selection): the same mix from other seeds;
   - calibration (held out, per-class confidence thresholds): whole frames, small and large, and one
     4000x3000 quadrat;
   - test (held out): the legacy seed-21 set of 40 small survey frames, plus large frames and one
     quadrat from another seed;

2. train YOLOv8n from ``yolov8n.yaml`` (no pretrained weights) with Ultralytics, checkpointing so that
   ``--resume`` continues an interrupted run;
3. copy ``best.pt`` (optimizer stripped by Ultralytics) to ``--out``/``mussel-demo.pt``;
4. measure, for the new model and (side by side, same code) the current ``data/models/mussel-demo.pt``:

   - ``model.val`` mAP50 per class and count MAE per image at conf 0.25 by NMS IoU on the legacy
     seed-21 test set (whole images, as in the previous card);
   - with the tiled pipeline (images whose longest side exceeds 2 x 320 px cut into 320-px tiles
     overlapping by ``--tile-overlap``, seams merged by intersection over the smaller box): per-class
     confidence thresholds calibrated on the calibration set (count bias closest to zero), recall /
     precision / count MAE at those thresholds on the held-out test sets, and AP50 per class,
     precision, recall and count MAE on the demo collection ``data/demo``;

   and write ``metrics.json``, the card musseltools reads (``mussel-demo.yaml``: the recommended settings
   and how each was found, see ``musseltools.models.card``) and the model card ``README.md`` under ``--out``.

Usage::

    YOLO_OFFLINE=1 nice -n 19 python scripts/train_demo_model.py --hours 1.2   # everything
    YOLO_OFFLINE=1 nice -n 19 python scripts/train_demo_model.py --resume      # continue a run
    YOLO_OFFLINE=1 python scripts/train_demo_model.py --eval-only

Training output goes to ``--work`` (default ``/work/mt-train2``), never into the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

log = logging.getLogger("train_demo_model")

CLASSES = ("live", "dead")
#: Generator seeds of every set. None of them is the demo collection's (2026).
SEEDS = {
    "train_survey": (1, 2, 3, 4),
    "train_big": (101, 102),
    "train_quadrat": (201, 202, 203),
    "val": (11, 111, 211),
    "calib": (31, 131, 231),
    "test_legacy": (21,),
    "test": (41, 141, 241),
}
SMALL_SIZES = [(416, 320), (480, 360), (512, 384), (640, 480)]
BIG_SIZES = [(800, 600), (960, 720), (1024, 768), (1280, 960)]
TILE = 320
AUTO_TILE_FACTOR = 2.0  # as musseltools' tile="auto": tile images longer than 2 x imgsz
CONF = 0.25
EVAL_CONF_FLOOR = 0.01  # detections kept for AP and threshold sweeps
NMS_IOUS = (0.7, 0.5, 0.4)  # Ultralytics' default first
KEEP_CLIPPED = 0.25  # a crop keeps a box when at least this fraction of the box's area is inside it
MERGE_IOS = 0.5
DEMO = ROOT / "data" / "demo"
OLD_MODEL = ROOT / "data" / "models" / "mussel-demo.pt"


# ---------------------------------------------------------------------------------------------- data
def _synth():
    from musseltools import synth  # imported late: musseltools may be mid-refactor; retried below

    return synth


def _retry_import():
    for _attempt in range(5):
        try:
            return _synth()
        except Exception as exc:  # noqa: BLE001 - a transient import error while others edit the package
            log.warning("import musseltools.synth failed (%s); retrying in 60 s", exc)
            time.sleep(60)
    return _synth()


def _read_boxes(label: Path, w: int, h: int) -> np.ndarray:
    """YOLO detect labels as an (n, 5) array ``cls, x0, y0, x1, y1`` in pixels."""
    rows = [line.split() for line in label.read_text().splitlines() if line.strip()] if label.exists() else []
    if not rows:
        return np.zeros((0, 5))
    a = np.array(rows, float)
    cx, cy, bw, bh = a[:, 1] * w, a[:, 2] * h, a[:, 3] * w, a[:, 4] * h
    return np.column_stack([a[:, 0], cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])


def _frames(synth, rng, n: int, sizes, style: str, dens: tuple[float, float], prefix: str, jpeg=None):
    specs = []
    for i in range(n):
        w, h = sizes[int(rng.integers(len(sizes)))]
        q = int(rng.integers(jpeg[0], jpeg[1] + 1)) if jpeg else None
        specs.append(synth.FrameSpec(f"{prefix}_{i:04d}", w, h, style, float(rng.uniform(*dens)), jpeg_quality=q))
    return specs


def _crop_into(src: Path, dst: Path, per_image: int, rng: np.random.Generator, tries: int = 4) -> int:
    """Cut ``per_image`` TILE x TILE crops from every image of ``src`` into ``dst`` (PNG, exact pixels).

    Each crop is the one with most labelled boxes among ``tries`` random positions (biased to beds,
    empty sand still occurs). Boxes are clipped to the crop and kept when at least ``KEEP_CLIPPED`` of
    their area is inside (a mussel cut by a tile seam is still a mussel to find)."""
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "labels").mkdir(parents=True, exist_ok=True)
    n = 0
    for img_path in sorted((src / "images").glob("*.jpg")):
        img = cv2.imread(str(img_path))
        h, w = img.shape[:2]
        boxes = _read_boxes(src / "labels" / f"{img_path.stem}.txt", w, h)
        area = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])
        for k in range(per_image):
            best = None
            for _ in range(tries):
                x0 = int(rng.integers(0, max(1, w - TILE + 1)))
                y0 = int(rng.integers(0, max(1, h - TILE + 1)))
                c = boxes.copy()
                c[:, [1, 3]] = np.clip(c[:, [1, 3]] - x0, 0, TILE)
                c[:, [2, 4]] = np.clip(c[:, [2, 4]] - y0, 0, TILE)
                cw, ch = c[:, 3] - c[:, 1], c[:, 4] - c[:, 2]
                keep = (cw * ch >= KEEP_CLIPPED * area) & (cw >= 2) & (ch >= 2)
                if best is None or keep.sum() > best[2].sum():
                    best = (x0, y0, keep, c)
            x0, y0, keep, c = best
            stem = f"{img_path.stem}_c{k}"
            cv2.imwrite(str(dst / "images" / f"{stem}.png"), img[y0 : y0 + TILE, x0 : x0 + TILE])
            lines = [
                f"{int(b[0])} {(b[1] + b[3]) / 2 / TILE:.6f} {(b[2] + b[4]) / 2 / TILE:.6f}"
                f" {(b[3] - b[1]) / TILE:.6f} {(b[4] - b[2]) / TILE:.6f}"
                for b in c[keep]
            ]
            (dst / "labels" / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
            n += 1
    return n


def _link_whole(src: Path, dst: Path) -> int:
    """Copy whole frames (JPEG bytes and labels) of ``src`` into ``dst``."""
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "labels").mkdir(parents=True, exist_ok=True)
    n = 0
    for img_path in sorted((src / "images").glob("*.jpg")):
        shutil.copyfile(img_path, dst / "images" / img_path.name)
        shutil.copyfile(src / "labels" / f"{img_path.stem}.txt", dst / "labels" / f"{img_path.stem}.txt")
        n += 1
    return n


def make_sets(work: Path, a: argparse.Namespace) -> dict[str, Path]:
    """Generate the training mix, validation mix, calibration and test sets under ``work`` (once)."""
    synth = _retry_import()
    src = work / "src"
    out = {}
    t_all = time.time()

    def gen(name: str, specs, seed: int) -> Path:
        d = src / name
        if not (d / "counts.csv").exists():
            t0 = time.time()
            synth.generate_frames(d, specs, seed=seed)
            log.info("generated %s (%d frames, seed %d) in %.1f s", name, len(specs), seed, time.time() - t0)
        return d

    def mix(name: str, s_survey, s_big, s_quad, n_survey: int, n_big: int, per_big: int, n_quad: int, per_quad: int):
        d = work / f"data-{name}"
        out[name] = d
        if (d / "done").exists():
            log.info("%s set exists: %s", name, d)
            return
        if d.exists():
            shutil.rmtree(d)
        counts = {"survey": 0, "big_crops": 0, "quadrat_crops": 0}
        per_seed = [n_survey // len(s_survey) + (i < n_survey % len(s_survey)) for i in range(len(s_survey))]
        for seed, n in zip(s_survey, per_seed):
            rng = np.random.default_rng(seed)
            s = gen(f"{name}-survey-{seed}", _frames(synth, rng, n, SMALL_SIZES, "survey", (0.5, 2.0), f"s{seed}"), seed)
            counts["survey"] += _link_whole(s, d)
        per_seed = [n_big // len(s_big) + (i < n_big % len(s_big)) for i in range(len(s_big))]
        for seed, n in zip(s_big, per_seed):
            rng = np.random.default_rng(seed)
            s = gen(f"{name}-big-{seed}", _frames(synth, rng, n, BIG_SIZES, "survey", (0.5, 2.0), f"b{seed}"), seed)
            counts["big_crops"] += _crop_into(s, d, per_big, np.random.default_rng([seed, 1]))
        per_seed = [n_quad // len(s_quad) + (i < n_quad % len(s_quad)) for i in range(len(s_quad))]
        for seed, n in zip(s_quad, per_seed):
            rng = np.random.default_rng(seed)
            specs = _frames(synth, rng, n, [(4000, 3000)], "quadrat", (0.7, 2.0), f"q{seed}", jpeg=(60, 90))
            s = gen(f"{name}-quadrat-{seed}", specs, seed)
            counts["quadrat_crops"] += _crop_into(s, d, per_quad, np.random.default_rng([seed, 1]))
        (d / "done").write_text(json.dumps(counts))
        log.info("%s set: %s", name, counts)

    mix("train", SEEDS["train_survey"], SEEDS["train_big"], SEEDS["train_quadrat"],
        a.n_survey, a.n_big, a.crops_per_big, a.n_quadrat, a.crops_per_quadrat)
    s, b, q = SEEDS["val"]
    mix("val", (s,), (b,), (q,), a.n_val, max(1, a.n_val // 4), 4, 1, max(1, a.n_val // 2))

    # held-out sets of whole images (evaluated with the tiled pipeline)
    for name in ("calib", "test"):
        out[name] = held_out_set(work, name, a.n_test, a.n_test_big)
    # the legacy held-out set of the previous card (seed 21, small survey frames, density 0.6-1.4)
    d = src / "test-legacy"
    out["test_legacy"] = d
    if not (d / "counts.csv").exists():
        rng = np.random.default_rng(SEEDS["test_legacy"][0])
        specs = []
        for i in range(40):
            w, h = SMALL_SIZES[int(rng.integers(len(SMALL_SIZES)))]
            specs.append(synth.FrameSpec(f"survey_{i:04d}", w, h, "survey", float(rng.uniform(0.6, 1.4))))
        synth.generate_frames(d, specs, seed=SEEDS["test_legacy"][0])
    log.info("data ready in %.1f s", time.time() - t_all)
    return out


def held_out_set(work: Path, name: str, n_small: int = 30, n_big: int = 8) -> Path:
    """The held-out set ``name`` (``calib`` or ``test``) of whole frames under ``work`` (generated once):
    ``n_small`` small survey frames, ``n_big`` large ones and one 4000x3000 quadrat, from ``SEEDS[name]``.

    ``benchmarks/calibrate.py --demo-card`` regenerates the calibration set with it."""
    synth = _retry_import()
    d = work / f"data-{name}"
    if (d / "done").exists():
        return d
    s, b, q = SEEDS[name]
    parts = [
        (f"{name}-survey", _frames(synth, np.random.default_rng(s), n_small, SMALL_SIZES, "survey", (0.5, 2.0),
                                   "survey"), s),
        (f"{name}-big", _frames(synth, np.random.default_rng(b), n_big, BIG_SIZES, "survey", (0.5, 2.0), "big"), b),
        (f"{name}-quadrat", [synth.FrameSpec("quadrat", 4000, 3000, "quadrat", 1.0, jpeg_quality=70)], q),
    ]
    for folder, specs, seed in parts:
        src = work / "src" / folder
        if not (src / "counts.csv").exists():
            synth.generate_frames(src, specs, seed=seed)
        _link_whole(src, d)
    (d / "done").write_text("")
    return d


# ---------------------------------------------------------------------------------------------- training
def _common_kwargs(data_yaml: Path, work: Path, name: str, epochs: int, imgsz: int) -> dict:
    return dict(
        data=str(data_yaml),
        epochs=epochs,
        imgsz=imgsz,
        batch=16,
        device="cpu",
        workers=0,
        plots=False,
        project=str(work / "runs"),
        name=name,
        exist_ok=True,
        save_period=2,
        seed=0,
        deterministic=True,
        cache=True,
        flipud=0.5,
        fliplr=0.5,
        patience=100,
        verbose=True,
        amp=False,
    )


TRAIN_EXTRA = dict(close_mosaic=5)


def train(data_yaml: Path, work: Path, epochs: int, imgsz: int, hours: float | None, resume: bool) -> Path:
    """Train (or resume) and return the run directory."""
    from ultralytics import YOLO

    run_dir = work / "runs" / "demo"
    last = run_dir / "weights" / "last.pt"
    if resume and last.exists():
        log.info("resuming from %s", last)
        YOLO(str(last)).train(resume=True)
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    kwargs = _common_kwargs(data_yaml, work, "demo", epochs, imgsz) | TRAIN_EXTRA
    if hours:
        kwargs["time"] = hours
    YOLO("yolov8n.yaml").train(**kwargs)
    return run_dir


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- inference
def _origins(length: int, tile: int, overlap: float) -> list[int]:
    """Tile origins along one side, as ``musseltools.models.tiling.tile_origins``."""
    if length <= tile:
        return [0]
    step = max(1, tile - round(tile * overlap))
    n = int(np.ceil((length - tile) / step)) + 1
    return [min(i * step, length - tile) for i in range(n)]


def _ios(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    aa = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    ab = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(np.minimum(aa[:, None], ab[None, :]), 1e-9)


def merge_tiles(xyxy, conf, cls, tid, cut, tiles) -> tuple[np.ndarray, np.ndarray]:
    """Indices of detections kept after merging across tile seams, and their (possibly replaced) boxes.

    Greedy by confidence: a kept detection absorbs lower-confidence detections of the same class from
    *other* tiles whose intersection over the smaller box is at least ``MERGE_IOS`` (SAHI's criterion,
    never within a tile: the model's NMS handled that). A kept box cut by an inner tile edge takes the
    box of the best uncut member (the whole mussel as the neighbour saw it) or the group's union.
    Candidate pairs come only from overlapping tiles, from detections reaching into the shared area."""
    nbr: list[list[int]] = [[] for _ in range(len(conf))]
    by_tile = [np.nonzero(tid == t)[0] for t in range(len(tiles))]

    def _into(t: int, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        i = by_tile[t]
        bx_ = xyxy[i]
        return i[(bx_[:, 0] < x1) & (bx_[:, 2] > x0) & (bx_[:, 1] < y1) & (bx_[:, 3] > y0)]

    for a in range(len(tiles)):
        ax, ay = tiles[a]
        for b in range(a + 1, len(tiles)):
            bx, by = tiles[b]
            x0, y0, x1, y1 = max(ax, bx), max(ay, by), min(ax, bx) + TILE, min(ay, by) + TILE
            if x0 >= x1 or y0 >= y1:
                continue
            ia, ib = _into(a, x0, y0, x1, y1), _into(b, x0, y0, x1, y1)
            if len(ia) == 0 or len(ib) == 0:
                continue
            m = (_ios(xyxy[ia], xyxy[ib]) >= MERGE_IOS) & (cls[ia][:, None] == cls[ib][None, :])
            for i, j in zip(*np.nonzero(m)):
                nbr[ia[i]].append(int(ib[j]))
                nbr[ib[j]].append(int(ia[i]))
    order = np.argsort(-conf, kind="stable")
    absorbed = np.zeros(len(conf), bool)
    boxes = xyxy.copy()
    keep = []
    for i in order:
        if absorbed[i]:
            continue
        keep.append(i)
        absorbed[i] = True
        grp = np.array([j for j in nbr[i] if not absorbed[j] and conf[j] <= conf[i]], int)
        absorbed[grp] = True
        if len(grp) and cut[i]:
            uncut = grp[~cut[grp]]
            if len(uncut):
                boxes[i] = xyxy[uncut[np.argmax(conf[uncut])]]
            else:
                members = np.concatenate([[i], grp])
                boxes[i] = [*xyxy[members, :2].min(0), *xyxy[members, 2:].max(0)]
    keep = np.array(keep, int)
    return keep, boxes[keep]


def predict_image(model, path: Path, imgsz: int, iou: float, overlap: float, conf: float = EVAL_CONF_FLOOR):
    """Detections ``(xyxy, conf, cls)`` of one image; tiled when its longest side exceeds 2 x imgsz."""
    img = cv2.imread(str(path))
    h, w = img.shape[:2]
    kw = dict(conf=conf, iou=iou, imgsz=imgsz, device="cpu", verbose=False, max_det=1000)
    if max(w, h) <= AUTO_TILE_FACTOR * imgsz:
        r = model.predict(img, **kw)[0].boxes
        return r.xyxy.cpu().numpy(), r.conf.cpu().numpy(), r.cls.cpu().numpy().astype(int), 0
    tiles = [(x, y) for y in _origins(h, imgsz, overlap) for x in _origins(w, imgsz, overlap)]
    xyxy, cf, cl, tid, cut = [], [], [], [], []
    for start in range(0, len(tiles), 32):
        chunk = tiles[start : start + 32]
        res = model.predict([img[y : y + imgsz, x : x + imgsz] for x, y in chunk], **kw)
        for k, ((x, y), r) in enumerate(zip(chunk, res)):
            b = r.boxes.xyxy.cpu().numpy() + [x, y, x, y]
            tw, th = min(imgsz, w), min(imgsz, h)
            m = 1.0
            c = np.zeros(len(b), bool)
            if x > 0:
                c |= b[:, 0] <= x + m
            if x + tw < w:
                c |= b[:, 2] >= x + tw - m
            if y > 0:
                c |= b[:, 1] <= y + m
            if y + th < h:
                c |= b[:, 3] >= y + th - m
            xyxy.append(b)
            cf.append(r.boxes.conf.cpu().numpy())
            cl.append(r.boxes.cls.cpu().numpy().astype(int))
            tid.append(np.full(len(b), start + k))
            cut.append(c)
    xyxy, cf, cl, tid, cut = (np.concatenate(v) for v in (xyxy, cf, cl, tid, cut))
    keep, boxes = merge_tiles(xyxy, cf, cl, tid, cut, tiles)
    return boxes, cf[keep], cl[keep], len(tiles)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    aa = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    ab = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(aa[:, None] + ab[None, :] - inter, 1e-9)


def predict_set(model, images: Path, imgsz: int, iou: float, overlap: float) -> dict:
    """Per image: detections at the confidence floor and truth boxes; with the time per image."""
    out = {}
    t0 = time.time()
    for p in sorted(images.glob("*.jpg")):
        xyxy, cf, cl, nt = predict_image(model, p, imgsz, iou, overlap)
        h, w = cv2.imread(str(p)).shape[:2]
        truth = _read_boxes(images.parent / "labels" / f"{p.stem}.txt", w, h)
        out[p.name] = {"xyxy": xyxy, "conf": cf, "cls": cl, "truth": truth, "tiles": nt}
    log.info("predicted %d images of %s in %.1f s", len(out), images, time.time() - t0)
    return out


def _ap(tp: np.ndarray, conf: np.ndarray, n_true: int) -> float:
    """AP at one IoU as Ultralytics computes it (101-point interpolated, monotone precision envelope)."""
    if n_true == 0 or len(tp) == 0:
        return 0.0
    o = np.argsort(-conf, kind="stable")
    tpc = np.cumsum(tp[o])
    fpc = np.cumsum(1 - tp[o])
    recall = tpc / n_true
    precision = tpc / (tpc + fpc)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return float(np.trapezoid(np.interp(x, mrec, mpre), x))


def score(preds: dict, thresholds: dict[str, float]) -> dict:
    """Per class: AP50 (all detections), and at the class threshold precision, recall, count MAE/bias."""
    res = {}
    for ci, c in enumerate(CLASSES):
        tps, confs, n_true = [], [], 0
        err = []
        for d in preds.values():
            t = d["truth"][d["truth"][:, 0] == ci, 1:]
            m = d["cls"] == ci
            b, cf = d["xyxy"][m], d["conf"][m]
            o = np.argsort(-cf, kind="stable")
            b, cf = b[o], cf[o]
            tp = np.zeros(len(b))
            if len(b) and len(t):
                ious = _iou(b, t)
                used = np.zeros(len(t), bool)
                for i in range(len(b)):
                    cand = np.where(~used & (ious[i] >= 0.5), ious[i], -1)
                    j = int(np.argmax(cand))
                    if cand[j] >= 0.5:
                        used[j] = True
                        tp[i] = 1
            tps.append(tp)
            confs.append(cf)
            n_true += len(t)
            err.append(int((cf >= thresholds[c]).sum()) - len(t))
        tp, cf = np.concatenate(tps), np.concatenate(confs)
        sel = cf >= thresholds[c]
        err = np.array(err)
        res[c] = {
            "ap50": _ap(tp, cf, n_true),
            "threshold": thresholds[c],
            "precision": float(tp[sel].sum() / max(1, sel.sum())),
            "recall": float(tp[sel].sum() / max(1, n_true)),
            "count_mae": float(np.abs(err).mean()),
            "count_bias": float(err.mean()),
            "n_true": int(n_true),
            "n_pred": int(sel.sum()),
        }
    return res


def calibrate(preds: dict) -> dict[str, float]:
    """Per class, the threshold (0.05..0.90, step 0.01) whose summed count bias is closest to zero,
    ties broken by count MAE per image."""
    grid = np.round(np.arange(0.05, 0.905, 0.01), 2)
    out = {}
    for ci, c in enumerate(CLASSES):
        best = None
        for t in grid:
            err = np.array(
                [int(((d["cls"] == ci) & (d["conf"] >= t)).sum()) - int((d["truth"][:, 0] == ci).sum()) for d in preds.values()]
            )
            key = (abs(err.sum()), np.abs(err).mean())
            if best is None or key < best[0]:
                best = (key, float(t))
        out[c] = best[1]
    return out


def evaluate_legacy(weights: Path, test_dir: Path, imgsz: int) -> dict:
    """As the previous card: ``model.val`` mAP50 per class and count MAE at conf 0.25 by NMS IoU
    on the seed-21 set (whole images)."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    metrics = model.val(
        data=str(test_dir / "data.yaml"), split="val", imgsz=imgsz, device="cpu", workers=0, plots=False,
        batch=8, verbose=False, project=str(test_dir.parent.parent / "val"), name="test", exist_ok=True,
    )
    names = model.names
    ap50 = {names[int(c)]: float(metrics.box.ap50[i]) for i, c in enumerate(metrics.box.ap_class_index)}
    truth = pd.read_csv(test_dir / "counts.csv")
    by_iou = {}
    for iou in NMS_IOUS:
        rows = []
        for rec in truth.itertuples():
            r = model.predict(str(test_dir / "images" / rec.image), conf=CONF, iou=iou, imgsz=imgsz,
                              device="cpu", verbose=False, max_det=1000)[0]
            cls = r.boxes.cls.cpu().numpy().astype(int)
            rows.append({"live": int((cls == 0).sum()) - rec.live, "dead": int((cls == 1).sum()) - rec.dead})
        df = pd.DataFrame(rows)
        by_iou[str(iou)] = {
            "count_mae": {c: float(df[c].abs().mean()) for c in CLASSES},
            "count_bias": {c: float(df[c].mean()) for c in CLASSES},
        }
    return {
        "images": int(len(truth)),
        "objects": {"live": int(truth.live.sum()), "dead": int(truth.dead.sum())},
        "map50": ap50,
        "map50_95": float(metrics.box.map),
        "count_conf": CONF,
        "count_by_nms_iou": by_iou,
    }


def evaluate_model(weights: Path, sets: dict[str, Path], imgsz: int, ious, overlap: float) -> dict:
    """Tiled pipeline: calibrate per-class thresholds on the calibration set for each NMS IoU, then
    score the held-out test sets and the demo collection at those thresholds and at conf 0.25."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    out = {"legacy": evaluate_legacy(weights, sets["test_legacy"], imgsz), "by_iou": {}}
    for iou in ious:
        t0 = time.time()
        calib = predict_set(model, sets["calib"] / "images", imgsz, iou, overlap)
        thr = calibrate(calib)
        fixed = {c: CONF for c in CLASSES}
        test = predict_set(model, sets["test"] / "images", imgsz, iou, overlap)
        legacy = predict_set(model, sets["test_legacy"] / "images", imgsz, iou, overlap)
        t1 = time.time()
        demo = predict_set(model, DEMO / "images", imgsz, iou, overlap)
        demo_s = time.time() - t1
        heldout = {**{f"t/{k}": v for k, v in test.items()}, **{f"l/{k}": v for k, v in legacy.items()}}
        out["by_iou"][str(iou)] = {
            "thresholds": thr,
            "calib": score(calib, thr),
            "heldout": score(heldout, thr),
            "test": score(test, thr),
            "test_legacy": score(legacy, thr),
            "demo": score(demo, thr),
            "heldout_conf025": score(heldout, fixed),
            "demo_conf025": score(demo, fixed),
            "demo_seconds": demo_s,
            "seconds": time.time() - t0,
        }
        log.info("%s iou %s: thresholds %s; held-out %s; demo %s", weights.name, iou, thr,
                 {c: round(v["recall"], 3) for c, v in out["by_iou"][str(iou)]["heldout"].items()},
                 {c: round(v["ap50"], 3) for c, v in out["by_iou"][str(iou)]["demo"].items()})
    return out


# ---------------------------------------------------------------------------------------------- card
def _pick(ev: dict) -> str:
    """NMS IoU recommended: the one with the lowest summed count MAE on the calibration set."""
    return min(ev["by_iou"], key=lambda k: sum(ev["by_iou"][k]["calib"][c]["count_mae"] for c in CLASSES))


def write_card(out: Path, info: dict) -> None:
    t, new, old = info["training"], info["metrics"]["new"], info["metrics"]["old"]
    k = info["recommended"]["iou"]
    ko = info["metrics"]["old_recommended_iou"]
    r, ro = new["by_iou"][str(k)], old["by_iou"][str(ko)]
    L = [
        "# mussel-demo.pt — demo mussel detector (synthetic data only)",
        "",
        "A YOLOv8n detector trained from scratch (no pretrained weights) on synthetic survey images made by",
        "`musseltools.synth`. It exists so that the toolkit, its notebooks and its tests have a real model to",
        "run. **It has never seen a real photograph; do not use its counts for science.**",
        "Candidate to replace `data/models/mussel-demo.pt`; \"old\" below is that model, measured by the same",
        "code in the same run.",
        "",
        "| | |",
        "|---|---|",
        f"| file | `mussel-demo.pt` ({info['size_bytes'] / 1e6:.1f} MB, optimizer stripped) |",
        f"| sha256 | `{info['sha256']}` |",
        "| classes | `0: live`, `1: dead` |",
        "| task | detect (axis-aligned boxes) |",
        f"| image size | {t['imgsz']} (stored in the checkpoint: `YOLO(...).predict` uses it by default) |",
        f"| recommended | NMS `iou={k}`, `tile=auto` (320-px tiles, overlap {info['recommended']['tile_overlap']}),"
        f" confidence live {info['recommended']['conf']['live']:.2f}, dead {info['recommended']['conf']['dead']:.2f}"
        ": in the card `mussel-demo.yaml`, which musseltools reads |",
        f"| Ultralytics / torch | {t['ultralytics']} / {t['torch']} |",
        "",
        "## Training data",
        "",
        f"All 320x320-or-smaller, {t['n_train']} images (generator seeds {t['seeds']['train_survey']},"
        f" {t['seeds']['train_big']}, {t['seeds']['train_quadrat']}; never the demo collection's 2026):",
        "",
        f"- {t['mix']['survey']} whole small survey frames (416x320 to 640x480, density 0.5-2.0, four seeds);",
        f"- {t['mix']['big_crops']} 320-px crops of {t['n_big']} large survey frames (800x600 to 1280x960, density"
        " 0.5-2.0): what `tile=auto` feeds the model for such frames, cut shells included;",
        f"- {t['mix']['quadrat_crops']} 320-px crops of {t['n_quadrat']} 4000x3000 quadrat photos (20-40 px mussels,"
        " density 0.7-2.0, JPEG quality 60-90): the quadrat tiles exactly as tiled inference sees them.",
        f"- Crops are written as PNG (the decoded JPEG pixels); each is the densest of 4 random positions;"
        f" a box cut by the crop is kept when at least {KEEP_CLIPPED:.0%} of its area is inside.",
        f"- validation (best.pt selection): {t['n_val']} images of the same mix, seeds {t['seeds']['val']}.",
        f"- calibration (thresholds; held out): {info['sets']['calib']}, seeds {t['seeds']['calib']}.",
        f"- test (held out): {info['sets']['test']}, seeds {t['seeds']['test']}; and the previous card's"
        " 40 survey frames of seed 21.",
        f"- Reproduce (data, training, evaluation, this card): `YOLO_OFFLINE=1 nice -n 19 python"
        f" scripts/train_demo_model.py{' --hours ' + str(t['hours']) if t['hours'] else ''}`"
        " (with the defaults of that version of the script).",
        "",
        "## Training settings",
        "",
        f"- `YOLO('yolov8n.yaml').train(imgsz={t['imgsz']}, batch=16, epochs={t['epochs_requested']}"
        f"{', time=' + str(t['hours']) if t['hours'] else ''}, device='cpu', workers=0, plots=False, cache=True,"
        f" flipud=0.5, fliplr=0.5, close_mosaic=5, seed=0, deterministic=True, save_period=2)`; other"
        " hyperparameters are Ultralytics defaults (`optimizer=auto`, which chose AdamW at lr 0.001667 for this"
        " short run; mosaic, HSV and scale augmentation)."
        + (" With `time=` Ultralytics fits the epoch count to the time budget." if t["hours"] else ""),
        f"- It ran {t['epochs_run']} epochs in "
        + (f"{t['train_wall_s'] / 60:.1f} min" if t["train_wall_s"] else "(wall time not recorded)")
        + f" under `nice -n 19`; data generation took {t['data_wall_s'] / 60:.1f} min.",
        f"- Hardware: {t['machine']} (shared with other work: times are upper bounds).",
        "- best.pt is chosen by Ultralytics' fitness on the validation set.",
        "",
        "## Measured",
        "",
        "Pipeline as `musseltools.run(..., tile='auto')`: images whose longest side exceeds 640 px are cut",
        f"into 320-px tiles overlapping by {info['recommended']['tile_overlap']}, seams merged across tiles by"
        f" intersection over the smaller box >= {MERGE_IOS} (a kept box cut by a seam takes the whole",
        "box its neighbour saw); other images run whole at 320. Thresholds: per class, the confidence whose",
        "summed count error on the calibration set is closest to zero. AP50: all detections down to",
        f"conf {EVAL_CONF_FLOOR}, 101-point interpolation as Ultralytics. The script's own tiling and scoring,",
        "not `musseltools.evaluate`.",
        "",
        f"### At the recommended settings (new: NMS IoU {k}; old: NMS IoU {ko}, each with its own calibrated thresholds)",
        "",
        "| set | class | new threshold | new AP50 | new precision | new recall | new count MAE / bias | old threshold | old AP50 | old precision | old recall | old count MAE / bias |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, key in (("held-out (test + seed 21)", "heldout"), ("demo collection (40)", "demo")):
        for c in CLASSES:
            a, b = r[key][c], ro[key][c]
            L.append(
                f"| {label} | {c} | {a['threshold']:.2f} | {a['ap50']:.3f} | {a['precision']:.3f} | {a['recall']:.3f} |"
                f" {a['count_mae']:.2f} / {a['count_bias']:+.2f} | {b['threshold']:.2f} | {b['ap50']:.3f} |"
                f" {b['precision']:.3f} | {b['recall']:.3f} | {b['count_mae']:.2f} / {b['count_bias']:+.2f} |"
            )
    L += [
        "",
        "### By NMS IoU (new model; thresholds calibrated for each IoU)",
        "",
        "| NMS IoU | thresholds live / dead | held-out recall live / dead | held-out count MAE live / dead | demo AP50 live / dead | demo precision live / dead | demo recall live / dead | demo count MAE live / dead | demo count MAE at conf 0.25 live / dead |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kk, v in new["by_iou"].items():
        h, d, d25 = v["heldout"], v["demo"], v["demo_conf025"]
        L.append(
            f"| {kk} | {v['thresholds']['live']:.2f} / {v['thresholds']['dead']:.2f} |"
            f" {h['live']['recall']:.3f} / {h['dead']['recall']:.3f} | {h['live']['count_mae']:.2f} / {h['dead']['count_mae']:.2f} |"
            f" {d['live']['ap50']:.3f} / {d['dead']['ap50']:.3f} | {d['live']['precision']:.3f} / {d['dead']['precision']:.3f} |"
            f" {d['live']['recall']:.3f} / {d['dead']['recall']:.3f} | {d['live']['count_mae']:.2f} / {d['dead']['count_mae']:.2f} |"
            f" {d25['live']['count_mae']:.2f} / {d25['dead']['count_mae']:.2f} |"
        )
    L += [
        "",
        "Same for the old model:",
        "",
        "| NMS IoU | thresholds live / dead | held-out recall live / dead | held-out count MAE live / dead | demo AP50 live / dead | demo precision live / dead | demo recall live / dead | demo count MAE live / dead | demo count MAE at conf 0.25 live / dead |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kk, v in old["by_iou"].items():
        h, d, d25 = v["heldout"], v["demo"], v["demo_conf025"]
        L.append(
            f"| {kk} | {v['thresholds']['live']:.2f} / {v['thresholds']['dead']:.2f} |"
            f" {h['live']['recall']:.3f} / {h['dead']['recall']:.3f} | {h['live']['count_mae']:.2f} / {h['dead']['count_mae']:.2f} |"
            f" {d['live']['ap50']:.3f} / {d['dead']['ap50']:.3f} | {d['live']['precision']:.3f} / {d['dead']['precision']:.3f} |"
            f" {d['live']['recall']:.3f} / {d['dead']['recall']:.3f} | {d['live']['count_mae']:.2f} / {d['dead']['count_mae']:.2f} |"
            f" {d25['live']['count_mae']:.2f} / {d25['dead']['count_mae']:.2f} |"
        )
    ln, lo = new["legacy"], old["legacy"]
    L += [
        "",
        f"### The previous card's measurement (seed-21 set, {ln['images']} small frames, whole images, `model.val`, conf {CONF})",
        "",
        "| model | mAP50 live / dead | mAP50-95 | count MAE live / dead at NMS IoU 0.7 | at 0.5 | at 0.4 |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in (("new", ln), ("old", lo)):
        b = m["count_by_nms_iou"]
        L.append(
            f"| {name} | {m['map50'].get('live', float('nan')):.3f} / {m['map50'].get('dead', float('nan')):.3f} | {m['map50_95']:.3f} |"
            + "".join(f" {b[i]['count_mae']['live']:.2f} / {b[i]['count_mae']['dead']:.2f} |" for i in ("0.7", "0.5", "0.4"))
        )
    L += [
        "",
        f"Demo collection prediction at the recommended settings took {r['demo_seconds']:.0f} s for 40 images"
        " (3 tiled quadrats) on this CPU, under load.",
        "",
        "## Limits",
        "",
        "- Synthetic look only: real mussel beds, turbid water, real lighting and real dead shells differ.",
        "- Trained at 320 px: run large photos (quadrats, frames over 640 px) on 320-px tiles (`tile='auto'`).",
        "- Heavily occluded shells (less than half visible) are unlabelled in the synthetic data, so the",
        "  model may or may not report them.",
        *([f"- {info['note']}"] if info.get("note") else []),
        "",
        "Numbers above were written by `scripts/train_demo_model.py` from its own measurements",
        "(also in `metrics.json`).",
        "",
    ]
    (out / "README.md").write_text("\n".join(L))


def write_settings_card(path: Path, rec: dict) -> None:
    """The card beside the weights that musseltools reads (musseltools.models.card): settings and how each was found."""
    import yaml

    card = {
        "recommended": {"threshold": {c: round(float(v), 2) for c, v in rec["conf"].items()}, "iou": rec["iou"],
                        "tile": "auto" if rec["tile_auto"] else rec["tile"], "tile_overlap": rec["tile_overlap"],
                        "tile_merge": rec["tile_merge"]},
        "how": {"threshold": rec["conf_how"], "iou": rec["iou_how"], "tile": rec["tile_how"],
                "tile_overlap": rec["tile_overlap_how"], "tile_merge": rec["tile_merge_how"]},
    }
    head = ("# Model card of mussel-demo.pt: the settings musseltools uses with these weights unless a run is given\n"
            "# others (musseltools.models.card). Reports show where each setting came from.\n")
    path.write_text(head + yaml.safe_dump(card, sort_keys=False, width=110))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/work/mt-train2", help="scratch folder for datasets and runs")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--hours", type=float, default=None, help="Ultralytics time budget (overrides epochs)")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--n-survey", type=int, default=240, help="whole small survey frames")
    ap.add_argument("--n-big", type=int, default=40, help="large survey frames to crop")
    ap.add_argument("--crops-per-big", type=int, default=4)
    ap.add_argument("--n-quadrat", type=int, default=6, help="4000x3000 quadrats to crop")
    ap.add_argument("--crops-per-quadrat", type=int, default=45)
    ap.add_argument("--n-val", type=int, default=24)
    ap.add_argument("--n-test", type=int, default=30, help="small frames in the calibration and test sets")
    ap.add_argument("--n-test-big", type=int, default=8, help="large frames in the calibration and test sets")
    ap.add_argument("--tile-overlap", type=float, default=0.2)
    ap.add_argument("--ious", default="0.7,0.5,0.4", help="NMS IoUs to measure")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    ap.add_argument("--train-only", action="store_true", help="stop after training")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the existing best.pt")
    ap.add_argument("--old-only", action="store_true", help="only measure the current data/models model")
    ap.add_argument("--out", default=str(ROOT / "data" / "models" / "next"))
    ap.add_argument("--card-note", default="", help="extra paragraph for the model card's Limits section")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch
    import ultralytics

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timing_file = work / "train_timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    t0 = time.time()
    sets = make_sets(work, args)
    if "data_s" not in timing:
        timing["data_s"] = time.time() - t0
    data_yaml = work / "demo-data.yaml"
    data_yaml.write_text(
        f"path: {work}\ntrain: {sets['train'].name}/images\nval: {sets['val'].name}/images\n"
        "names:\n  0: live\n  1: dead\n"
    )
    run_dir = work / "runs" / "demo"
    if not args.eval_only:
        t0 = time.time()
        prior = timing.get("train_s", 0.0) if args.resume else 0.0
        train(data_yaml, work, args.epochs, args.imgsz, args.hours, args.resume)
        timing.update(train_s=prior + time.time() - t0, epochs=args.epochs, hours=args.hours if not args.resume
                      else timing.get("hours"))
        timing_file.write_text(json.dumps(timing))
    timing_file.write_text(json.dumps(timing))
    if args.train_only:
        return 0
    if args.old_only:  # measure the current model alone (cached for the final evaluation)
        ious = [float(x) for x in args.ious.split(",")]
        cache = work / f"eval-old-{sha256(OLD_MODEL)[:12]}-{args.ious}-{args.tile_overlap}.json"
        cache.write_text(json.dumps(evaluate_model(OLD_MODEL, sets, args.imgsz, ious, args.tile_overlap)))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    best = run_dir / "weights" / "best.pt"
    dest = out / "mussel-demo.pt"
    if best.exists():
        shutil.copyfile(best, dest)
    if not dest.exists():
        log.error("no weights at %s or %s", best, dest)
        return 1

    ious = [float(x) for x in args.ious.split(",")]
    ev_new = evaluate_model(dest, sets, args.imgsz, ious, args.tile_overlap)
    cache = work / f"eval-old-{sha256(OLD_MODEL)[:12]}-{args.ious}-{args.tile_overlap}.json"
    if cache.exists():  # the current model's figures do not change between runs of this script
        ev_old = json.loads(cache.read_text())
    else:
        ev_old = evaluate_model(OLD_MODEL, sets, args.imgsz, ious, args.tile_overlap)
        cache.write_text(json.dumps(ev_old))
    k, ko = _pick(ev_new), _pick(ev_old)
    rec = ev_new["by_iou"][k]
    mix_counts = json.loads((sets["train"] / "done").read_text())
    n_train = sum(mix_counts.values())
    n_val = len(list((sets["val"] / "images").iterdir()))

    def _desc(d: Path) -> str:
        names = [p.name for p in (d / "images").iterdir()]
        return (f"{sum(n.startswith('survey') for n in names)} small survey frames, {sum(n.startswith('big') for n in names)}"
                f" large survey frames (800x600..1280x960), {sum(n.startswith('quadrat') for n in names)} 4000x3000 quadrat")

    epochs_run = len(pd.read_csv(run_dir / "results.csv")) if (run_dir / "results.csv").exists() else None
    recommended = {
        "model": "mussel-demo.pt",
        "sha256": sha256(dest),
        "iou": float(k),
        "iou_how": f"NMS IoUs {args.ious} were measured, each with its own calibrated thresholds; {k} gave the lowest"
        " summed per-image count MAE (live + dead) on the held-out calibration set (seeds"
        f" {SEEDS['calib']}), tiled pipeline.",
        "tile": TILE,
        "tile_auto": True,
        "tile_how": "The model is trained at 320 px, on 320-px crops of large frames among others; images whose"
        " longest side exceeds 640 px (2 x imgsz, as tile='auto') are cut into 320-px tiles at native resolution;"
        " smaller images run whole.",
        "tile_overlap": args.tile_overlap,
        "tile_overlap_how": f"Not tuned: {args.tile_overlap} as the library's default; all figures were measured with it.",
        "tile_merge": "edge",
        "tile_merge_how": "Chosen by benchmarks/tile_merge.py (the lowest summed absolute count error of edge, ios, nmm"
        " and SAHI on generated quadrats from sparse to dense overlapping beds); this script's own figures use"
        f" intersection over the smaller box >= {MERGE_IOS} across tiles (musseltools' 'ios'), which counts within"
        " 4% of 'edge' there.",
        "conf": rec["thresholds"],
        "conf_how": "Per class, the confidence (0.05..0.90, step 0.01) whose summed count error on the held-out"
        f" calibration set (seeds {SEEDS['calib']}: {_desc(sets['calib'])}) is closest to zero, at NMS IoU {k};"
        " never tuned on the demo collection. `musseltools calibrate` (objective total_bias, NMS IoU 0.7, 0.5 and"
        f" 0.4) re-derives them from the same frames within 0.02 per class, and NMS IoU {k}"
        " (benchmarks/calibrate.py --demo-card).",
        "heldout_recall_at_conf": {c: rec["heldout"][c]["recall"] for c in CLASSES},
        "heldout_precision_at_conf": {c: rec["heldout"][c]["precision"] for c in CLASSES},
    }
    write_settings_card(out / "mussel-demo.yaml", recommended)
    info = {
        "model": dest.name,
        "sha256": sha256(dest),
        "size_bytes": dest.stat().st_size,
        "classes": {"0": "live", "1": "dead"},
        "training": {
            "imgsz": args.imgsz,
            "epochs_requested": timing.get("epochs", args.epochs),
            "epochs_run": epochs_run,
            "hours": timing.get("hours", args.hours),
            "n_train": n_train,
            "mix": mix_counts,
            "n_big": args.n_big,
            "n_quadrat": args.n_quadrat,
            "n_val": n_val,
            "seeds": SEEDS,
            "train_wall_s": timing.get("train_s"),
            "data_wall_s": timing.get("data_s", 0.0),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
            "ultralytics": ultralytics.__version__,
            "torch": torch.__version__,
        },
        "sets": {"calib": _desc(sets["calib"]), "test": _desc(sets["test"])},
        "recommended": recommended,
        "metrics": {"new": ev_new, "old": ev_old, "old_recommended_iou": float(ko)},
        "note": args.card_note,
    }
    (out / "metrics.json").write_text(json.dumps(info, indent=2) + "\n")
    write_card(out, info)
    targets = {
        "heldout_recall>=0.85": all(rec["heldout"][c]["recall"] >= 0.85 for c in CLASSES),
        "demo_ap50>=0.9": all(rec["demo"][c]["ap50"] >= 0.9 for c in CLASSES),
        "size<=8MB": dest.stat().st_size <= 8e6,
    }
    log.info("targets: %s", targets)
    return 0 if all(targets.values()) else 2


if __name__ == "__main__":
    raise SystemExit(main())
