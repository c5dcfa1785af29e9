"""Notebook hygiene (no outputs, kernelspec, jupytext pairs in sync) and papermill execution."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import time
from pathlib import Path

import jupytext
import nbformat
import papermill as pm
import pytest
from conftest import IMGSZ, write_images

import musseltools as mt

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("survey_report", "threshold_tuning")
DEMO_IMAGES = ROOT / "data" / "demo" / "images"
DEMO_LABELS = ROOT / "data" / "demo" / "labels"
DEMO_MODEL = ROOT / "data" / "models" / "mussel-demo.pt"
WIDGET = "application/vnd.jupyter.widget-view+json"
PARAMETERS = {
    "survey_report": {"images", "model", "threshold", "store", "title", "class_map", "truth", "n_samples", "tile",
                      "tile_overlap", "imgsz"},
    "threshold_tuning": {"images", "model", "threshold", "store", "run_id", "truth", "background"},
}


def _cells(nb) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def notebook_problems(ipynb: Path) -> list[str]:
    """What is wrong with a committed notebook: outputs, missing kernelspec, a stale or missing pair."""
    problems = []
    nb = nbformat.read(ipynb, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            problems.append(f"cell {i} has outputs or an execution count")
    if nb.metadata.get("kernelspec", {}).get("name") != "python3":
        problems.append("no python3 kernelspec in the metadata")
    if "py:percent" not in nb.metadata.get("jupytext", {}).get("formats", ""):
        problems.append("not paired with a py:percent script")
    pair = ipynb.with_suffix(".py")
    if not pair.exists():
        problems.append(f"pair {pair.name} is missing")
    else:
        script = jupytext.read(pair)
        if _cells(script) != _cells(jupytext.read(ipynb)):
            problems.append(f"pair {pair.name} is out of date (run `jupytext --sync {ipynb.name}`)")
        if script.metadata.get("kernelspec") != nb.metadata.get("kernelspec"):
            problems.append(f"pair {pair.name} has another kernelspec")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_clean_and_paired(name):
    ipynb = NOTEBOOKS / f"{name}.ipynb"
    assert notebook_problems(ipynb) == []
    nb = nbformat.read(ipynb, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    assigned = {line.split("=", 1)[0].strip() for line in params[0].source.splitlines() if "=" in line}
    assert PARAMETERS[name] <= assigned


def test_every_notebook_in_the_folder_is_checked():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


def test_the_hygiene_check_catches_outputs_and_stale_pairs(tmp_path):
    for name in NAMES:
        shutil.copy(NOTEBOOKS / f"{name}.ipynb", tmp_path)
        shutil.copy(NOTEBOOKS / f"{name}.py", tmp_path)
    ipynb = tmp_path / "survey_report.ipynb"
    assert notebook_problems(ipynb) == []
    nb = nbformat.read(ipynb, as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    code.execution_count = 1
    nbformat.write(nb, ipynb)
    assert any("outputs" in p for p in notebook_problems(ipynb))
    py = tmp_path / "threshold_tuning.py"
    py.write_text(py.read_text().replace("tuner = ThresholdTuner(run, truth=truth)", "tuner = None"))
    assert any("out of date" in p for p in notebook_problems(tmp_path / "threshold_tuning.ipynb"))
    nb = nbformat.read(tmp_path / "threshold_tuning.ipynb", as_version=4)
    del nb.metadata["kernelspec"]
    nbformat.write(nb, tmp_path / "threshold_tuning.ipynb")
    assert any("kernelspec" in p for p in notebook_problems(tmp_path / "threshold_tuning.ipynb"))


def _execute(name: str, out: Path, **parameters) -> nbformat.NotebookNode:
    pm.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=parameters, kernel_name="python3",
                        cwd=str(out.parent), progress_bar=False)
    return nbformat.read(out, as_version=4)


def _outputs_of(nb, marker: str) -> list:
    return next(c for c in nb.cells if c.cell_type == "code" and marker in c.source).outputs


def test_threshold_tuning_notebook_runs_in_the_background_with_a_monitor(tmp_path, tiny_model):
    folder = tmp_path / "images"
    write_images(folder, 4, seed=13)
    nb = _execute("threshold_tuning", tmp_path / "out.ipynb", images=str(folder), model=str(tiny_model),
                  imgsz=IMGSZ, store=str(tmp_path / "store"), background=True)
    run_outputs = _outputs_of(nb, "background=True")
    assert any(WIDGET in o.get("data", {}) for o in run_outputs)  # the RunMonitor
    assert any("completed: 4/4 images" in o.get("data", {}).get("text/plain", "") for o in run_outputs)
    tuner_outputs = _outputs_of(nb, "tuner = ThresholdTuner(")
    assert [o for o in tuner_outputs if WIDGET in o.get("data", {})]
    assert "ThresholdTuner" in json.dumps(tuner_outputs)
    # the notebook can also open the run it made, by id
    run_id = mt.list_runs(store=tmp_path / "store").run_id.iloc[0]
    again = _execute("threshold_tuning", tmp_path / "again.ipynb", run_id=run_id, store=str(tmp_path / "store"))
    assert run_id in json.dumps(_outputs_of(again, "mt.open_run("))


@pytest.mark.slow
def test_demo_collection_notebooks_and_tuner_speed(tmp_path, capsys):
    """Both notebooks on the demo survey with the demo detector and its labels; slider update time."""
    assert DEMO_MODEL.exists(), f"the demo detector {DEMO_MODEL} is missing — run scripts/ to train it"
    store = tmp_path / "store"
    html = mt.report(DEMO_IMAGES, model=DEMO_MODEL, truth=DEMO_LABELS, store=store, out=tmp_path / "demo")
    text = html.read_text()
    assert "Evaluation against labels" in text and "precision" in text
    figures = re.findall(r'<img[^>]+src="data:image/png;base64,', text)
    assert len(figures) == 7  # 4 survey figures + 3 evaluation figures, each shown once
    run = mt.open_run(mt.list_runs(store=store).run_id.iloc[0], store=store)
    assert run.status == "completed" and run.meta["total_images"] == 40

    nb = _execute("threshold_tuning", tmp_path / "tuning.ipynb", images=str(DEMO_IMAGES), model=str(DEMO_MODEL),
                  store=str(store), truth=str(DEMO_LABELS))
    assert any(WIDGET in o.get("data", {}) for o in _outputs_of(nb, "tuner = ThresholdTuner("))
    assert mt.list_runs(store=store).shape[0] == 1  # the notebook reused the report's run

    from musseltools.widgets import ThresholdTuner

    t0 = time.perf_counter()
    tuner = ThresholdTuner(run, truth=DEMO_LABELS)
    build = time.perf_counter() - t0
    slider, picker = [], []
    large = [i for i, p in enumerate(tuner.table["path"]) if "quadrat" in p]
    for i in [0, *large]:
        tuner.picker.value = i
        picker.append(tuner.last_update_s)
        for t in (0.3, 0.45, 0.6, 0.75):
            tuner.sliders["live"].value = t
            slider.append(tuner.last_update_s)
            assert tuner.survey_counts == run.counts(tuner.thresholds)
    with capsys.disabled():
        print(f"\n[demo ThresholdTuner] build {build:.2f} s; slider update median {statistics.median(slider) * 1000:.0f} ms, "
              f"max {max(slider) * 1000:.0f} ms ({len(slider)} moves, incl. 4000x3000 quadrats); "
              f"image pick max {max(picker) * 1000:.0f} ms")
    assert max(slider) < 1.0 and max(picker) < 2.0
