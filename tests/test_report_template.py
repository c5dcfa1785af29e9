"""The report template: shipped without outputs, and never executed with outputs or local edits silently."""

from __future__ import annotations

import importlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from musseltools.reports.report import notebook_path, survey_title
from musseltools.reports.templates import SHIPPED, cells_fingerprint, prepare_template

report_module = importlib.import_module("musseltools.reports.report")  # the package exports a function of that name


def test_the_bundled_template_is_committed_without_outputs_and_as_its_fingerprint_says():
    nb = nbformat.read(str(notebook_path()), as_version=4)
    with_outputs = [i for i, c in enumerate(nb.cells)
                    if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not with_outputs, f"cells {with_outputs} of {notebook_path()} hold outputs — run nbstripout on it"
    now = cells_fingerprint(nb)
    assert now == SHIPPED[notebook_path().name], (
        f"the template's cells changed: put {now!r} in musseltools/reports/templates.py SHIPPED")


def test_the_committed_notebooks_are_as_the_git_filter_writes_them():
    """`make dev` installs nbstripout as the git filter of notebooks: a committed notebook that differs from
    what the filter writes would show as modified in a fresh clone before anyone opened it."""
    for nb in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        text = nb.read_text()
        stripped = subprocess.run([sys.executable, "-m", "nbstripout"], input=text, capture_output=True, text=True,
                                  check=True, timeout=120).stdout
        assert stripped == text, f"{nb.name} is not as the nbstripout filter commits it: run nbstripout on it"


@pytest.fixture
def opened_in_lab(tmp_path):
    """The bundled template as JupyterLab leaves it: outputs saved in a cell, a cell edited by hand."""
    path = tmp_path / "lab" / notebook_path().name
    path.parent.mkdir()
    shutil.copy(notebook_path(), path)
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    code[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1.15 MB of old figures\n")]
    code[-1].execution_count = 12
    nbformat.write(nb, str(path))
    return path


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_template_with_outputs_is_run_cleared_and_the_report_says_so(opened_in_lab, tmp_path, caplog, monkeypatch):
    executed = {}

    def execute(source, out_nb, out_html, parameters, kernel_name):  # the kernel is not the point here
        executed["nb"] = nbformat.read(str(source), as_version=4)
        shutil.copy(source, out_nb)

    monkeypatch.setattr(report_module, "_execute", execute)
    monkeypatch.setattr(report_module, "notebook_path", lambda name=None: opened_in_lab)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        report_module.report(tmp_path, model=tmp_path / "m.pt", store=tmp_path / "store", out=out)
    said = _warnings(caplog)
    assert len(said) == 1 and "holds saved outputs in 1 cells" in said[0] and str(opened_in_lab) in said[0]
    assert not any(c.get("outputs") for c in executed["nb"].cells if c.cell_type == "code")
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.ipynb"]  # the cleared copy is gone
    assert nbformat.read(str(opened_in_lab), as_version=4).cells[-1].outputs  # the user's file is left alone


def test_a_bundled_template_with_local_edits_is_named_before_it_runs(opened_in_lab, tmp_path, caplog):
    nb = nbformat.read(str(opened_in_lab), as_version=4)
    nb.cells[-1].outputs, nb.cells[-1].execution_count = [], None
    nb.cells[-1].source += "\nprint('a hand edit')"
    nbformat.write(nb, str(opened_in_lab))
    with caplog.at_level(logging.WARNING):
        assert prepare_template(opened_in_lab, tmp_path, bundled=True) == opened_in_lab
    said = _warnings(caplog)
    assert len(said) == 1 and "has local edits" in said[0] and "git checkout" in said[0]
    caplog.clear()
    shutil.copy(notebook_path(), opened_in_lab)  # as shipped: nothing to say, executed as it is
    with caplog.at_level(logging.WARNING):
        assert prepare_template(opened_in_lab, tmp_path, bundled=True) == opened_in_lab
    assert _warnings(caplog) == []


@pytest.mark.parametrize(("images", "title"), [
    ("data/demo/images", "Mussel survey: demo"),  # the demo: a folder called images is titled by its parent
    ("surveys/bay4/Photos", "Mussel survey: bay4"),
    ("s3://archive/site-7/frames", "Mussel survey: site-7"),
    ("surveys/quadrats", "Mussel survey: quadrats"),  # a folder with a name of its own keeps it
    (["a.jpg", "b.jpg"], "Mussel survey"),  # a list of images: no folder to name it by
])
def test_a_report_is_titled_by_its_survey_not_by_a_generic_folder_name(images, title):
    assert survey_title(images) == title
