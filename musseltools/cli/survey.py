"""``export-table`` and ``attach-sheet``: a run's tidy tables with its survey design, and its sample sheet."""

from __future__ import annotations

import argparse

from .common import EXIT_OK, print_json, store_arg, threshold_arg


def _cmd_export_table(args: argparse.Namespace) -> int:
    from ..runs.run import Run

    r = Run(args.store, args.run_id)
    path = r.export_table(args.out, per=args.per, threshold=args.threshold, corrected=not args.model_only)
    print(path)
    return EXIT_OK


def _cmd_attach_sheet(args: argparse.Namespace) -> int:
    from ..runs.run import Run

    r = Run(args.store, args.run_id)
    r.attach_sheet(args.sheet)
    current = r.meta["sheet"]
    if args.json:
        print_json(current)
    else:
        print(f"run {r.run_id}: sheet {current['file_name']} attached ({current['rows']} rows; columns "
              f"{', '.join(current['columns'])}; version {current['sha256'][:12]}); nothing inferred")
    return EXIT_OK


def register_survey(sub: argparse._SubParsersAction) -> None:
    """``musseltools export-table RUN_ID OUT`` and ``musseltools attach-sheet RUN_ID SHEET``."""
    p = sub.add_parser("export-table", help="a tidy per-image or per-detection table with the sheet's columns "
                       "(.csv or .parquet)", description="Write one row per image (counts per category at the "
                       "threshold) or per detection, with the sample sheet's columns, for R or a spreadsheet.")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("out", metavar="OUT", help="OUT.csv or OUT.parquet")
    p.add_argument("--per", choices=("image", "detection"), default="image", help="one row per image (default) "
                   "or per detection")
    p.add_argument("--threshold", type=threshold_arg, metavar="T",
                   help="a threshold, or one per class (live=0.4,dead=0.3) (the run's thresholds in effect)")
    p.add_argument("--model-only", action="store_true", help="the model's detections alone, without hand corrections")
    store_arg(p)
    p.set_defaults(func=_cmd_export_table)

    p = sub.add_parser("attach-sheet", help="attach (or replace) a run's sample sheet, without inference",
                       description="Validate a sample sheet (CSV or .xlsx, one row per image) against the run's "
                       "images and store it as the run's current version; every bad row is listed and nothing is "
                       "attached then.")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("sheet", metavar="SHEET")
    store_arg(p)
    p.add_argument("--json", action="store_true", help="print the version's record as JSON")
    p.set_defaults(func=_cmd_attach_sheet)
