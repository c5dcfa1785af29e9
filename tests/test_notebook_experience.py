"""What a researcher met in JupyterLab (issue 15), at widget and handle level: a monitor follows a resumed
run, progress counts images as they are inferred, cancelling keeps them, a second run in the same kernel
gets its handle, user errors are one line, the quadrat browser, one colour-blind-safe palette, the store
found from notebooks/."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import IMGSZ, write_images

import musseltools as mt
from musseltools.errors import CollectionError, InferenceError, MusselToolsError, RunLockedError
from musseltools.executors import LocalExecutor
from musseltools.jupyter.monitor import RunMonitor
from musseltools.jupyter.widgets import ThresholdTuner
from musseltools.paths import project_root
from musseltools.plots import survey as plots
from musseltools.runs.engine import RunHandle
from musseltools.store.runmeta import update_run_meta
from musseltools.store.store import Store, default_store_path

#: starts processes, kernels or models: left out of `make test-fast`
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


class SlowLocal(LocalExecutor):
    """The local executor, slowed after each inferred image so a test can watch and cancel mid-unit."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def process(self, task, units, *, cancel, on_progress=lambda n: None):
        def slow(n: int) -> None:
            on_progress(n)
            time.sleep(self.delay * n)

        return super().process(task, units, cancel=cancel, on_progress=slow)


def _watch(handle, timeout: float = 120) -> list[dict]:
    seen, deadline = [], time.monotonic() + timeout
    while not handle.done() and time.monotonic() < deadline:
        seen.append(dict(handle.run.progress))
        time.sleep(0.02)
    return seen


# 1 ------------------------------------------------------------------------------------------------------
class _Gate:
    """A stand-in job: run.json still says "cancelled" until the gate opens, then "completed"."""

    def __init__(self, store: Store, run_id: str, key: str) -> None:
        self.store, self.run_id, self.key, self.open = store, run_id, key, threading.Event()

    def execute(self) -> None:
        self.open.wait(30)
        update_run_meta(self.store, self.run_id, status="completed", processed_count=4, error=None)


