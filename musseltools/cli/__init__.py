"""The ``musseltools`` command line. Flags mirror the Python keywords of the same names.

Commands: ``run``, ``status``, ``counts``, ``export-polygons``, ``synth``, ``report``, ``evaluate``,
``corrections export|import|report``, ``export-dataset``, ``export``, ``compare``, ``compact``, ``export-table``,
``attach-sheet``, ``calibrate``.
The flags of ``run`` and ``report`` are generated from :mod:`musseltools.core.options`. Errors print one
line and exit non-zero; a reader that goes away (``| head -1``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import calibrate, corrections, evaluation, formats, runs, store, survey
from .common import (
    EXIT_BROKEN_PIPE,
    EXIT_CANCELLED,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    Registrar,
    add_options,
    add_run_options,
    report_kwargs,
    run_kwargs,
)

__all__ = ["main", "build_parser", "add_options", "add_run_options", "run_kwargs", "report_kwargs",
           "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_CANCELLED", "EXIT_BROKEN_PIPE"]


def _registrars() -> list[Registrar]:
    """Each module's commands, in the order ``musseltools --help`` lists them. A new command module adds its
    ``register_*`` here."""
    return [runs.register_runs, runs.register_report, evaluation.register_evaluate, corrections.register_corrections,
            formats.register_formats, evaluation.register_compare, store.register_compact,
            survey.register_survey, calibrate.register_calibrate]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

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
    """The ``musseltools`` command: its exit status. Called with ``argv=None`` (the command line of this
    process: the ``musseltools`` script, ``python -m musseltools``), it ends the process itself once the
    command is done (:func:`_exit_now`); called with arguments, it returns."""
    code = _main(argv)
    if argv is None:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """End this process as ``sys.exit(code)`` would, without the interpreter's tear-down of every module (1-3 s
    after a run on 2 cores when torch was imported, about 0.5 s when not): the threads that are not daemons
    are joined, the exit handlers run (logging's flush, multiprocessing's, temporary folders'), stdout and
    stderr are flushed; then the process exits."""
    import atexit
    import os
    import threading

    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader gone: nothing more can be shown
            code = code or EXIT_BROKEN_PIPE
    os._exit(code)


def _start_workers_early(argv: Sequence[str]) -> None:
    """For ``musseltools run``: start the workers' server from the ``run`` options alone, before the whole
    parser is built (its other commands import pandas and more: 0.26 s here), so that the server's imports
    overlap this process's. Arguments it cannot parse are left to the real parser, which says what is wrong."""
    if "run" not in argv:
        return
    import contextlib
    import io

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-v", "--verbose", action="store_true")
    runs.register_runs(parser.add_subparsers(dest="command"))
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args, _ = parser.parse_known_args(argv)
    except SystemExit:
        return
    if args.command == "run":
        runs.start_workers_early(args)


def _main(argv: Sequence[str] | None) -> int:
    _start_workers_early(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False) or getattr(args, "json", False)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.WARNING if quiet else logging.INFO),
        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr,
    )
    from ..errors import MusselToolsError

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
        from ..errors import RunCancelled

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
