"""``run``, ``status``, ``counts``, ``export-polygons``, ``synth`` and ``report``: a run and what it counted."""

from __future__ import annotations

import argparse
import time
from typing import Any

from .common import (
    EXIT_ERROR,
    EXIT_OK,
    add_options,
    add_run_options,
    positive_int,
    print_json,
    report_kwargs,
    run_kwargs,
    store_arg,
    threshold_arg,
)


def start_workers_early(args: argparse.Namespace) -> None:
    """Start the workers' server when this ``run`` will likely use worker processes: its imports of torch
    run on one core while this process imports the rest on another (called before the whole command line
    is parsed; ``musseltools.run`` calls it again, which then does nothing)."""
    from ..executors.warmup import start_early

    start_early(args.images, run_kwargs(args))


def _cmd_run(args: argparse.Namespace) -> int:
    from ..runs.engine import run

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
        print_json(out)
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
        f"  images  {m['total_images']}   failed {m['failed_count']}   threshold {r.rule().label(r.class_names)}"
        + (f"   shells from {r.length_rule():g} mm" if r.length_rule() else ""),
        f"  counts  {counts}",
        f"  {reuse}; {seconds:.1f} s",
        f"  store   {r.store.root}",
    ]
    if m.get("cap_hit_images"):
        from ..runs.progress import cap_hit_message

        lines.append("  " + cap_hit_message(m["cap_hit_images"], m["settings"]["max_det"]))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ status
def _cmd_status(args: argparse.Namespace) -> int:
    from ..runs.run import Run, list_runs

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
            print_json(info)
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
        print_json(table.to_dict(orient="records"))
    elif table.empty:
        print("no runs in this store")
    else:
        from ..core.thresholds import Thresholds

        cols = ["run_id", "collection", "model", "threshold", "status", "total_images", "failed_count", "counts"]
        # the thresholds in effect, as `status RUN_ID` and `counts` show them: 0.50, or live 0.35, dead 0.23
        shown = table.assign(threshold=[Thresholds.parse(t).label(list(t) if isinstance(t, dict) else None)
                                        for t in table["threshold"]])
        print(shown[cols].to_string(index=False))
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ counts
def _cmd_counts(args: argparse.Namespace) -> int:
    from ..runs.run import Run

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
        print_json(out)
    else:
        print(f"run {r.run_id} at threshold {t.label(r.class_names)}: " + ", ".join(f"{k} {v}" for k, v in out["counts"].items()))
        if out["corrections_applied"]:
            print(f"  with {out['corrections_applied']} hand corrections; the model alone: "
                  + ", ".join(f"{k} {v}" for k, v in out["model_counts"].items()))
        print(table[["path", *cats, "error"]].to_string(index=False))
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ export
def _cmd_export(args: argparse.Namespace) -> int:
    from ..runs.run import Run

    files = Run(args.store, args.run_id).export_polygons(args.out_dir, threshold=args.threshold)
    print(f"wrote {len(files)} polygon files to {args.out_dir}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ synth
def _cmd_synth(args: argparse.Namespace) -> int:
    from .. import synth

    kwargs: dict[str, Any] = {"n": args.n, "seed": args.seed, "density": args.density}
    if args.size:
        kwargs["size"] = synth.parse_size(args.size)
    if args.large:
        kwargs["large"] = args.large
    if args.survey:
        from ..synth.survey import generate_survey

        sites, dates, per = args.survey
        sheet = generate_survey(args.out, sites, dates, per, seed=args.seed, size=kwargs.get("size", (416, 320)))
        print(f"wrote a survey of {len(sheet)} images ({sites} sites x {dates} dates x {per}) with sheet.csv and "
              f"truth.csv to {args.out}")
        return EXIT_OK
    table = synth.generate(args.out, **kwargs)
    print(f"wrote {len(table)} synthetic images with labels to {args.out}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ report
def _cmd_report(args: argparse.Namespace) -> int:
    from ..reports.report import report

    path = report(args.images, **run_kwargs(args), **report_kwargs(args))
    print(f"report written to {path}")
    return EXIT_OK


def register_report(sub: argparse._SubParsersAction) -> None:
    """``musseltools report IMAGES --model WEIGHTS [--truth DIR] --out reports/NAME [--show-code]``."""
    p = sub.add_parser("report", help="run (or resume) a survey and write its HTML report",
                       description="Execute the survey report notebook with papermill into OUT/report.ipynb "
                       "and render OUT/report.html (code hidden unless --show-code).")
    add_options(p, "run")
    add_options(p, "report")
    p.set_defaults(func=_cmd_report)


def register_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="create or resume a survey run", description="Create or resume a run; "
                       "only images without a result are inferred.")
    add_run_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("status", help="status of one run, or a list of runs")
    p.add_argument("run_id", nargs="?", metavar="RUN_ID")
    store_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("counts", help="counts at a threshold, without inference")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--threshold", type=threshold_arg, metavar="T",
                   help="confidence threshold, or one per class: live=0.45,dead=0.6 (default: the run's saved "
                   "thresholds; a class left out keeps the run's threshold)")
    store_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_counts)

    p = sub.add_parser("export-polygons", help="one polygon JSON per image (the older per-image format)")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--threshold", type=threshold_arg, metavar="T",
                   help="confidence threshold, or one per class: live=0.45,dead=0.6 (default: the run's saved thresholds)")
    store_arg(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("synth", help="generate a synthetic survey with labels")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--n", type=positive_int, default=20, metavar="N", help="number of images (20)")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--size", metavar="WxH", help="image size, e.g. 640x480 (varied when unset)")
    p.add_argument("--density", type=float, default=1.0, metavar="D", help="mussel density multiplier (1.0)")
    p.add_argument("--large", type=int, default=0, metavar="K", help="make the last K images large quadrats")
    p.add_argument("--survey", type=_survey_arg, metavar="SITES,DATES,IMAGES",
                   help="a survey design instead: sites x dates x images per site and date, with known true density "
                   "and mortality per site (truth.csv) and its sample sheet (sheet.csv); --n, --large ignored")
    p.set_defaults(func=_cmd_synth)


def _survey_arg(text: str) -> tuple[int, int, int]:
    try:
        sites, dates, per = (int(v) for v in text.split(","))
        if min(sites, dates, per) < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not SITES,DATES,IMAGES (three positive integers, e.g. 4,2,5)") from None
    return sites, dates, per
