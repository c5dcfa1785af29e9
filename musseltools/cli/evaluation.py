"""``evaluate`` and ``compare``: a run against truth, and two runs against each other. No inference."""

from __future__ import annotations

import argparse
import json

from .common import EXIT_OK, positive_int, store_arg, threshold_arg


# ------------------------------------------------------------------------------------------------ evaluate
def _cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..evaluation import evaluate
    from ..evaluation.linking import preview
    from ..runs.run import Run

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


def register_evaluate(sub: argparse._SubParsersAction) -> None:
    """``musseltools evaluate RUN_ID TRUTH [--store DIR] [--threshold T] [--json]``."""
    from ..evaluation.calibration import OBJECTIVES

    p = sub.add_parser(
        "evaluate", help="metrics of a run against hand counts or labels, and calibrated thresholds",
        description="Compare a run with ground truth (Ultralytics label folder, COCO JSON, or a CSV of counts "
                    "per image and class): precision, recall, F1, AP, count error, and thresholds that "
                    "minimise count error. No inference.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("truth", metavar="TRUTH", help="label folder, COCO .json, counts .csv, or 'verified' (the images "
                   "verified by hand; the model alone is scored against them)")
    store_arg(p)
    p.add_argument("--threshold", type=float, metavar="T", help="confidence threshold (default: the run's)")
    p.add_argument("--iou", type=float, default=0.5, metavar="F", help="IoU of a match (0.5)")
    p.add_argument("--objective", choices=OBJECTIVES, default="mae", help="what calibration minimises (mae)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)


# ------------------------------------------------------------------------------------------------ compare
def _cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..evaluation.compare import compare, setting_text

    c = compare(args.run_a, args.run_b, store=args.store, threshold_a=args.threshold_a,
                threshold_b=args.threshold_b, corrected=not args.model_only)
    if args.plot:
        from ..plots.compare import bland_altman

        bland_altman(c).savefig(args.plot, dpi=120)
    if args.json:
        print(json.dumps(c.to_json(top=args.top), indent=2, allow_nan=False, default=str))
        return EXIT_OK
    a, b = c.run_a, c.run_b
    print(f"run A {a['run_id']} ({a['model'].rsplit('/', 1)[-1]}, {a['family']}) against run B {b['run_id']} "
          f"({b['model'].rsplit('/', 1)[-1]}, {b['family']}): {len(c.images)} images with results in both "
          f"({len(c.only_a)} only in A, {len(c.only_b)} only in B); differences are B − A")
    print(f"thresholds: A {setting_text(a['thresholds'])}, B {setting_text(b['thresholds'])}")
    diff = c.differences
    if diff.empty:
        print("settings: the same weights, settings and thresholds (any difference comes from hand corrections)")
    else:
        print("\nwhat differs besides the counts (counts of the two runs mix these effects)")
        print(diff.rename(columns={"a": f"A {a['run_id']}", "b": f"B {b['run_id']}"}).to_string())
    fmt = {"float_format": lambda v: f"{v:.2f}"}
    print(f"\nagreement per image ({c.level:.0%} limits of agreement)")
    print(c.agreement.to_string(**fmt))
    print(f"\nsurvey totals ({c.level:.0%} bootstrap intervals over images)")
    print(c.totals.to_string(**fmt))
    top = c.disagreements(args.top)
    if top.empty:
        print("\nthe two runs count every image alike")
    else:
        cols = [f"{k}_{s}" for k in c.categories for s in ("a", "b")]
        table = pd.DataFrame({"image": top["path"].map(lambda p: p.rsplit("/", 1)[-1]), **{k: top[k] for k in cols},
                              "disagreement": top["disagreement"]})
        print("\nimages where the two disagree most (they head run A's review queue with other=run B)")
        print(table.to_string(index=False))
    if args.plot:
        print(f"\nBland-Altman plot written to {args.plot}")
    return EXIT_OK


def register_compare(sub: argparse._SubParsersAction) -> None:
    """``musseltools compare RUN_A RUN_B [--store DIR] [--threshold-a T] [--threshold-b T] [--top N] [--plot PNG] [--json]``."""
    p = sub.add_parser(
        "compare", help="compare two runs over the same images (two models, or two versions of one)",
        description="Per-image counts of two runs, their agreement (mean difference and limits of agreement, "
                    "B − A), survey totals with bootstrap intervals, and the images where they disagree most. "
                    "No inference.",
    )
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    store_arg(p)
    for which in ("a", "b"):
        p.add_argument(f"--threshold-{which}", type=threshold_arg, metavar="T",
                       help=f"thresholds of run {which.upper()} (default: its own in effect)")
    p.add_argument("--top", type=positive_int, default=10, metavar="N", help="images listed where they disagree (10)")
    p.add_argument("--plot", metavar="PNG", help="write the Bland-Altman plot to this file")
    p.add_argument("--model-only", action="store_true", help="counts of the models alone, without hand corrections")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_compare)
