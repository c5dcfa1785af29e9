"""Run options are declared once: keywords, CLI flags, notebook parameters and inference settings agree."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import nbformat
import pytest

import musseltools as mt
from musseltools import cli
from musseltools.core.options import OPTIONS, REQUIRED
from musseltools.models import InferenceSettings

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
#: Keywords of run() and report() that are not run options (how to execute, not what to ask).
RUN_ONLY = {"quiet", "background", "executor", "client"}  # Python objects: no flag, no notebook parameter
REPORT_ONLY = {"notebook", "kernel_name"}


def _keywords(fn) -> dict[str, object]:
    params = inspect.signature(fn).parameters.values()
    return {p.name: (REQUIRED if p.default is p.empty else p.default) for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_run_keywords_are_the_declared_run_options_with_their_defaults():
    kw = _keywords(mt.run)
    assert set(kw) - RUN_ONLY == set(OPTIONS.keywords("run"))
    for name in OPTIONS.keywords("run"):
        assert kw[name] == OPTIONS[name].default, name


def test_report_keywords_are_the_run_and_report_options_with_their_defaults():
    kw = _keywords(importlib.import_module("musseltools.reports.report").report)
    assert set(kw) - REPORT_ONLY == set(OPTIONS.keywords("run")) | set(OPTIONS.keywords("report"))
    for name in set(kw) - REPORT_ONLY:
        assert kw[name] == OPTIONS[name].default, name


def test_inference_settings_are_the_declared_inference_options():
    fields = {f.name: f.default for f in dataclasses.fields(InferenceSettings)}
    assert fields == {o.name: o.settings_default for o in OPTIONS.inference_settings()}
    assert fields["imgsz"] == 640 and OPTIONS.imgsz.default is None  # the run's default: the model's size
    with pytest.raises(ValueError, match=r"iou must lie in \(0, 1\], got 2"):
        InferenceSettings(iou=2)


@pytest.mark.parametrize("command", ["run", "report"])
def test_cli_flags_are_generated_with_the_declared_help_and_defaults(command):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    actions = {a.dest: a for a in sub._actions}
    scopes = ["run"] + (["report"] if command == "report" else [])
    declared = [o for s in scopes for o in OPTIONS.of_scope(s)]
    for o in declared:
        a = actions[o.name]
        assert a.help == o.help_text, o.name
        assert (a.option_strings or [None])[0] == o.flag, o.name
        assert a.required == o.required, o.name  # a positional is required by argparse too
        if not o.required:
            assert a.default == o.default, o.name
    args = parser.parse_args([command, "IMGS", "--model", "m.pt"])
    kwargs = cli.run_kwargs(args) | (cli.report_kwargs(args) if command == "report" else {})
    assert kwargs == {"model": "m.pt"} | {o.name: o.default for o in declared if not o.required}


def test_cli_help_names_every_flag_and_where_its_default_comes_from():
    """The contract: flag names, help and defaults; settings a weights' card may recommend say so."""
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for line in ("--iou F", "NMS IoU threshold (the weights' card's, else 0.7 for YOLO", "--max-det N",
                 "detection cap per image (10000)", "--conf-floor F", "lowest confidence stored (0.01)",
                 "--tile-overlap FRAC", "tile overlap fraction (the weights' card's, else 0.2)",
                 "--tile-merge METHOD", "edge, ios, nmm (the weights' card's, else edge)", "--tile SIZE",
                 "'none' (the weights' card's, else none)", "--commit-every N", "images per committed part (32)",
                 "--threshold T", "(the weights' card's, else 0.5)", "trained at, else 640)"):
        assert line in " ".join(help_text.split()), line


def test_the_survey_notebook_parameters_are_the_declared_report_options():
    nb = nbformat.read(NOTEBOOKS / "survey_report.ipynb", as_version=4)
    [cell] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    given = {node.targets[0].id: ast.literal_eval(node.value)
             for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)}
    declared = {o.name: o.default for o in OPTIONS.notebook_parameters()}
    assert set(given) == set(declared)
    for name, default in declared.items():
        if default is not REQUIRED:  # images and model: the notebook shows the demo's
            assert given[name] == default, name
    script = (NOTEBOOKS / "survey_report.py").read_text()  # the jupytext pair says the same
    for name in declared:
        assert f"\n{name} = " in script, name
