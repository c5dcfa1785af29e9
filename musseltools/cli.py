"""The ``musseltools`` command line. Flags mirror the Python keywords of the same names.

Commands: ``run``, ``status``, ``counts``, ``export-polygons``, ``synth``, ``report``, ``evaluate``,
``corrections export|import|report``, ``export-dataset``, ``compare``, ``compact``.
The flags of ``run`` and ``report`` are generated from :mod:`musseltools.core.options`. Errors print one
line and exit non-zero; a reader that goes away (``| head -1``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .core.options import OPTIONS, Option, parse_positive_int, parse_threshold

__all__ = ["main", "build_parser", "add_options", "add_run_options", "run_kwargs", "report_kwargs"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
#: ``musseltools ... | head -1``: the reader went away (128 + SIGPIPE, as a shell reports it).
EXIT_BROKEN_PIPE = 141


def _arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser of :mod:`musseltools.core.options` (its ValueError becomes the usage error);
    ``float`` and ``int`` are used as they are (argparse's own message)."""
    if parse in (float, int, str):
        return parse

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


_positive_int = _arg_type(parse_positive_int)
_threshold_arg = _arg_type(parse_threshold)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar=OPTIONS.store.metavar, help=OPTIONS.store.help_text)


# ------------------------------------------------------------------------------------------------ run
def _add_option(p: argparse.ArgumentParser, o: Option) -> None:
    if o.flag is None:
        p.add_argument(o.name, metavar=o.metavar, help=o.help_text)
    elif o.switch:
        p.add_argument(o.flag, action="store_true", help=o.help_text)
    else:
        kwargs: dict[str, Any] = {"required": True} if o.required else {"default": o.default}
        if o.parse is not None:
            kwargs["type"] = _arg_type(o.parse)
        p.add_argument(o.flag, metavar=o.metavar, help=o.help_text, **kwargs)


def add_options(p: argparse.ArgumentParser, scope: str) -> None:
    """The flags of the options of a scope (``run`` or ``report``), generated from :mod:`musseltools.core.options`."""
    for o in OPTIONS.of_scope(scope):
        _add_option(p, o)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``report`` (the settings of a run)."""
    add_options(p, "run")


def run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``musseltools.run`` from parsed ``run`` options."""
    return {name: getattr(args, name) for name in OPTIONS.keywords("run")}


def report_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The report's own keyword arguments of ``musseltools.reports.report.report`` from parsed ``report`` options."""
    return {name: getattr(args, name) for name in OPTIONS.keywords("report")}


def _cmd_run(args: argparse.Namespace) -> int:
    from .runs.engine import run

    t0 = time.perf_counter()
    r = run(args.images, quiet=args.quiet or args.json, **run_kwargs(args))
    m = r.meta
    if r.store.read_only:  # a read-only store is never inferred into (run.json keeps its last writer's figure)
        m["inferred_this_call"] = 0
    out = {
        "run_id": r.run_id, "status": m["status"], "total_images": m["total_images"],
        "processed_count": m["processed_count"], "failed_count": m["failed_count"],
        "threshold": r.rule().to_json(r.class_names),  # in effect: a number, or one per class (as `counts`)
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
        f"  images  {m['total_images']}   failed {m['failed_count']}   threshold {r.rule().label(r.class_names)}",
        f"  counts  {counts}",
        f"  {reuse}; {seconds:.1f} s",
        f"  store   {r.store.root}",
    ]
    if m.get("cap_hit_images"):
        from .runs.progress import cap_hit_message

        lines.append("  " + cap_hit_message(m["cap_hit_images"], m["settings"]["max_det"]))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ status
