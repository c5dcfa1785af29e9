"""What the commands share: argument types from :mod:`musseltools.core.options`, the generated option flags,
the ``--store`` flag, JSON output and the exit codes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ..core.options import OPTIONS, Option, parse_positive_int, parse_threshold

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
#: ``musseltools ... | head -1``: the reader went away (128 + SIGPIPE, as a shell reports it).
EXIT_BROKEN_PIPE = 141

#: A function that adds a group of commands to the parser's subcommands.
Registrar = Callable[[argparse._SubParsersAction], None]


def arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
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


positive_int = arg_type(parse_positive_int)
threshold_arg = arg_type(parse_threshold)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar=OPTIONS.store.metavar, help=OPTIONS.store.help_text)


def _add_option(p: argparse.ArgumentParser, o: Option) -> None:
    if o.flag is None:
        p.add_argument(o.name, metavar=o.metavar, help=o.help_text)
    elif o.switch:
        p.add_argument(o.flag, action="store_true", help=o.help_text)
    else:
        kwargs: dict[str, Any] = {"required": True} if o.required else {"default": o.default}
        if o.parse is not None:
            kwargs["type"] = arg_type(o.parse)
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
