"""``compact``: merge a run's many small results parts into a few."""

from __future__ import annotations

import argparse

from ..core.options import OPTIONS
from .common import EXIT_OK, print_json


# ------------------------------------------------------------------------------------------------ compact
def _cmd_compact(args: argparse.Namespace) -> int:
    from ..store import compaction
    from ..store.store import Store

    if bool(args.run_id) == bool(args.all):
        from ..errors import MusselToolsError

        raise MusselToolsError("give a RUN_ID or --all — e.g. musseltools compact 0339242875d9")
    st = Store(args.store)
    done = compaction.compact_all(st, wait=args.wait) if args.all else [compaction.compact(st, args.run_id, wait=args.wait)]
    if args.json:
        print_json(done)
    else:
        for d in done:
            print(f"results {d['inference_key']}: {d['parts_before']} parts -> {d['parts_after']}")
    return EXIT_OK


def register_compact(sub: argparse._SubParsersAction) -> None:
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
