"""``corrections export|import|report`` and ``export-dataset``: hand corrections in and out of a run."""

from __future__ import annotations

import argparse

from .common import EXIT_OK, print_json, store_arg
from .formats import add_import_flags, import_annotated


# ------------------------------------------------------------------------------------------------ corrections
def _cmd_corrections_export(args: argparse.Namespace) -> int:
    from ..corrections.csv import export_corrections_csv
    from ..runs.run import Run

    n = export_corrections_csv(Run(args.store, args.run_id), args.file, active=args.active)
    which = "corrections in effect" if args.active else "corrections"
    print(f"wrote {n} {which} of run {args.run_id} to {args.file}")
    return EXIT_OK


def _cmd_corrections_import(args: argparse.Namespace) -> int:
    from ..corrections.csv import import_corrections_csv
    from ..runs.run import Run

    if args.format != "csv":
        return import_annotated(args)
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
    from ..runs.run import Run

    report = Run(args.store, args.run_id).corrections_report()
    cols = [c for c in ("correction_id", "kind", "path", "detection_id", "run_id", "created_at", "reason")
            if c in report.columns]
    if args.json:
        print_json(report[cols].to_dict(orient="records"))
    elif report.empty:
        print(f"every correction of run {args.run_id}'s images applies to it")
    else:
        print(f"{len(report)} corrections of run {args.run_id}'s images cannot be applied to it (made on other "
              "results; they still apply to the runs they were made in):")
        print(report[cols].to_string(index=False))
    return EXIT_OK


def _cmd_export_dataset(args: argparse.Namespace) -> int:
    from ..corrections.dataset import export_dataset
    from ..runs.run import Run

    path = export_dataset(Run(args.store, args.run_id), args.out, format=args.format, val_fraction=args.val_fraction,
                          seed=args.seed)
    print(f"dataset of the verified images written: {path}")
    return EXIT_OK


def register_corrections(sub: argparse._SubParsersAction) -> None:
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
        store_arg(v)
        v.set_defaults(func=func)
        if verb == "import":
            add_import_flags(v)
        if verb == "export":
            v.add_argument("--active", action="store_true", help="only the corrections in effect: leave out "
                           "undone corrections and the undo rows")
    text = "list the corrections of the run's images that cannot be applied to it, and why"
    v = verbs.add_parser("report", help=text, description=text + " (e.g. made on another model's detections).")
    v.add_argument("run_id", metavar="RUN_ID")
    store_arg(v)
    v.add_argument("--json", action="store_true", help="print one JSON list")
    v.set_defaults(func=_cmd_corrections_report)

    p = sub.add_parser("export-dataset", help="the verified images and their corrected labels as a training dataset",
                       description="Write the images verified by hand, with their corrected labels, as a "
                       "dataset (images/train, images/val and YOLO, COCO or CVAT annotations; train/val split by "
                       "image).")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--format", choices=["yolo", "coco", "cvat"], default="yolo", help="dataset format: yolo "
                   "(Ultralytics labels and data.yaml), coco (annotations/instances_train.json, _val.json) or cvat "
                   "(annotations.xml)")
    p.add_argument("--val-fraction", type=float, default=0.2, metavar="F", help="share of images in val (0.2)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="changes the train/val split (0)")
    store_arg(p)
    p.set_defaults(func=_cmd_export_dataset)
