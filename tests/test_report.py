"""Reports: papermill executes the survey notebook, nbconvert renders HTML; failures name the cell."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import nbformat
import pandas as pd
import pytest
from conftest import IMGSZ, write_images

import musseltools as mt
from musseltools import cli
from musseltools.reports.report import ReportError, notebook_path

#: starts processes, kernels or models: left out of `make test-fast`
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    folder = root / "quadrats"
    write_images(folder, 4, seed=7)
    (folder / "broken.jpg").write_bytes(b"garbage")
    return root, folder


@pytest.fixture(scope="module")
def default_report(collection, tiny_model):
    root, folder = collection
    html = mt.report(folder, model=tiny_model, imgsz=IMGSZ, threshold=0.3, store=root / "store",
                     out=root / "out", n_samples=2, batch_size=1)
    return root, html


def _text(html: str) -> str:
    """The page's text (code is syntax-highlighted into many tags)."""
    import html as html_lib

    return html_lib.unescape(re.sub(r"<[^>]+>", "", html))


def _images(html: str) -> list[str]:
    return re.findall(r'<img[^>]+src="data:image/png;base64,', html)


def test_report_embeds_figures_and_hides_code(default_report, collection):
    root, path = default_report
    assert path == root / "out" / "report.html"
    html = path.read_text()
    assert len(_images(html)) >= 4  # counts per image, confidence histograms, count vs threshold, samples
    assert "run = mt.run(" not in _text(html) and "import musseltools" not in _text(html)  # no code cells
    assert 'class="highlight' not in html
    for heading in ("Totals", "Counts per image", "Count versus threshold", "Sample images",
                    "Images that could not be processed", "Provenance", "Settings"):
        assert heading in html
    for setting, value, origin in (("threshold", "0.3", "given"), ("imgsz", "128", "given"), ("iou", "0.7", "default"),
                                   ("tile_merge", "edge", "default")):  # each setting and where it came from
        assert re.search(rf"<th>{setting}</th>\s*<td>{value}</td>\s*<td>{origin}</td>", html), setting
    assert "Mussel survey: quadrats" in html  # default title from the folder
    text = _text(html)
    assert "These are default settings: the weights have no card" in text and "musseltools calibrate" in text
    assert "This notebook" not in text and "parameters below" not in text  # no template instructions
    assert "Comparison" not in text and "second model" not in text  # no comparison section without one
    # no sample sheet: no section by group and no estimator of groups in the methods paragraph (issue 23)
    assert "by group" not in text and "sampling unit" not in text and "Treatments compared" not in text
    assert "Shell sizes" not in text  # no image has a scale: no size section (issue 24)
    assert "Methods" in text and "Mussels were detected and counted with musseltools" in text
    assert "5 images (1 failed" in text and "1 images" not in text  # counted words agree with their numbers
    run = mt.list_runs(store=root / "store").iloc[0]
    r = mt.open_run(run.run_id, store=root / "store")
    assert r.meta["threshold"] == 0.3
    for value in (r.run_id, r.meta["model"]["fingerprint"], "ultralytics", "torch"):
        assert value in html  # provenance
    assert "broken.jpg" in html  # the errored image and why
    counts = r.counts()
    for cat, n in counts.items():  # the totals table
        assert re.search(rf"<th>{cat}</th>\s*<td>{n}</td>", html)
    assert "widget-view+json" not in html and "widget-state" not in html  # no live widgets in a static page
    nb = nbformat.read(root / "out" / "report.ipynb", as_version=4)
    params = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "imgsz = 128" in params.source and "n_samples = 2" in params.source


def test_cli_report_show_code_and_title(default_report, collection, tiny_model, capsys):
    root, _ = default_report
    _, folder = collection
    out = root / "with-code"
    code = cli.main(["report", str(folder), "--model", str(tiny_model), "--imgsz", str(IMGSZ), "--threshold", "0.3",
                     "--store", str(root / "store"), "--out", str(out), "--show-code", "--title", "Bay 4, May"])
    assert code == 0
    assert str(out / "report.html") in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "run = mt.run(" in _text(html) and "plots.count_vs_threshold(" in _text(html)  # code kept
    assert 'class="highlight' in html
    assert "Bay 4, May" in html
    assert len(_images(html)) >= 4
    nb = nbformat.read(out / "report.ipynb", as_version=4)
    assert "0 inferred for this report" in json.dumps(nb.cells[[i for i, c in enumerate(nb.cells)
                                                                    if "mt.run(" in c.source][0]].outputs)


