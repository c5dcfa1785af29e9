"""The ``musseltools`` command line. Flags mirror the Python keywords of the same names.

Commands: ``run``, ``status``, ``counts``, ``export-polygons``, ``synth``, ``evaluate`` (and the
commands that other modules register: ``report``). Errors print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def _threshold_arg(text: str) -> float | dict[str, float]:
    """``0.5``, or one per class or category: ``live=0.45,dead=0.6`` (validated against the run later)."""
    from .errors import ThresholdError
    from .thresholds import Thresholds

    try:
        t = Thresholds.parse(text)
    except ThresholdError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return t.default if t.default is not None else dict(t.per_class)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return n


def _tile_arg(text: str) -> int | str:
    if text == "auto":
        return "auto"
    return _positive_int(text)


def _class_map_arg(text: str) -> dict[str, str]:
    """``name=category,name=category`` or a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        return {str(k): str(v) for k, v in json.loads(text).items()}
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, cat = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"class map entry {item!r} is not NAME=CATEGORY")
        out[name.strip()] = cat.strip()
    return out


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="DIR", help="results store (default $MUSSELTOOLS_STORE or ./data/store)")


# ------------------------------------------------------------------------------------------------ run
def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``report`` (the inference settings of a run)."""
    p.add_argument("images", metavar="IMAGES", help="folder of images (searched recursively) or one image")
    p.add_argument("--model", required=True, metavar="WEIGHTS", help="Ultralytics YOLO weights (.pt)")
    p.add_argument("--threshold", type=_threshold_arg, default=0.5, metavar="T", help="confidence threshold (0.5)")
    _store_arg(p)
    p.add_argument("--batch-size", type=_positive_int, metavar="N", help="images per model call (measured if unset)")
    p.add_argument("--commit-every", type=_positive_int, metavar="N", help="images per committed part (32)")
    p.add_argument("--conf-floor", type=float, default=0.01, metavar="F", help="lowest confidence stored (0.01)")
    p.add_argument("--imgsz", type=_positive_int, metavar="N",
                   help="model input size (default: the size the model was trained at, else 640)")
    p.add_argument("--iou", type=float, default=0.7, metavar="F", help="NMS IoU threshold (0.7)")
    p.add_argument("--max-det", type=_positive_int, default=10000, metavar="N",
                   help="detection cap per image (10000)")
    p.add_argument("--tile", type=_tile_arg, metavar="SIZE", help="tile size in pixels, or 'auto', for large images")
    p.add_argument("--tile-overlap", type=float, default=0.2, metavar="FRAC", help="tile overlap fraction (0.2)")
    p.add_argument("--class-map", type=_class_map_arg, metavar="MAP", help="NAME=CATEGORY,... grouping classes")
    p.add_argument("--name", help="collection name (the folder's name by default)")
    p.add_argument("--device", help="cpu, cuda:0, ... (the fastest available by default)")
    p.add_argument("--wait", action="store_true", help="wait for another process holding the run, not fail")


def run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``musseltools.run`` from parsed ``run`` options."""
    return {
        "model": args.model, "threshold": args.threshold, "store": args.store, "batch_size": args.batch_size,
        "commit_every": args.commit_every, "conf_floor": args.conf_floor, "imgsz": args.imgsz, "iou": args.iou,
        "max_det": args.max_det, "tile": args.tile, "tile_overlap": args.tile_overlap, "class_map": args.class_map,
        "name": args.name, "device": args.device, "wait": args.wait,
    }


def _cmd_run(args: argparse.Namespace) -> int:
    from .engine import run

    t0 = time.perf_counter()
    r = run(args.images, quiet=args.quiet or args.json, **run_kwargs(args))
    m = r.meta
    out = {
        "run_id": r.run_id, "status": m["status"], "total_images": m["total_images"],
        "processed_count": m["processed_count"], "failed_count": m["failed_count"], "threshold": m["threshold"],
        "counts": m["counts"], "inferred_this_call": m.get("inferred_this_call", 0),
    }
    if args.json:
        _print_json(out)
    else:
        print(_summary(r, m, time.perf_counter() - t0))
    return EXIT_OK if m["status"] == "completed" else EXIT_ERROR