def _cmd_status(args: argparse.Namespace) -> int:
    from .runs.run import Run, list_runs

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
        from .core.thresholds import Thresholds

        cols = ["run_id", "collection", "model", "threshold", "status", "total_images", "failed_count", "counts"]
        # the thresholds in effect, as `status RUN_ID` and `counts` show them: 0.50, or live 0.35, dead 0.23
        shown = table.assign(threshold=[Thresholds.parse(t).label(list(t) if isinstance(t, dict) else None)
                                        for t in table["threshold"]])
        print(shown[cols].to_string(index=False))
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ counts
def _cmd_counts(args: argparse.Namespace) -> int:
    from .runs.run import Run

    r = Run(args.store, args.run_id)
    t = r.rule(args.threshold)
    table = r.per_image(t)
    cats = r.categories
    out = {
        "run_id": r.run_id, "threshold": t.to_json(r.class_names), "counts": {c: int(table[c].sum()) for c in cats},
        "model_counts": r.counts(t, corrected=False), "corrections_applied": r.corrections_applied,
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
        if out["corrections_applied"]:
            print(f"  with {out['corrections_applied']} hand corrections; the model alone: "
                  + ", ".join(f"{k} {v}" for k, v in out["model_counts"].items()))
        print(table[["path", *cats, "error"]].to_string(index=False))
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ export
def _cmd_export(args: argparse.Namespace) -> int:
    from .runs.run import Run

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
    from .runs.run import Run

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
    p.add_argument("truth", metavar="TRUTH", help="label folder, COCO .json, counts .csv, or 'verified' (the images "
                   "verified by hand; the model alone is scored against them)")
    _store_arg(p)
    p.add_argument("--threshold", type=float, metavar="T", help="confidence threshold (default: the run's)")
    p.add_argument("--iou", type=float, default=0.5, metavar="F", help="IoU of a match (0.5)")
    p.add_argument("--objective", choices=OBJECTIVES, default="mae", help="what calibration minimises (mae)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)


# ------------------------------------------------------------------------------------------------ report
def _cmd_report(args: argparse.Namespace) -> int:
    from .reports.report import report

    path = report(args.images, **run_kwargs(args), **report_kwargs(args))
    print(f"report written to {path}")
    return EXIT_OK


def _register_report(sub: argparse._SubParsersAction) -> None:
    """``musseltools report IMAGES --model WEIGHTS [--truth DIR] --out reports/NAME [--show-code]``."""
    p = sub.add_parser("report", help="run (or resume) a survey and write its HTML report",
                       description="Execute the survey report notebook with papermill into OUT/report.ipynb "
                       "and render OUT/report.html (code hidden unless --show-code).")
    add_options(p, "run")
    add_options(p, "report")
    p.set_defaults(func=_cmd_report)


# ------------------------------------------------------------------------------------------------ compare
def _cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from .evaluation.compare import compare, setting_text

    c = compare(args.run_a, args.run_b, store=args.store, threshold_a=args.threshold_a,
                threshold_b=args.threshold_b, corrected=not args.model_only)
    if args.plot:
        from .plots.compare import bland_altman

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


def _register_compare(sub: argparse._SubParsersAction) -> None:
    """``musseltools compare RUN_A RUN_B [--store DIR] [--threshold-a T] [--threshold-b T] [--top N] [--plot PNG] [--json]``."""
    p = sub.add_parser(
        "compare", help="compare two runs over the same images (two models, or two versions of one)",
        description="Per-image counts of two runs, their agreement (mean difference and limits of agreement, "
                    "B − A), survey totals with bootstrap intervals, and the images where they disagree most. "
                    "No inference.",
    )
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    _store_arg(p)
    for which in ("a", "b"):
        p.add_argument(f"--threshold-{which}", type=_threshold_arg, metavar="T",
                       help=f"thresholds of run {which.upper()} (default: its own in effect)")
    p.add_argument("--top", type=_positive_int, default=10, metavar="N", help="images listed where they disagree (10)")
    p.add_argument("--plot", metavar="PNG", help="write the Bland-Altman plot to this file")
    p.add_argument("--model-only", action="store_true", help="counts of the models alone, without hand corrections")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_compare)


# ------------------------------------------------------------------------------------------------ compact
def _cmd_compact(args: argparse.Namespace) -> int:
    from .store import compaction
    from .store.store import Store

    if bool(args.run_id) == bool(args.all):
        from .errors import MusselToolsError

        raise MusselToolsError("give a RUN_ID or --all — e.g. musseltools compact 0339242875d9")
    st = Store(args.store)
    done = compaction.compact_all(st, wait=args.wait) if args.all else [compaction.compact(st, args.run_id, wait=args.wait)]
    if args.json:
        _print_json(done)
    else:
        for d in done:
            print(f"results {d['inference_key']}: {d['parts_before']} parts -> {d['parts_after']}")
    return EXIT_OK


def _register_compact(sub: argparse._SubParsersAction) -> None:
    """``musseltools compact RUN_ID|--all``."""
    p = sub.add_parser("compact", help="merge a run's many small results parts into a few",
                       description="Merge the results parts of a run (or of every run with --all) into a few large "
                       "parts. Readers never see an image missing or doubled, even if compaction is killed.")
    p.add_argument("run_id", nargs="?", metavar="RUN_ID")
    p.add_argument("--all", action="store_true", help="every run in the store")
    p.add_argument("--store", metavar="DIR", help=OPTIONS.store.help_text)
    p.add_argument("--wait", action="store_true", help="wait for a run writing those results, not fail")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.set_defaults(func=_cmd_compact)


# ------------------------------------------------------------------------------------------------ corrections
def _cmd_corrections_export(args: argparse.Namespace) -> int:
    from .corrections.csv import export_corrections_csv
    from .runs.run import Run

    n = export_corrections_csv(Run(args.store, args.run_id), args.file, active=args.active)
    which = "corrections in effect" if args.active else "corrections"
    print(f"wrote {n} {which} of run {args.run_id} to {args.file}")
    return EXIT_OK


def _cmd_corrections_import(args: argparse.Namespace) -> int:
    from .corrections.csv import import_corrections_csv
    from .runs.run import Run

    r = Run(args.store, args.run_id)
    done = import_corrections_csv(r, args.file)
    print(f"imported {args.file}: {done['rows']} rows, {done['saved']} corrections saved, {done['already_saved']} "
          f"already saved; counts now {r.counts()}")
    report = r.corrections_report()
    if len(report):
        print(f"{len(report)} corrections of this run's images do not apply to it — list them with "
              f"musseltools corrections report {r.run_id}")
    return EXIT_OK


def _cmd_corrections_report(args: argparse.Namespace) -> int:
    from .runs.run import Run

    report = Run(args.store, args.run_id).corrections_report()
    cols = [c for c in ("correction_id", "kind", "path", "detection_id", "run_id", "created_at", "reason")
            if c in report.columns]
    if args.json:
        _print_json(report[cols].to_dict(orient="records"))
    elif report.empty:
        print(f"every correction of run {args.run_id}'s images applies to it")
    else:
        print(f"{len(report)} corrections of run {args.run_id}'s images cannot be applied to it (made on other "
              "results; they still apply to the runs they were made in):")
        print(report[cols].to_string(index=False))
    return EXIT_OK


def _cmd_export_dataset(args: argparse.Namespace) -> int:
    from .corrections.dataset import export_dataset
    from .runs.run import Run

    path = export_dataset(Run(args.store, args.run_id), args.out, format=args.format, val_fraction=args.val_fraction,
                          seed=args.seed)
    print(f"dataset of the verified images written: {path}")
    return EXIT_OK


def _register_corrections(sub: argparse._SubParsersAction) -> None:
    """``musseltools corrections export|import RUN_ID FILE.csv`` and ``musseltools export-dataset RUN_ID OUT``."""
    p = sub.add_parser("corrections", help="export or import hand corrections as CSV, or list those that do not "
                       "apply to a run", description="Hand corrections of a run as CSV. An export writes 16 columns: "
                       "image, image_id, detection_id, action, class, x1, y1, x2, y2, note, author, created_at, "
                       "correction_id, target, polygon, thresholds (those a verify was made at). An import needs "
                       "action and the columns each action uses (image, detection_id, class, x1..y2, target), and "
                       "saves every row or none (see musseltools.corrections.csv).")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, func, text in (("export", _cmd_corrections_export, "write the run's corrections to FILE.csv"),
                             ("import", _cmd_corrections_import, "check and save the corrections of FILE.csv")):
        v = verbs.add_parser(verb, help=text, description=text)
        v.add_argument("run_id", metavar="RUN_ID")
        v.add_argument("file", metavar="FILE.csv")
        _store_arg(v)
        v.set_defaults(func=func)
        if verb == "export":
            v.add_argument("--active", action="store_true", help="only the corrections in effect: leave out "
                           "undone corrections and the undo rows")
    text = "list the corrections of the run's images that cannot be applied to it, and why"
    v = verbs.add_parser("report", help=text, description=text + " (e.g. made on another model's detections).")
    v.add_argument("run_id", metavar="RUN_ID")
    _store_arg(v)
    v.add_argument("--json", action="store_true", help="print one JSON list")
    v.set_defaults(func=_cmd_corrections_report)

    p = sub.add_parser("export-dataset", help="the verified images and their corrected labels as a training dataset",
                       description="Write the images verified by hand, with their corrected labels, as an "
                       "Ultralytics dataset (images/, labels/, data.yaml; train/val split by image).")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--format", choices=["yolo"], default="yolo", help="dataset format (yolo)")
    p.add_argument("--val-fraction", type=float, default=0.2, metavar="F", help="share of images in val (0.2)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="changes the train/val split (0)")
    _store_arg(p)
    p.set_defaults(func=_cmd_export_dataset)


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
    return [_register_core, _register_report, _register_evaluate, _register_corrections, _register_compare,
            _register_compact]


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
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that went away (| head -1) shows here, not at exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
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


def _stdout_closed() -> int:
    """The reader of stdout went away: end quietly (Python's documented way: point stdout at devnull, so
    that the flush at exit does not fail again)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