def test_failing_notebook_names_the_cell_and_keeps_the_partial_notebook(collection, tmp_path):
    _, folder = collection
    out = tmp_path / "broken-report"
    out.mkdir()
    (out / "report.html").write_text("an older report")
    with pytest.raises(ReportError) as info:
        mt.report(folder, model=tmp_path / "no-such-model.pt", imgsz=IMGSZ, store=tmp_path / "store", out=out)
    err = info.value
    assert isinstance(err, mt.MusselToolsError)
    assert err.cell_source == "run = mt.run("
    assert err.ename == "ModelLoadError" and "no-such-model.pt" in err.evalue
    msg = str(err)
    assert f"cell {err.cell_index} of report.ipynb" in msg and "'run = mt.run('" in msg and "ModelLoadError" in msg and "report.ipynb" in msg
    nb = nbformat.read(out / "report.ipynb", as_version=4)  # the partial notebook is kept
    failed = nb.cells[err.cell_index]
    assert failed.source.startswith("run = mt.run(")
    assert any(o.get("output_type") == "error" and o.get("ename") == "ModelLoadError" for o in failed.outputs)
    assert not (out / "report.html").exists()  # the older HTML does not pass for this report


def test_cli_report_failure_is_one_line_and_non_zero(collection, tmp_path, capsys):
    _, folder = collection
    code = cli.main(["report", str(folder), "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "r")])
    assert code == 1
    err = capsys.readouterr().err
    assert "musseltools: error: report notebook failed in cell" in err and "ModelLoadError" in err
    assert (tmp_path / "r" / "report.ipynb").exists()


def test_import_is_light_and_mt_report_is_a_plain_function():
    code = ("import sys, types, musseltools as mt; "
            "assert 'papermill' not in sys.modules and 'nbconvert' not in sys.modules; "
            "import musseltools.reports.report, musseltools.evaluation; "
            "assert isinstance(mt.report, types.FunctionType) and isinstance(mt.evaluate, types.FunctionType); "
            "print(mt.report.__module__, mt.evaluate.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["musseltools.reports.report", "musseltools.evaluation.api"]
    assert notebook_path().name == "survey_report.ipynb"
    with pytest.raises(ReportError, match="not found"):
        notebook_path("nope.ipynb")


def test_exports_and_reports_use_saved_thresholds(default_report, collection, tiny_model, tmp_path):
    """Thresholds saved on a run (the tuner's Save) are what a later report and polygon export use."""
    root, _ = default_report
    _, folder = collection
    r = mt.open_run(mt.list_runs(store=root / "store").iloc[0].run_id, store=root / "store")
    saved = {"live": 0.05, "dead": 0.9}
    assert r.counts(saved) != r.counts(0.3), "the saved thresholds must change the counts"
    r.save_thresholds(saved)
    try:
        # the polygon export: one object per detection kept at the saved thresholds
        r.export_polygons(tmp_path / "polygons")
        docs = [json.loads(p.read_text()) for p in sorted((tmp_path / "polygons").rglob("*.json"))]
        want = r.counts(saved)
        assert {c: sum(d[f"{c}_count"] for d in docs) for c in saved} == want
        assert {c: sum(p["class"] == c for d in docs for p in d["polygons"]) for c in saved} == want
        assert all(min((p["confidence"] for p in d["polygons"] if p["class"] == "dead"), default=1) >= 0.9
                   for d in docs)
        by_image = r.per_image()  # no threshold given: the saved ones
        assert by_image[["live", "dead"]].sum().to_dict() == want
        # the report resumes the same run (no inference) and shows the saved thresholds' counts
        html = mt.report(folder, model=tiny_model, imgsz=IMGSZ, threshold=0.3, store=root / "store",
                         out=tmp_path / "report", n_samples=1, batch_size=1).read_text()
        for cat, n in want.items():
            assert re.search(rf"<th>{cat}</th>\s*<td>{n}</td>", html), (cat, n)
        assert "0.05" in _text(html) and "0.9" in _text(html)  # the thresholds shown are the saved ones
        saved_on = mt.open_run(r.run_id, store=root / "store").meta["thresholds_saved_at"][:10]
        # where the thresholds came from: saved by hand on that date, without the "how" of thresholds not used
        assert re.search(rf"<th>threshold</th>\s*<td>[^<]*0.05[^<]*</td>\s*<td>saved by hand, {saved_on}</td>"
                         r"\s*<td></td>", html)
        # the run finished inferring when the first report ran; this resume inferred nothing
        meta = mt.open_run(r.run_id, store=root / "store").meta
        assert meta["inference_finished_at"] < meta["finished_at"]
        first = re.search(r"<th>inference finished</th>\s*<td>([^<]+)</td>", html).group(1)
        assert first == pd.Timestamp(meta["inference_finished_at"]).strftime("%Y-%m-%d %H:%M UTC")
    finally:
        r.save_thresholds(0.3)  # leave the shared run as it was


def test_rendered_report_has_no_stderr_blocks(tmp_path):
    """Log lines and warnings a kernel writes to stderr are the kernel's diagnostics, not the reader's."""
    from musseltools.reports.report import render_html

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("run = mt.run(...)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="INFO [run 1a2b] 4 images to process\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="Run 1a2b completed\n")]
    nb.cells.append(cell)
    nbformat.write(nb, tmp_path / "report.ipynb")
    html = render_html(tmp_path / "report.ipynb", tmp_path / "report.html").read_text()
    assert "Run 1a2b completed" in _text(html) and "4 images to process" not in _text(html)
