"""``export`` (a run's predictions for an annotation tool) and the annotated-file side of
``corrections import`` (``--format cvat|labelstudio|coco``)."""

from __future__ import annotations

import argparse

from .common import EXIT_OK, print_json, store_arg, threshold_arg

#: The formats ``corrections import --format`` reads besides the CSV.
IMPORT_FORMATS = ("csv", "cvat", "labelstudio", "coco")


def _cmd_export(args: argparse.Namespace) -> int:
    from ..corrections.annotations import export_predictions
    from ..runs.run import Run

    path = export_predictions(Run(args.store, args.run_id), args.out, format=args.format, threshold=args.threshold,
                              url_prefix=args.url_prefix)
    print(f"wrote the detections of run {args.run_id} at the thresholds in use, corrections applied, as "
          f"{args.format}: {path}")
    return EXIT_OK


def _label_map(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        label, sep, cls = pair.partition("=")
        if not sep or not label or not cls:
            raise argparse.ArgumentTypeError(f"--label-map {pair!r} is not LABEL=CLASS — e.g. --label-map "
                                             "alive=live")
        out[label] = cls
    return out


def import_annotated(args: argparse.Namespace) -> int:
    """``corrections import RUN FILE --format cvat|labelstudio|coco``: print the matching report's summary
    (and write it with ``--report``)."""
    from ..corrections.annotations import import_annotations
    from ..runs.run import Run

    r = Run(args.store, args.run_id)
    report = import_annotations(r, args.file, format=args.format, iou=args.iou, strict=args.strict,
                                label_map=_label_map(args.label_map))
    if args.report:
        report.to_csv(args.report, index=False)
    actions = report["action"].value_counts().to_dict()
    if args.json:
        print_json({"file": args.file, "actions": actions, "counts": r.counts()})
        return EXIT_OK
    print(f"imported {args.file} ({args.format}): " + ", ".join(f"{n} {a}" for a, n in sorted(actions.items()))
          + f"; counts now {r.counts()}")
    missing = report.loc[report["action"] == "not in run", "image"].tolist()
    if missing:
        print(f"{len(missing)} images of the file are not in run {r.run_id} (left out): {', '.join(missing[:10])}")
    return EXIT_OK


def add_import_flags(v: argparse.ArgumentParser) -> None:
    """The flags of ``corrections import`` for annotated files."""
    v.add_argument("--format", choices=IMPORT_FORMATS, default="csv", help="the file's format: csv (musseltools' "
                   "corrections, the default), cvat (CVAT for images 1.1 XML), labelstudio (Label Studio JSON "
                   "export), coco (COCO JSON)")
    v.add_argument("--iou", type=float, default=0.5, metavar="F", help="least IoU of an annotated object and a "
                   "detection to be the same mussel (0.5)")
    v.add_argument("--strict", action="store_true", help="an image of the file that is not in the run is an error "
                   "(default: listed and left out)")
    v.add_argument("--label-map", action="append", metavar="LABEL=CLASS", help="read the file's LABEL as a class "
                   "or category of the run (repeat for several)")
    v.add_argument("--report", metavar="FILE.csv", help="write each matching decision (keep, reclassify, add, "
                   "delete, not in run) to FILE.csv")
    v.add_argument("--json", action="store_true", help="print the summary as JSON")


def register_formats(sub: argparse._SubParsersAction) -> None:
    """``musseltools export RUN_ID OUT --format coco|coco-results|cvat|labelstudio|yolo``."""
    from ..corrections.formats import EXPORT_FORMATS

    p = sub.add_parser("export", help="the run's detections as pre-annotations for CVAT, Label Studio, COCO or YOLO",
                       description="Write the detections that count at the thresholds in use, corrections applied, "
                       "each with its confidence, for an annotation tool: a COCO dataset JSON, a COCO results list, "
                       "CVAT for images 1.1 XML, Label Studio tasks with predictions (and OUT.config.xml, the "
                       "labelling config), or a YOLO label folder.")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True, help="the annotation format")
    p.add_argument("--threshold", type=threshold_arg, default=None, metavar="T",
                   help="other thresholds than those in use (e.g. 0.4 or live=0.35,dead=0.3)")
    p.add_argument("--url-prefix", metavar="PREFIX", help="Label Studio: put before each image's relative path, "
                   "e.g. '/data/local-files/?d=survey/' or 's3://bucket/survey/'")
    store_arg(p)
    p.set_defaults(func=_cmd_export)