def _summary(r: Any, m: dict[str, Any], seconds: float) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in m["counts"].items())
    inferred = m.get("inferred_this_call", 0)
    reuse = (
        "nothing to infer: every image already had a result (no inference)"
        if inferred == 0 else f"{inferred} images inferred in this call"
    )
    lines = [
        f"run {r.run_id}  {m['status']}  ({m['collection']['name']}, model {m['model']['path'].rsplit('/', 1)[-1]})",
        f"  images  {m['total_images']}   failed {m['failed_count']}   threshold {m['threshold']}",
        f"  counts  {counts}",
        f"  {reuse}; {seconds:.1f} s",
        f"  store   {r.store.root}",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ status
def _cmd_status(args: argparse.Namespace) -> int:
    from .runs import Run, list_runs

    if args.run_id:
        r = Run(args.store, args.run_id)
        m = r.meta
        keys = ("run_id", "status", "total_images", "processed_count", "failed_count", "threshold",
                "saved_thresholds", "counts", "inferred_this_call", "created_at", "started_at", "updated_at",
                "finished_at", "error", "inference_key")
        info = {k: m.get(k) for k in keys}
        info["collection"] = m["collection"]
        info["model"] = {k: m["model"][k] for k in ("path", "fingerprint", "task", "names")}
        info["settings"] = m["settings"]
        if args.json:
            _print_json(info)
        else:
            done = m.get("processed_count", 0)
            total = m.get("total_images", 0) or 0
            print(f"run {m['run_id']}  {m['status']}  {done}/{total} images, {m.get('failed_count', 0)} failed")
            print(f"  counts at {r.rule().label(r.class_names)}: {m.get('counts')}")
            if m.get("error"):
                print(f"  error: {m['error']}")
        return EXIT_OK
    table = list_runs(store=args.store)
    if args.json:
        _print_json(table.to_dict(orient="records"))
    elif table.empty:
        print("no runs in this store")
    else:
        cols = ["run_id", "collection", "model", "threshold", "status", "total_images", "failed_count", "counts"]
        print(table[cols].to_string(index=False))
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ counts
def _cmd_counts(args: argparse.Namespace) -> int:
    from .runs import Run

    r = Run(args.store, args.run_id)
    t = r.rule(args.threshold)
    table = r.per_image(t)
    cats = r.categories
    out = {
        "run_id": r.run_id, "threshold": t.to_json(r.class_names), "counts": {c: int(table[c].sum()) for c in cats},
        "images": [
            {"image_id": row["image_id"], "path": row["path"], "counts": {c: int(row[c]) for c in cats},
             "error": row["error"] if isinstance(row["error"], str) else None}
            for row in table.to_dict(orient="records")
        ],
    }
    if args.json:
        _print_json(out)
    else:
        print(f"run {r.run_id} at threshold {t.label(r.class_names)}: " + ", ".join(f"{k} {v}" for k, v in out["counts"].items()))
        print(table[["path", *cats, "error"]].to_string(index=False))
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ export
def _cmd_export(args: argparse.Namespace) -> int:
    from .runs import Run

    files = Run(args.store, args.run_id).export_polygons(args.out_dir, threshold=args.threshold)
    print(f"wrote {len(files)} polygon files to {args.out_dir}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ synth
def _cmd_synth(args: argparse.Namespace) -> int:
    from . import synth

    kwargs: dict[str, Any] = {"n": args.n, "seed": args.seed, "density": args.density}
    if args.size:
        kwargs["size"] = synth.parse_size(args.size)
    if args.large:
        kwargs["large"] = args.large
    table = synth.generate(args.out, **kwargs)
    print(f"wrote {len(table)} synthetic images with labels to {args.out}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ evaluate
def _cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from .evaluation import evaluate
    from .evaluation.linking import preview
    from .runs import Run

    run = Run(args.store, args.run_id)
    ev = evaluate(run, args.truth, iou=args.iou, threshold=args.threshold, objective=args.objective)
    if args.json:
        print(json.dumps(ev.summary(), indent=2, allow_nan=False))
        return EXIT_OK
    m = ev.metrics.set_index("class")
    cal = ev.calibration.set_index("class")
    table = pd.DataFrame({
        "threshold": m["threshold"], "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
        "ap50": m["ap50"], "ap50_95": m["ap50_95"], "count_mae": m["count_mae"], "count_bias": m["count_bias"],
        "best_t_count": cal["best_threshold_count"], "best_t_f1": cal["best_threshold_f1"],
    })
    print(f"run {ev.run_id} against {ev.truth.format} truth {ev.truth.source}: {ev.images_evaluated} images, "
          f"IoU {ev.iou:g}")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    tot = ev.totals.set_index("class")
    print("\nsurvey totals (95% bootstrap intervals over images; corrected: ratio estimator on the validated images)")
    print(pd.DataFrame({
        "predicted": tot["predicted_total"], "ci_low": tot["ci_low"], "ci_high": tot["ci_high"],
        "corrected": tot["corrected_total"], "corr_ci_low": tot["corrected_ci_low"],
        "corr_ci_high": tot["corrected_ci_high"],
    }).to_string(float_format=lambda v: f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"))
    if ev.unmatched_labels:
        print(f"{len(ev.unmatched_labels)} truth entries match no image: {preview(ev.unmatched_labels)}")
    if ev.unmatched_images:
        print(f"{len(ev.unmatched_images)} images have no truth (not evaluated)")
    if ev.failed_images:
        print(f"{len(ev.failed_images)} images have no result (not evaluated)")
    return EXIT_OK


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    """``musseltools evaluate RUN_ID TRUTH [--store DIR] [--threshold T] [--json]``."""
    from .evaluation.calibration import OBJECTIVES

    p = sub.add_parser(
        "evaluate", help="metrics of a run against hand counts or labels, and calibrated thresholds",
        description="Compare a run with ground truth (Ultralytics label folder, COCO JSON, or a CSV of counts "
                    "per image and class): precision, recall, F1, AP, count error, and thresholds that "
                    "minimise count error. No inference.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("truth", metavar="TRUTH", help="label folder, COCO .json or counts .csv")
    _store_arg(p)
    p.add_argument("--threshold", type=float, metavar="T", help="confidence threshold (default: the run's)")
    p.add_argument("--iou", type=float, default=0.5, metavar="F", help="IoU of a match (0.5)")
    p.add_argument("--objective", choices=OBJECTIVES, default="mae", help="what calibration minimises (mae)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)


# ------------------------------------------------------------------------------------------------ parser
Registrar = Callable[[argparse._SubParsersAction], None]


def _register_core(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="create or resume a survey run", description="Create or resume a run; "
                       "only images without a result are inferred.")
    add_run_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("status", help="status of one run, or a list of runs")
    p.add_argument("run_id", nargs="?", metavar="RUN_ID")
    _store_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("counts", help="counts at a threshold, without inference")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--threshold", type=_threshold_arg, metavar="T",
                   help="confidence threshold, or one per class: live=0.45,dead=0.6 (default: the run's saved "
                   "thresholds; a class left out keeps the run's threshold)")
    _store_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_counts)

    p = sub.add_parser("export-polygons", help="one polygon JSON per image (the older per-image format)")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--threshold", type=_threshold_arg, metavar="T",
                   help="confidence threshold, or one per class: live=0.45,dead=0.6 (default: the run's saved thresholds)")
    _store_arg(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("synth", help="generate a synthetic survey with labels")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--n", type=_positive_int, default=20, metavar="N", help="number of images (20)")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--size", metavar="WxH", help="image size, e.g. 640x480 (varied when unset)")
    p.add_argument("--density", type=float, default=1.0, metavar="D", help="mussel density multiplier (1.0)")
    p.add_argument("--large", type=int, default=0, metavar="K", help="make the last K images large quadrats")
    p.set_defaults(func=_cmd_synth)


def _registrars() -> list[Registrar]:
    regs: list[Registrar] = [_register_core]
    for mod in ("report",):
        try:
            module = __import__(f"musseltools.{mod}", fromlist=["register_cli"])
        except ImportError:
            continue
        if hasattr(module, "register_cli"):
            regs.append(module.register_cli)
    regs.append(_register_evaluate)
    return regs


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="musseltools", description="Count live and dead mussels in survey photographs with YOLO."
    )
    parser.add_argument("--version", action="version", version=f"musseltools {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False) or getattr(args, "json", False)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.WARNING if quiet else logging.INFO),
        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr,
    )
    from .errors import MusselToolsError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("musseltools: cancelled; committed work is kept — run again to resume", file=sys.stderr)
        return EXIT_CANCELLED
    except MusselToolsError as exc:
        from .errors import RunCancelled

        print(f"musseltools: error: {exc}", file=sys.stderr)
        return EXIT_CANCELLED if isinstance(exc, RunCancelled) else EXIT_ERROR
    except (OSError, ValueError) as exc:
        print(f"musseltools: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
