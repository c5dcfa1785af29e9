"""Calibration on 3 labelled quadrats against the defaults and SAHI's default, on other quadrats.

The case of issue 25: a detector without a card (here the demo weights copied without their card, so
musseltools knows nothing of them), run as a new user would (320-px tiles, threshold 0.25, musseltools'
defaults otherwise: NMS IoU 0.7, ``edge`` merge). ``mt.calibrate`` then chooses the NMS IoU, tile merge
and size and the thresholds from 3 labelled generated quadrats (``musseltools.synth``, seed
``--calib-seed``) and writes the card; a run of the other quadrats (seed ``--test-seed``, never seen by
the calibration) with nothing given uses it. Count error on those other quadrats: the sum over images
and classes of ``|predicted - true|``, before (the new user's run), after (the card), and SAHI's
``get_sliced_prediction`` with its defaults (greedy NMM, IoS 0.5; the model's own NMS IoU) at the same
tiles, overlap and threshold 0.25, when ``sahi`` is importable.

Usage::

    python benchmarks/calibrate.py                              # 3 + 4 quadrats of 1600x1200
    python benchmarks/calibrate.py --size 4000x3000 --ious 0.3,0.35,0.4,0.45,0.5,0.55,0.6,0.65,0.7
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import musseltools as mt  # noqa: E402
from musseltools import synth  # noqa: E402

CLASSES = ["live", "dead"]


def errors(per_image: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Summed |predicted - true| over images and classes, per class and in all; predicted totals."""
    pred = per_image.assign(image=per_image["path"].map(lambda p: Path(p).name)).set_index("image")[CLASSES]
    t = truth.set_index("image")[CLASSES].reindex(pred.index)
    out = {f"|err| {c}": float((pred[c] - t[c]).abs().sum()) for c in CLASSES}
    out["|err| all"] = sum(out.values())
    out.update({f"{c} predicted": int(pred[c].sum()) for c in CLASSES})
    out.update({f"{c} true": int(t[c].sum()) for c in CLASSES})
    return out


def sahi_counts(images: Path, weights: Path, tile: int, overlap: float, conf: float) -> pd.DataFrame:
    """Per-image counts of SAHI's sliced prediction with its default postprocess at one confidence."""
    import cv2
    from sahi import AutoDetectionModel
    from sahi.predict import get_sliced_prediction

    model = AutoDetectionModel.from_pretrained(model_type="ultralytics", model_path=str(weights), device="cpu",
                                               confidence_threshold=conf, image_size=tile)
    rows = []
    for p in sorted(images.glob("*.jpg")):
        rgb = np.ascontiguousarray(cv2.imread(str(p))[:, :, ::-1])
        res = get_sliced_prediction(rgb, model, slice_height=tile, slice_width=tile, overlap_height_ratio=overlap,
                                    overlap_width_ratio=overlap, perform_standard_pred=False, verbose=0)
        names = [o.category.name for o in res.object_prediction_list]
        rows.append({"path": str(p), **{c: names.count(c) for c in CLASSES}})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1600x1200")
    ap.add_argument("--density", type=float, default=1.0)
    ap.add_argument("--calib-seed", type=int, default=71)
    ap.add_argument("--test-seed", type=int, default=72)
    ap.add_argument("--n-test", type=int, default=4)
    ap.add_argument("--tile", type=int, default=320, help="the new user's tile size")
    ap.add_argument("--threshold", type=float, default=0.25, help="the new user's threshold")
    ap.add_argument("--ious", default="0.3,0.4,0.5,0.6,0.7", help="NMS IoUs searched")
    ap.add_argument("--merges", default="edge,ios,nmm")
    ap.add_argument("--tiles", default="320", help="tile sizes searched")
    ap.add_argument("--no-sahi", action="store_true")
    ap.add_argument("--work", help="working folder (a temporary one by default)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-calibrate-"))
    size = synth.parse_size(args.size)
    lab = synth.generate(work / "calib", n=3, seed=args.calib_seed, size=size, density=args.density)
    test = synth.generate(work / "test", n=args.n_test, seed=args.test_seed, size=size, density=args.density)
    weights = work / "models" / "detector.pt"  # the demo weights without their card: a detector musseltools never saw
    weights.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "data" / "models" / "mussel-demo.pt", weights)
    for stale in weights.parent.glob("detector.yaml*"):
        stale.unlink()
    store = work / "store"
    user = {"model": weights, "tile": args.tile, "threshold": args.threshold, "store": store, "quiet": True}
    t0 = time.perf_counter()
    survey = mt.run(work / "calib" / "images", **user)
    cal = mt.calibrate(survey, work / "calib" / "labels", ious=[float(v) for v in args.ious.split(",")],
                       tile_merges=args.merges.split(","), tile_sizes=[int(v) for v in args.tiles.split(",")])
    took = time.perf_counter() - t0
    print(cal.report())
    print(f"\ncalibration took {took:.0f} s ({cal.inferred} images inferred)")
    cal.write_card(force=True)
    before = mt.run(work / "test" / "images", **user)
    after = mt.run(work / "test" / "images", model=weights, store=store, quiet=True)
    rows = {"defaults (tile 320, threshold 0.25)": errors(before.per_image(), test),
            "after calibration (the card)": errors(after.per_image(), test)}
    if not args.no_sahi:
        try:
            rows["SAHI default (tile 320, conf 0.25)"] = errors(
                sahi_counts(work / "test" / "images", weights, args.tile, 0.2, args.threshold), test)
        except ImportError:
            print("sahi is not importable: its row is left out", file=sys.stderr)
    print(f"\ncount error on {args.n_test} other quadrats ({args.size}, density {args.density}, seed {args.test_seed}; "
          f"calibrated on 3 of seed {args.calib_seed}); after: {after.settings_table()['value'].to_dict()}")
    print(pd.DataFrame(rows).T.to_string(float_format=lambda v: f"{v:.0f}"))
    print(f"\nlabelled quadrats: {int(lab[CLASSES].to_numpy().sum())} mussels; work folder {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
