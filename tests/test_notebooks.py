"""Notebook hygiene (no outputs, kernelspec, jupytext pairs in sync) and papermill execution."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import papermill as pm
import pytest
from conftest import IMGSZ, write_images
from contract import comparable

import musseltools as mt

#: starts processes, kernels or models: left out of `make test-fast`
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("survey_report", "threshold_tuning")
DEMO_IMAGES = ROOT / "data" / "demo" / "images"
DEMO_LABELS = ROOT / "data" / "demo" / "labels"
DEMO_MODEL = ROOT / "data" / "models" / "mussel-demo.pt"
DEMO_SHEET = ROOT / "data" / "demo" / "sheet.csv"
WIDGET = "application/vnd.jupyter.widget-view+json"
PARAMETERS = {
    "survey_report": {"images", "model", "threshold", "store", "title", "class_map", "truth", "n_samples", "tile",
                      "tile_overlap", "imgsz"},
    "threshold_tuning": {"images", "model", "threshold", "store", "run_id", "truth", "background", "tile", "iou",
                         "calibrate", "calibrate_ious"},
}


def _parameters(name: str) -> dict[str, object]:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values: dict[str, object] = {}
    exec(cell.source, {}, values)  # noqa: S102 - the committed notebook's own parameters cell
    return values


def test_threshold_tuning_defaults_are_the_demos_settings():
    """Issue 15, point 2: Run All tunes the run `make demo` made, in the project's store: both leave every
    setting to the weights' card (the same run)."""
    demo = re.search(r"^DEMO_RUN := (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    flags = dict(zip(demo[1::2], demo[2::2]))
    assert set(flags) == {"--model"}  # make demo: the card's settings
    sheet = re.search(r"^DEMO_SHEET := (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert (ROOT / sheet).resolve() == DEMO_SHEET  # the demo's design, which the demo test's report is given
    p = _parameters("threshold_tuning")
    assert all(p[k] is None for k in ("threshold", "tile", "tile_overlap", "tile_merge", "iou", "imgsz"))
    assert p["store"] is None  # the default store: data/store in the project root, also from notebooks/
    assert (NOTEBOOKS / p["images"]).resolve() == (ROOT / demo[0]).resolve()
    assert (NOTEBOOKS / p["model"]).resolve() == (ROOT / flags["--model"]).resolve()


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
    assert "no calibration: set `truth`" in json.dumps(_outputs_of(nb, "CalibrationPanel(calibration)"))
    # the notebook can also open the run it made, by id
    run_id = mt.list_runs(store=tmp_path / "store").run_id.iloc[0]
    again = _execute("threshold_tuning", tmp_path / "again.ipynb", run_id=run_id, store=str(tmp_path / "store"))
    assert run_id in json.dumps(_outputs_of(again, "mt.open_run("))


def test_threshold_tuning_notebook_calibrates_when_truth_is_given(tmp_path, tiny_model):
    """Issue 25, point 5: with `truth`, the notebook calibrates the run and shows the panel (the settings
    table, the chosen settings, the button that writes the card: tests/test_calibrate.py clicks it)."""
    folder = tmp_path / "images"
    write_images(folder, 4, seed=13)
    counts = tmp_path / "counts.csv"
    counts.write_text("image,live,dead\nimg0000.jpg,2,1\nimg0001.jpg,0,3\nimg0002.jpg,4,0\n")
    nb = _execute("threshold_tuning", tmp_path / "out.ipynb", images=str(folder), model=str(tiny_model),
                  imgsz=IMGSZ, store=str(tmp_path / "store"), truth=str(counts), calibrate_ious=[0.5, 0.7])
    outputs = _outputs_of(nb, "CalibrationPanel(calibration)")
    assert [o for o in outputs if WIDGET in o.get("data", {})]
    shown = json.dumps(outputs)
    assert "CalibrationPanel(<Calibration of run" in shown and "on 3 labelled images" in shown
    calibrated = mt.list_runs(store=tmp_path / "store").query("collection.str.endswith('-calibration')")
    assert len(calibrated) == 2  # one run of the labelled images per setting searched (0.5 and 0.7)


@pytest.mark.slow
def test_demo_collection_notebooks_and_tuner_speed(tmp_path):
    """Both notebooks on the demo survey with the demo detector and its labels; the tuner's counts."""
    assert DEMO_MODEL.exists(), f"the demo detector {DEMO_MODEL} is missing — run scripts/ to train it"
    store = tmp_path / "store"
    html = mt.report(DEMO_IMAGES, model=DEMO_MODEL, truth=DEMO_LABELS, sheet=DEMO_SHEET, store=store,
                     out=tmp_path / "demo")  # as `make demo` makes it
    text = html.read_text()
    assert "Evaluation against labels" in text and "precision" in text
    figures = re.findall(r'<img[^>]+src="data:image/png;base64,', text)
    assert len(figures) == 14  # 4 survey, 3 evaluation, 3 by group, 4 of sizes (histogram, 2 ridgelines, live/dead)
    # issue 23: the demo's sheet gives the section by group (3 sites x 2 dates, caged and open) and the methods
    for shown in ("Density and mortality by group", "Over time", "Sites", "Treatments compared with",
                  "MASS::glm.nb(", "Dispersion check", "Methods",
                  "95% intervals are t intervals", "Against labels of 40 images"):
        assert shown in text, shown
    assert re.search(r'alt="Figure: Density and mortality by site, date', text)
    # issue 24: the sheet's scales (mm_per_px for frames, quadrat_side_m for the quadrats) give the size section
    assert "Shell sizes" in text and "40 images of 40 have one" in text
    assert re.search(r"<th>sheet mm_per_px</th>\s*<td>37</td>", text) and re.search(
        r"<th>sheet quadrat_side_m</th>\s*<td>3</td>", text)
    assert re.search(r'alt="Figure: Shell length of live by site', text)
    assert re.search(r"<th[^>]*>Narrows</th>\s*<th[^>]*>2025-05-12</th>\s*<th>live</th>\s*<td>6</td>", text)  # 6 images
    run = mt.open_run(mt.list_runs(store=store).run_id.iloc[0], store=store)
    assert run.status == "completed" and run.meta["total_images"] == 40

    nb = _execute("threshold_tuning", tmp_path / "tuning.ipynb", images=str(DEMO_IMAGES), model=str(DEMO_MODEL),
                  store=str(store), truth=str(DEMO_LABELS), tile=None, iou=None,  # the report's settings
                  calibrate=False)  # the search over the tiled demo costs minutes: the cell is tested on a tiny run
    assert any(WIDGET in o.get("data", {}) for o in _outputs_of(nb, "tuner = ThresholdTuner("))
    assert mt.list_runs(store=store).shape[0] == 1  # the notebook reused the report's run

    from musseltools.jupyter.widgets import ThresholdTuner

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
    # guards against a pathological slowdown only (10x what a slider may take); the figures are printed by
    # benchmarks/widgets.py
    assert max(slider) < 10.0 and max(picker) < 20.0 and build < 120.0, (build, slider, picker)


def _kernel_exec(kc, code: str, timeout: float = 300) -> tuple[dict, str]:
    """Execute ``code`` in the kernel; its reply content and what it printed."""
    out: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return reply["content"], "".join(out)


def test_kernel_interrupt_during_a_background_run(tmp_path, tiny_model):
    """A real kernel interrupt (SIGINT to an ipykernel, as JupyterLab's stop button sends it) while a
    background run works and the notebook waits for it in ``handle.wait()``: the interrupt stops the
    waiting cell, not the run (a background run is stopped by ``handle.cancel()``), the kernel stays
    usable, the run goes on to ``completed`` and nothing is lost. A foreground ``mt.run`` interrupted the
    same way is marked ``cancelled`` and resumes to the same results."""
    from jupyter_client import KernelManager

    from musseltools.store.store import Store

    folder = tmp_path / "images"
    write_images(folder, 40, seed=23)
    store = tmp_path / "store"
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path), env=dict(os.environ, MUSSELTOOLS_TORCH_THREADS="1", YOLO_OFFLINE="1"))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        kw = f"model={str(tiny_model)!r}, imgsz={IMGSZ}, store={str(store)!r}, commit_every=2, batch_size=1, quiet=True"
        reply, text = _kernel_exec(kc, f"import musseltools as mt\nh = mt.run({str(folder)!r}, {kw}, background=True)")
        assert reply["status"] == "ok", text

        def parts() -> int:
            return len(list(store.glob("results/*/images/part-*.parquet")))

        deadline = time.monotonic() + 120
        while parts() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        msg_id = kc.execute("r = h.wait()")  # the notebook waits for the run ...
        time.sleep(0.2)
        assert parts() < 20, "the run ended before the interrupt: nothing was tested"
        km.interrupt_kernel()  # ... and the user presses stop
        while True:
            msg = kc.get_shell_msg(timeout=60)
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        assert msg["content"]["status"] == "error" and msg["content"]["ename"] == "KeyboardInterrupt", msg["content"]
        reply, text = _kernel_exec(kc, "print(h.done(), h.run.status)")  # the kernel answers at once
        assert reply["status"] == "ok" and text.split() in (["False", "running"], ["True", "completed"]), text
        reply, text = _kernel_exec(kc, "r = h.wait(); print(r.status, r.meta['processed_count'], r.meta['inferred_this_call'])")
        assert reply["status"] == "ok" and text.split() == ["completed", "40", "40"], text
        run = mt.open_run(mt.list_runs(store=store).run_id.iloc[0], store=store)
        fresh = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "fresh", batch_size=1, quiet=True)
        for got, want in zip(comparable(run), comparable(fresh)):
            pd.testing.assert_frame_equal(got, want)

        # a foreground run in the kernel, interrupted: cancelled, then resumed
        write_images(folder, 30, seed=24, start=40)
        msg_id = kc.execute(f"r2 = mt.run({str(folder)!r}, {kw})")
        key = run.meta["inference_key"]
        deadline = time.monotonic() + 120
        while len(Store(store).read_results(key)[0]) < 42 and time.monotonic() < deadline:
            time.sleep(0.01)
        km.interrupt_kernel()
        while True:
            msg = kc.get_shell_msg(timeout=60)
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        assert msg["content"]["ename"] in ("KeyboardInterrupt", "RunCancelled"), msg["content"]
        assert mt.list_runs(store=store).set_index("run_id").at[run.run_id, "status"] == "cancelled"
        assert len(Store(store).read_results(key)[0]) < 70, "the run ended before the interrupt: nothing was tested"
        reply, text = _kernel_exec(kc, f"r2 = mt.run({str(folder)!r}, {kw}); print(r2.status, r2.meta['processed_count'])")
        assert reply["status"] == "ok" and text.split() == ["completed", "70"], text
        fresh = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "fresh2", batch_size=1, quiet=True)
        for got, want in zip(comparable(mt.open_run(run.run_id, store=store)), comparable(fresh)):
            pd.testing.assert_frame_equal(got, want)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
