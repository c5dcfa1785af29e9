"""``calibrate``: choose a detector's NMS IoU, tiles and thresholds from a few labelled images, and write its card."""

from __future__ import annotations

import argparse
import json

from .common import EXIT_OK, store_arg


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 0.3,0.5,0.7") from None


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from ..evaluation.calibrate import calibrate
    from ..runs.run import Run

    cal = calibrate(Run(args.store, args.run_id), args.truth, ious=args.iou, device=args.device)
    card = cal.write_card(force=args.force) if args.write_card else None
    if args.json:
        print(json.dumps({**cal.to_json(), "card": card}, indent=2, allow_nan=False, default=str))
        return EXIT_OK
    print(cal.report())
    if card:
        print(f"\ncard written: {card} (runs of these weights now use it for every setting they are not given)")
    else:
        print("\nnothing written: --write-card writes these settings to the card beside the weights")
    return EXIT_OK


def register_calibrate(sub: argparse._SubParsersAction) -> None:
    """``musseltools calibrate RUN TRUTH [--store DIR] [--write-card] [--force] [--json]``."""
    p = sub.add_parser(
        "calibrate", help="choose NMS IoU, tiles and thresholds from a few labelled images; write the weights' card",
        description="Re-infer only the labelled images of a run at each NMS IoU (0.3 to 0.7; for tiled runs also "
                    "each tile merge and size), calibrate thresholds at each, choose by cross-validated count "
                    "error and print the table. Each setting is an ordinary cached run: calibrating again infers "
                    "nothing. --write-card writes the choice to the card beside the weights.",
    )
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("truth", metavar="TRUTH", help="label folder, COCO .json, counts .csv, or 'verified' (the run's "
                   "images verified by hand)")
    store_arg(p)
    p.add_argument("--iou", type=_floats, metavar="LIST", help="NMS IoUs searched (0.3,0.35,...,0.7)")
    p.add_argument("--device", help="cpu, cuda:0, ... (the fastest available by default)")
    p.add_argument("--write-card", action="store_true", help="write the chosen settings to the card beside the "
                   "weights (WEIGHTS.yaml)")
    p.add_argument("--force", action="store_true", help="with --write-card: replace an existing card (a backup "
                   "WEIGHTS.yaml.bak-TIMESTAMP is kept)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_calibrate)
