"""Shell length accuracy: lengths measured by the shipped models against the synthetic shells' true lengths.

Synthetic frames (``musseltools.synth``) write every shell's true length in pixels (``lengths.csv``). A known
scale (``--mm-per-px``, given in the sample sheet) turns pixels into millimetres. Each model runs on the frames
through ``mt.run`` with its card's settings: the demo detector (axis-aligned boxes: ``length_method="box"``,
the box's long side) and the oriented-box model ``mussel-obb.pt`` (``length_method="outline"``: the long side
of the oriented box, the outline's minimum-area rectangle). Each whole live shell (nothing hidden) is matched
one to one to a detection of its class with IoU >= 0.5 of the axis-aligned boxes (greedy by confidence), and
its length error is ``length_mm - true length`` (a matched detection reaching beyond the image's edge has no
``length_mm`` and is counted apart). Printed per model: the median and 90th percentile of the
absolute error in mm and in %, and the signed median (the bias). For reference, the same for the two box
estimators on the *true* boxes (long side, diagonal): what chose the long side (docs:
``musseltools.results.sizes``), and for the long side of the true oriented boxes (the ``obb/`` labels an OBB
model learns: the painted pixels' minimum-area rectangle, about a pixel longer than the shell as drawn).

    python benchmarks/sizes.py                      # 12 frames of 640x480, both shipped models
    python benchmarks/sizes.py --frames 40 --mm-per-px 0.25
    python benchmarks/sizes.py --model /work/mt-train-obb/runs/obb/weights/last.pt@640   # a checkpoint
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import musseltools as mt
from musseltools.synth.frames import FrameSpec, generate_frames

ROOT = Path(__file__).resolve().parents[1]
#: The shipped models measured by default: the demo detector (boxes) and the oriented-box model (outlines).
SHIPPED = (ROOT / "data/models/mussel-demo.pt", ROOT / "data/models/mussel-obb.pt")


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda t: (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def truth(out: Path, names: list[str]) -> pd.DataFrame:
    """Every labelled shell: image, cls, kind, visible, true length (px), its true box (px) and the long side of
    its oriented-box label (px; what an OBB model learns: the painted pixels' minimum-area rectangle)."""
    sizes = pd.read_csv(out / "lengths.csv")
    rows = []
    for name in names:
        import cv2

        h, w = cv2.imread(str(out / "images" / name)).shape[:2]
        lab = np.loadtxt(out / "labels" / name.replace(".jpg", ".txt"), ndmin=2)
        obb = np.loadtxt(out / "obb" / "labels" / name.replace(".jpg", ".txt"), ndmin=2)[:, 1:].reshape(-1, 4, 2)
        obb = obb * [w, h]
        obb_long = np.maximum(np.linalg.norm(obb[:, 1] - obb[:, 0], axis=1), np.linalg.norm(obb[:, 2] - obb[:, 1], axis=1))
        for r in sizes[sizes["image"] == name].itertuples():
            _, cx, cy, bw, bh = lab[r.label]
            rows.append({"image": name, "cls": r.cls, "kind": r.kind, "visible": r.visible, "true_px": r.length_px,
                         "x1": (cx - bw / 2) * w, "y1": (cy - bh / 2) * h, "x2": (cx + bw / 2) * w,
                         "y2": (cy + bh / 2) * h, "obb_px": obb_long[r.label]})
    return pd.DataFrame(rows)


def measure(out: Path, work: Path, model: str, whole: pd.DataFrame, mm_per_px: float, **options) -> tuple:
    """Run ``model`` on the frames; (measured mm, true mm, length methods) of the whole live shells matched one
    to one to a detection of their class with IoU >= 0.5 of the axis-aligned boxes (greedy by confidence)."""
    run = mt.run(out / "images", model=model, store=work / f"store-{Path(model).stem}-{len(options)}",
                 sheet=work / "sheet.csv", **options)
    dets = run.detections()
    dets = dets.assign(image=dets["path"].map(lambda p: Path(p).name))
    cls_of = {"live": 0, "dead": 1}
    errs = []
    for name, t in whole.groupby("image"):
        d = dets[(dets["image"] == name)].sort_values("confidence", ascending=False)
        used: set[int] = set()
        iou = _iou(d[["x1", "y1", "x2", "y2"]].to_numpy(float), t[["x1", "y1", "x2", "y2"]].to_numpy(float))
        dcls = d["category"].map(cls_of).to_numpy() if "category" in d else d["class_id"].to_numpy()
        for i in range(len(d)):
            cand = [(iou[i, j], j) for j in range(len(t)) if j not in used and dcls[i] == t["cls"].iat[j]]
            if cand and max(cand)[0] >= 0.5:
                j = max(cand)[1]
                used.add(j)
                errs.append((d["length_mm"].iat[i], t["true_px"].iat[j] * mm_per_px))
    got, want = np.array(errs).T
    return got, want, sorted(set(dets["length_method"].dropna()))


def figures(err_mm: np.ndarray, err_pct: np.ndarray) -> str:
    return (f"n={len(err_mm)} median_abs_mm={np.median(np.abs(err_mm)):.2f} p90_abs_mm={np.quantile(np.abs(err_mm), .9):.2f} "
            f"median_abs_pct={np.median(np.abs(err_pct)):.1f} p90_abs_pct={np.quantile(np.abs(err_pct), .9):.1f} "
            f"bias_pct={np.median(err_pct):+.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--mm-per-px", type=float, default=0.2)
    ap.add_argument("--model", action="append", metavar="PATH[@IMGSZ]",
                    help="a model to measure (repeat for several; @IMGSZ sets its input size, else its card's);"
                    " default: every shipped model (mussel-demo.pt, mussel-obb.pt)")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="mt-sizes-"))
    out = work / "synth"
    generate_frames(out, [FrameSpec(f"s{i:03d}", w, h) for i in range(args.frames)], seed=args.seed)
    names = sorted(p.name for p in (out / "images").glob("*.jpg"))
    (work / "sheet.csv").write_text("image,area_m2,mm_per_px\n" + "".join(f"{n},1,{args.mm_per_px}\n" for n in names))
    true = truth(out, names)
    whole = true[(true["kind"] == "live") & (true["visible"] >= 0.99)]

    # the two box estimators on the true boxes
    bw, bh = (whole["x2"] - whole["x1"]).to_numpy(), (whole["y2"] - whole["y1"]).to_numpy()
    for label, est in (("true boxes, long side", np.maximum(bw, bh)), ("true boxes, diagonal", np.hypot(bw, bh)),
                       ("true oriented boxes (labels)", whole["obb_px"].to_numpy())):
        e = (est - whole["true_px"].to_numpy()) * args.mm_per_px
        print(f"{label:32s} {figures(e, 100 * e / (whole['true_px'].to_numpy() * args.mm_per_px))}")

    for spec in args.model or [str(m) for m in SHIPPED if m.exists()]:
        path, _, imgsz = spec.partition("@")
        opts = {"imgsz": int(imgsz)} if imgsz else {}
        got, want, methods = measure(out, work, path, whole, args.mm_per_px, **opts)
        mm = np.isfinite(got)  # a detection reaching beyond the image's edge has no length in mm
        got, want = got[mm], want[mm]
        label = f"{Path(path).name}{'@' + imgsz if imgsz else ''}, matched"
        print(f"{label:32s} {figures(got - want, 100 * (got - want) / want)} "
              f"(of {len(whole)} whole live shells, {int((~mm).sum())} more matched but past the image's edge: no mm;"
              f" method {methods})")


if __name__ == "__main__":
    main()
