"""Train the oriented-box (OBB) mussel model that measures shell lengths, and ship it with its cards.

The demo detector's axis-aligned boxes over-state a tilted shell's length (``benchmarks/sizes.py``); an
oriented box's long side is the shell's length. This script:

1. generates whole small survey frames (416x320..640x480, density 0.5-2.0) with ``musseltools.synth``
   through ``scripts/train_demo_model.py``'s frame specs, from the generator seeds in ``SEEDS`` (never the
   demo collection's 2026, nor ``benchmarks/sizes.py``'s 11); the synth's ``obb/`` labels are the targets;
2. trains YOLOv8n-OBB from ``yolov8n-obb.yaml``, its layers started from the demo detector's
   (``data/models/mussel-demo.pt``, trained by ``train_demo_model.py``; nothing downloaded) at imgsz 640, so a
   640x480 frame is seen at its native resolution (downscaling to 320 halves the pixels a length is read
   from), within an Ultralytics ``time`` budget, checkpointing every epoch so that ``--resume`` continues;
3. ``--finetune N`` fine-tunes ``best.pt`` for N epochs on true-size oriented boxes (the synth's ``obb/``
   labels are the painted pixels' rectangle, about a pixel longer than the shell: +2 % on these shells);
4. ``--ship`` copies the fine-tuned ``best.pt`` (else the first run's; optimizer stripped by Ultralytics) to
   ``data/models/mussel-obb.pt`` and writes its settings card ``mussel-obb.yaml`` (read by ``musseltools.models.card``) and ``train.json``
   (the set-up and timings, for the model card section of ``data/models/README.md``).

Usage::

    YOLO_OFFLINE=1 nice -n 19 python scripts/train_obb_model.py --hours 0.85   # data + training
    YOLO_OFFLINE=1 nice -n 19 python scripts/train_obb_model.py --resume       # continue a run
    YOLO_OFFLINE=1 nice -n 19 python scripts/train_obb_model.py --finetune 2     # true-size fine-tune
    YOLO_OFFLINE=1 python scripts/train_obb_model.py --ship                    # copy best.pt, write the card

Training output goes to ``--work`` (default ``/work/mt-train-obb``), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from train_demo_model import ROOT, SMALL_SIZES, _frames, _retry_import, sha256  # noqa: E402

log = logging.getLogger("train_obb_model")

#: Generator seeds. None is the demo collection's (2026) nor benchmarks/sizes.py's (11).
SEEDS = {"train": (301, 302, 303, 304, 305, 306), "val": (311,)}
MODELS = ROOT / "data" / "models"


def make_sets(work: Path, n_train: int, n_val: int) -> Path:
    """Generate the training and validation frames under ``work/src`` (once) and return the data YAML."""
    synth = _retry_import()
    dirs: dict[str, list[str]] = {}
    for part, n in (("train", n_train), ("val", n_val)):
        seeds = SEEDS[part]
        per_seed = [n // len(seeds) + (i < n % len(seeds)) for i in range(len(seeds))]
        for seed, k in zip(seeds, per_seed):
            d = work / "src" / f"{part}-{seed}"
            if not (d / "counts.csv").exists():
                t0 = time.time()
                specs = _frames(synth, np.random.default_rng(seed), k, SMALL_SIZES, "survey", (0.5, 2.0), f"s{seed}")
                synth.generate_frames(d, specs, seed=seed)
                log.info("generated %s (%d frames) in %.1f s", d.name, k, time.time() - t0)
            dirs.setdefault(part, []).append(str((d / "obb" / "images").relative_to(work)))
    data_yaml = work / "obb-data.yaml"
    data_yaml.write_text(
        f"path: {work}\ntrain: {json.dumps(dirs['train'])}\nval: {json.dumps(dirs['val'])}\n"
        "names:\n  0: live\n  1: dead\n"
    )
    return data_yaml


def true_size_labels(work: Path, data_yaml: Path) -> Path:
    """A copy of the data whose oriented boxes have the shells' true sizes (``lengths.csv``) instead of the
    painted pixels' rectangle, which is about a pixel longer (+2 % on these shells): whole shells (visible >=
    0.99) get their true length and width about the same centre and angle, the others shrink by 1 px a side."""
    import cv2
    import pandas as pd

    out_dirs = {}
    for part in ("train", "val"):
        for seed in SEEDS[part]:
            src = work / "src" / f"{part}-{seed}"
            dst = work / "true" / f"{part}-{seed}"
            (dst / "images").mkdir(parents=True, exist_ok=True)
            (dst / "labels").mkdir(parents=True, exist_ok=True)
            sizes = pd.read_csv(src / "lengths.csv")
            for name, rows in sizes.groupby("image"):
                h, w = cv2.imread(str(src / "images" / name)).shape[:2]
                lab = np.loadtxt(src / "obb" / "labels" / name.replace(".jpg", ".txt"), ndmin=2)
                lines = []
                for r in rows.itertuples():
                    corners = (lab[r.label, 1:].reshape(4, 2) * [w, h]).astype(np.float32)
                    (cx, cy), (rw, rh), ang = cv2.minAreaRect(corners)
                    if r.visible >= 0.99:
                        rw, rh = (r.length_px, r.width_px) if rw >= rh else (r.width_px, r.length_px)
                    else:
                        rw, rh = max(rw - 1.0, 1.0), max(rh - 1.0, 1.0)
                    c = np.clip(cv2.boxPoints(((cx, cy), (rw, rh), ang)) / [w, h], 0.0, 1.0)
                    lines.append(f"{int(lab[r.label, 0])} " + " ".join(f"{v:.6f}" for v in c.reshape(-1)))
                (dst / "labels" / name.replace(".jpg", ".txt")).write_text("".join(x + "\n" for x in lines))
                link = dst / "images" / name
                if not link.exists():
                    os.symlink(src / "images" / name, link)
            out_dirs.setdefault(part, []).append(str((dst / "images").relative_to(work)))
    yaml = work / "obb-true-data.yaml"
    yaml.write_text(f"path: {work}\ntrain: {json.dumps(out_dirs['train'])}\nval: {json.dumps(out_dirs['val'])}\n"
                    "names:\n  0: live\n  1: dead\n")
    return yaml


def finetune(work: Path, a: argparse.Namespace) -> Path:
    """Fine-tune the trained best.pt on true-size labels (:func:`true_size_labels`), no mosaic, low-rate SGD
    (a fresh AdamW state at full rate without warm-up wrecked the model: mAP50 0.99 -> 0.47 in one epoch)."""
    from ultralytics import YOLO

    data_yaml = true_size_labels(work, work / "obb-data.yaml")
    run_dir = work / "runs" / "obb-true"
    last = run_dir / "weights" / "last.pt"
    if a.resume and last.exists():
        YOLO(str(last)).train(resume=True)
        return run_dir
    YOLO(str(work / "runs" / "obb" / "weights" / "best.pt")).train(
        data=str(data_yaml), epochs=a.finetune, imgsz=a.imgsz, batch=a.batch, device="cpu", workers=0,
        plots=False, project=str(work / "runs"), name="obb-true", exist_ok=True, save_period=1, seed=0,
        deterministic=True, cache=True, flipud=0.5, fliplr=0.5, close_mosaic=a.finetune, optimizer="SGD", lr0=0.001,
        warmup_epochs=0, verbose=True, amp=False)
    return run_dir


def train(data_yaml: Path, work: Path, a: argparse.Namespace) -> Path:
    """Train (or resume) and return the run directory."""
    from ultralytics import YOLO

    run_dir = work / "runs" / "obb"
    last = run_dir / "weights" / "last.pt"
    if a.resume and last.exists():
        log.info("resuming from %s", last)
        YOLO(str(last)).train(resume=True)
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    kwargs = dict(
        data=str(data_yaml), epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, device="cpu", workers=0, plots=False,
        project=str(work / "runs"), name="obb", exist_ok=True, save_period=1, seed=0, deterministic=True,
        cache=True, flipud=0.5, fliplr=0.5, degrees=a.degrees, close_mosaic=a.close_mosaic, patience=100,
        verbose=True, amp=False,
    )
    if a.hours:
        kwargs["time"] = a.hours
    model = YOLO("yolov8n-obb.yaml")
    if a.init:  # layers of the same name and shape (backbone, neck, box and class branches) start from it
        model.load(a.init)
    model.train(**kwargs)
    return run_dir


def ship(work: Path, a: argparse.Namespace) -> int:
    """Copy best.pt to ``data/models/mussel-obb.pt`` and write its settings card and ``train.json``."""
    from musseltools.models.card import card_names, write_card

    run_dir = work / "runs" / "obb"
    tuned = work / "runs" / "obb-true" / "weights" / "best.pt"  # the fine-tuned model, when there is one
    best = tuned if tuned.exists() else run_dir / "weights" / "best.pt"
    if not best.exists():
        log.error("no best.pt at %s: train first (or --resume)", best)
        return 1
    dest = MODELS / "mussel-obb.pt"
    shutil.copyfile(best, dest)
    timing = json.loads((work / "train_timing.json").read_text()) if (work / "train_timing.json").exists() else {}
    rows = (run_dir / "results.csv").read_text().splitlines() if (run_dir / "results.csv").exists() else []
    info = {"sha256": sha256(dest), "size_bytes": dest.stat().st_size, "seeds": SEEDS, "imgsz": a.imgsz,
            "n_train": a.n_train, "n_val": a.n_val, "epochs_run": max(0, len(rows) - 1),
            "last_epoch_metrics": rows[-1] if rows else None, "header": rows[0] if rows else None,
            "weights_from": str(best), "finetune_epochs": sum(1 for _ in open(tuned.parents[1] / "results.csv")) - 1
            if tuned.exists() else 0,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU (shared with other jobs)"} | timing
    (work / "train.json").write_text(json.dumps(info, indent=2) + "\n")
    recommended = {"imgsz": a.imgsz, "tile": "auto"}
    how = {
        "imgsz": f"The model was trained at {a.imgsz} px on whole 416x320..640x480 survey frames, so 640x480 frames"
        " are read at native resolution, then fine-tuned on the shells' true sizes (scripts/train_obb_model.py).",
        "tile": f"Not tuned: images longer than 2 x {a.imgsz} px are cut into {a.imgsz}-px tiles at native"
        " resolution (quadrat photos); the model was trained and measured on whole frames only.",
    }
    card_names(dest)[0].unlink(missing_ok=True)  # regenerated whole from this run
    write_card(dest, recommended, how)
    log.info("shipped %s (%d bytes) and its card", dest, dest.stat().st_size)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/work/mt-train-obb", help="scratch folder for data and runs")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--hours", type=float, default=None, help="Ultralytics time budget (overrides epochs)")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--init", default=str(MODELS / "mussel-demo.pt"),
                    help="weights to start from (the demo detector: it already knows mussels); '' for none")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--degrees", type=float, default=0.0, help="rotation augmentation (shells lie at every angle)")
    ap.add_argument("--close-mosaic", type=int, default=5)
    ap.add_argument("--n-train", type=int, default=150, help="whole small survey frames to train on")
    ap.add_argument("--n-val", type=int, default=16)
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    ap.add_argument("--finetune", type=int, default=0,
                    help="then fine-tune best.pt this many epochs on true-size labels (runs/obb-true)")
    ap.add_argument("--ship", action="store_true", help="copy best.pt into data/models and write the card")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.ship:
        return ship(work, args)
    if args.finetune:
        t0 = time.time()
        finetune(work, args)
        log.info("fine-tuned in %.0f s", time.time() - t0)
        return 0
    timing_file = work / "train_timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    t0 = time.time()
    data_yaml = make_sets(work, args.n_train, args.n_val)
    timing.setdefault("data_s", round(time.time() - t0, 1))
    t0 = time.time()
    prior = timing.get("train_s", 0.0) if args.resume else 0.0
    if not args.resume:
        timing.update(hours=args.hours, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch)
    timing_file.write_text(json.dumps(timing))
    train(data_yaml, work, args)
    timing["train_s"] = round(prior + time.time() - t0, 1)
    timing_file.write_text(json.dumps(timing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