def test_monitor_on_a_handle_follows_it_past_an_old_terminal_status(tmp_path, tiny_model):
    write_images(tmp_path / "images", 4, seed=3)
    run = mt.run(tmp_path / "images", model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", quiet=True)
    update_run_meta(run.store, run.run_id, status="cancelled", processed_count=0)  # what a resume starts from
    gate = _Gate(run.store, run.run_id, run.meta["inference_key"])
    handle = RunHandle(run.store, run.run_id, threading.Event())
    handle.start(gate)
    monitor = RunMonitor(handle, interval=0.05)
    assert "cancelled" in monitor.label.value and monitor.polling  # it does not stop on the old status
    gate.open.set()
    deadline = time.monotonic() + 30
    while monitor.polling and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not monitor.polling
    assert "completed" in monitor.label.value and "4/4 images" in monitor.label.value


# 3, 4, 1 -------------------------------------------------------------------------------------------------
def test_progress_by_image_cancel_keeps_inferred_and_a_monitor_follows_the_resume(tmp_path, tiny_model, caplog):
    folder, store = tmp_path / "images", tmp_path / "store"
    write_images(folder, 10, seed=8)
    kw = dict(model=tiny_model, imgsz=IMGSZ, store=store, quiet=True, batch_size=1, commit_every=100)
    handle = mt.run(folder, executor=SlowLocal(0.3), background=True, **kw)
    monitor = RunMonitor(handle, interval=0.05)
    seen, shown = [], []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        p = handle.run.progress
        seen.append(p)
        shown.append((monitor.bar.value, monitor.label.value))
        if (p.get("inferred_count") or 0) >= 3:
            break
        time.sleep(0.02)
    assert any(p.get("phase") == "loading model" for p in seen), seen[:3]  # said while nothing is inferred
    running = [p for p in seen if p["status"] == "running"]
    assert running[-1]["inferred_count"] >= 3 and running[-1]["processed_count"] == 0  # one unit: none saved yet
    time.sleep(0.2)
    assert any(bar > 0 and ", 0 of them saved" in text for bar, text in shown + [(monitor.bar.value, monitor.label.value)])
    with caplog.at_level(logging.WARNING, logger="musseltools.runs.engine"):
        handle.cancel()
        run = handle.wait(timeout=60)
    assert run.status == "cancelled"
    kept = run.meta["processed_count"]
    assert 3 <= kept < 10
    assert re.search(rf"cancelled; {kept} of 10 images have results and are kept", caplog.text)
    assert run.meta.get("phase") is None
    monitor.stop()
    # resumed in the background with a monitor made at once: it follows the new call to the end
    handle = mt.run(folder, background=True, **kw)
    monitor = RunMonitor(handle, interval=0.05)
    deadline = time.monotonic() + 120
    while monitor.polling and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handle.wait().status == "completed"
    assert "completed" in monitor.label.value and "10/10 images" in monitor.label.value
    assert handle.run.meta["inferred_this_call"] == 10 - kept  # the kept images were not inferred again


# 6 -----------------------------------------------------------------------------------------------------
def test_a_second_run_in_this_kernel_gets_the_handle_or_a_plain_message(tmp_path, tiny_model):
    folder = tmp_path / "images"
    write_images(folder, 6, seed=9)
    kw = dict(model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", quiet=True, batch_size=1)
    handle = mt.run(folder, executor=SlowLocal(0.3), background=True, **kw)
    try:
        assert mt.run(folder, background=True, **kw) is handle
        with pytest.raises(RunLockedError) as err:
            mt.run(folder, **kw)
        msg = str(err.value)
        assert f"run {handle.run_id} is already running in this notebook (started" in msg and "handle" in msg
        assert "pid" not in msg
        assert err.value._render_traceback_() == [f"\x1b[0;31mRunLockedError\x1b[0m: {msg}"]
    finally:
        handle.cancel()
        handle.wait(timeout=60)
    again = mt.run(folder, background=True, **kw)
    assert again is not handle  # once ended, a new call runs again
    assert again.wait(timeout=60).status == "completed"


def test_user_errors_show_one_line_in_ipython_and_others_a_traceback(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_cell("import musseltools as mt\nmt.run('/no/such/folder', model='/no/such/model.pt')")
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Error" in text and "Traceback" not in text and "File " not in text
    assert len([line for line in text.splitlines() if line.strip()]) == 1, text
    for exc in (InferenceError("the model crashed"), TypeError("a bug")):
        assert not hasattr(exc, "_render_traceback_")  # IPython's full traceback
    assert hasattr(CollectionError("no such folder"), "_render_traceback_")
    assert issubclass(RunLockedError, MusselToolsError) and RunLockedError("x").user_error


# 5 -----------------------------------------------------------------------------------------------------
def test_repr_names_the_saved_thresholds(tmp_path, tiny_model):
    write_images(tmp_path / "images", 3, seed=4)
    run = mt.run(tmp_path / "images", model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", quiet=True)
    assert repr(run).endswith("at 0.50>")
    run.save_thresholds({"live": 0.70, "dead": 0.21})
    text = repr(mt.open_run(run.run_id, store=tmp_path / "store"))
    assert "at live 0.70, dead 0.21>" in text and "at 0.5" not in text


# 7, 8, 2 -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def survey(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("nav")
    write_images(root / "images", 6, seed=5, size=(640, 480))
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return mt.run(root / "images", model=tiny_model, imgsz=IMGSZ, store=root / "store", quiet=True,
                  conf_floor=0.01, threshold=0.05)


def test_quadrat_browser_steps_sorts_zooms_and_labels(survey):
    tuner = ThresholdTuner(survey, max_side=320)
    nav = tuner.nav
    counts = tuner.counts_table()
    first = tuner.picker.value
    assert nav.order[0] != first and tuner.table.loc[nav.order[0], "path"].endswith("broken.jpg")
    before, after = nav.neighbours()
    assert (before, after) == (nav.order[0], nav.order[2])
    live, dead = counts[after]
    assert nav.next_button.description == f"live {live}, dead {dead} ▶"  # the next image's counts
    nav.next_button.click()
    assert tuner.picker.value == after and nav.neighbours()[0] == first
    assert "image 3 of 7" in nav.position_html.value
    nav.prev_button.click()
    nav.prev_button.click()
    assert tuner.picker.value == nav.order[0] and nav.prev_button.description == "◀ (first)"
    tuner.picker.value = first

    nav.sort.value = "most mussels first"
    totals = counts.sum(axis=1)
    assert [int(totals[i]) for i in nav.order] == sorted(totals.tolist(), reverse=True)
    nav.sort.value = "failures first"
    assert tuner.table.loc[nav.order[0], "path"].endswith("broken.jpg")
    assert "disagreement with the truth" not in nav.sort.options  # no labels given

    nav.sort.value = "file name"
    tuner.picker.value = first
    fit = bytes(tuner.image.value)
    nav.zoom.value = 4
    zoomed = bytes(tuner.image.value)
    assert zoomed != fit and zoomed.startswith(b"\xff\xd8")
    nav.pan_x.value = 0.0
    assert bytes(tuner.image.value) != zoomed  # panned
    nav.confidences.value = True
    with_conf = bytes(tuner.image.value)
    assert with_conf != fit
    for t in (0.1, 0.4, 0.8):  # the sliders still drive the view while zoomed with confidences shown (their
        tuner.sliders["live"].value = t  # speed is a figure of benchmarks/widgets.py, not a test)
        assert tuner.survey_counts == survey.counts(tuner.thresholds)
        assert bytes(tuner.image.value).startswith(b"\xff\xd8")


def test_render_quadrat_draws_a_legend_and_the_visible_boxes():
    import pandas as pd

    from musseltools.jupyter.quadrats import render_quadrat

    rgb = np.full((300, 400, 3), 128, np.uint8)
    rows = pd.DataFrame({"class_name": ["live", "dead"], "x1": [300.0, 20.0], "y1": [200.0, 200.0],
                         "x2": [380.0, 60.0], "y2": [280.0, 240.0], "confidence": [0.9, 0.3], "polygon": [None, None]})
    colours = plots.class_colours(["live", "dead"])
    out = render_quadrat(rgb, 1.0, rows, colours, counts={"live": 1, "dead": 1})
    legend = out[:60, :120].reshape(-1, 3)
    assert (legend == plots.colour_of("live", colours)).all(axis=1).any()
    assert (legend == plots.colour_of("dead", colours)).all(axis=1).any()
    zoomed = render_quadrat(rgb, 1.0, rows, colours, counts={"live": 1, "dead": 1}, zoom=2, pan=(1.0, 1.0),
                            confidences=True, out_side=400)
    assert zoomed.shape[:2] == (300, 400)  # the bottom-right quarter, enlarged 2x
    blue = (zoomed == plots.colour_of("live", colours)).all(axis=2)
    orange = (zoomed[80:] == plots.colour_of("dead", colours)).all(axis=2)
    assert blue[150:].any() and not orange.any()  # the live box is in view, the dead one is not


def test_one_colour_blind_safe_palette_everywhere(survey):
    assert plots.class_colours(["live", "dead"]) == {"live": "#0072B2", "dead": "#E69F00"}
    assert plots.LIVE_COLOUR == plots.OKABE_ITO["blue"] and plots.DEAD_COLOUR == plots.OKABE_ITO["orange"]
    fig = plots.count_vs_threshold(survey.cube())
    assert {line.get_color() for line in fig.axes[0].lines} >= {"#0072B2", "#E69F00"}
    from musseltools.jupyter.editor import CorrectionEditor

    assert CorrectionEditor(survey).canvas.colours == {"live": "#0072B2", "dead": "#E69F00"}
    script = (ROOT / "scripts" / "annotate_demo.py").read_text()
    assert "plots.class_colours(" in script and "#1f77b4" not in script
    for path in ("musseltools/jupyter/widgets.py", "musseltools/jupyter/quadrats.py", "musseltools/jupyter/editor.py",
                 "musseltools/reports/report.py", "musseltools/plots/labels.py"):
        text = (ROOT / path).read_text()
        assert "#2ca02c" not in text and "#d62728" not in text, path


def test_default_store_is_the_same_from_notebooks_and_the_project_root(tmp_path, monkeypatch, survey):
    monkeypatch.delenv("MUSSELTOOLS_STORE", raising=False)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'survey'\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert project_root() == tmp_path and default_store_path() == tmp_path / "data" / "store"
    assert Store(None).root.resolve() == tmp_path / "data" / "store"
    monkeypatch.chdir(tmp_path)
    assert default_store_path() == tmp_path / "data" / "store"
    lone = tmp_path / "elsewhere"
    (lone / "data" / "store").mkdir(parents=True)  # a folder with its own store is a project of its own
    monkeypatch.chdir(lone)
    assert default_store_path() == lone / "data" / "store"
    source = ThresholdTuner(survey).source_html.value
    assert str(survey.store.root.resolve()) in source and survey.run_id in source
    assert "tile" in source and "iou" in source


# 9 -----------------------------------------------------------------------------------------------------
def test_the_tuners_curve_keeps_its_last_tick(survey):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plots.count_vs_threshold(survey.cube(), figsize=(6.0, 3.6), title="Survey count versus threshold")
    fig.set_dpi(80)  # as ThresholdTuner draws it
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    ticks = {t.get_text(): t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels() if t.get_visible()}
    assert "1.0" in ticks and ticks["1.0"].x1 <= fig.bbox.x1, ticks
    assert ThresholdTuner(survey).plot.layout.width == "100%"  # scaled whole into its column, never cropped
