"""ThresholdTuner shows the counts of `Run.counts` and `musseltools counts`; RunMonitor follows runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import IMGSZ, write_images

import musseltools as mt
from musseltools import cli, plots
from musseltools.jupyter.widgets import RunMonitor, ThresholdTuner

PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff"


@pytest.fixture(scope="module")
def survey(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("widgets")
    folder = root / "images"
    write_images(folder, 6, seed=5)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=root / "store", quiet=True, batch_size=1)


def _cli_counts(capsys, run, *extra):
    capsys.readouterr()
    assert cli.main(["counts", run.run_id, "--store", str(run.store.root), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)["counts"]


def test_slider_values_give_run_counts_and_cli_counts(survey, capsys):
    tuner = ThresholdTuner(survey)
    assert tuner.thresholds == {"live": 0.5, "dead": 0.5}  # starts at the run's threshold
    assert tuner.survey_counts == survey.counts()
    seen = []
    for t in (0.2, 0.75, 0.01):
        for s in tuner.sliders.values():
            s.value = t
        counts = tuner.survey_counts
        assert counts == survey.counts(t) == _cli_counts(capsys, survey, "--threshold", str(t))
        shown = tuner.survey_counts_html.value
        assert all(f"{c} <b>{n}</b>" in shown for c, n in counts.items())
        seen.append(counts)
    assert len({json.dumps(c) for c in seen}) == 3  # the thresholds chosen do change the counts


def test_per_class_sliders_and_image_picker(survey):
    tuner = ThresholdTuner(survey)
    thr = {"live": 0.35, "dead": 0.8}
    for name, t in thr.items():
        tuner.sliders[name].value = t
    assert tuner.thresholds == thr
    assert tuner.survey_counts == survey.counts(thr)
    table = survey.per_image(thr)
    labels = [label for label, _ in tuner.picker.options]
    assert "broken.jpg (error)" in labels
    for i, row in enumerate(tuner.table.itertuples()):
        tuner.picker.value = i
        expected = table.loc[table["image_id"] == row.image_id, survey.categories].iloc[0].to_dict()
        assert tuner.image_counts == expected
        shown = tuner.image_counts_html.value
        assert all(f"{c} <b>{n}</b>" in shown for c, n in expected.items())
        if isinstance(row.error, str):
            assert "error" in shown and bytes(tuner.image.value) == b""
        else:
            assert bytes(tuner.image.value).startswith(JPEG)


def test_views_follow_the_sliders(survey):
    tuner = ThresholdTuner(survey)
    tuner.picker.value = int(tuner.table.index[tuner.table["error"].isna()][0])
    image0, plot0 = bytes(tuner.image.value), bytes(tuner.plot.value)
    assert image0.startswith(JPEG) and plot0.startswith(PNG)
    live0 = tuner.image_counts["live"]
    tuner.sliders["live"].value = 0.95
    assert bytes(tuner.plot.value) != plot0  # the marker moved
    if tuner.image_counts["live"] != live0:
        assert bytes(tuner.image.value) != image0  # fewer outlines drawn
    for t in (0.1, 0.3, 0.6, 0.9):
        tuner.sliders["dead"].value = t
        assert tuner.survey_counts == survey.counts(tuner.thresholds)
        assert tuner.last_update_s > 0  # each move timed (the figures: benchmarks/widgets.py, not a test)


def test_tuner_never_reruns_the_model(survey, monkeypatch):
    """Building the tuner, moving every slider, picking every image and saving never calls the model."""
    from musseltools.models.ultralytics import YoloPredictor

    calls = {"predict": 0, "load": 0}
    orig_predict, orig_init = YoloPredictor.predict, YoloPredictor.__init__

    def predict(self, batch):
        calls["predict"] += 1
        return orig_predict(self, batch)

    def init(self, *a, **k):
        calls["load"] += 1
        orig_init(self, *a, **k)

    monkeypatch.setattr(YoloPredictor, "predict", predict)
    monkeypatch.setattr(YoloPredictor, "__init__", init)
    tuner = ThresholdTuner(survey)
    for i in range(len(tuner.table)):
        tuner.picker.value = i
        for t in (0.05, 0.6, 0.95):
            for s in tuner.sliders.values():
                s.value = t
            assert tuner.survey_counts == survey.counts(tuner.thresholds)
    tuner.save_button.click()
    assert calls == {"predict": 0, "load": 0}, calls
    survey.save_thresholds(0.5)  # leave the shared run as it was
    # the counting patch does see the model when it runs (so the zero above means something)
    one_image = survey.per_image().query("error.isna()")["path"].iloc[:1].tolist()
    mt.run(one_image, model=survey.meta["model"]["path"], imgsz=IMGSZ, quiet=True, batch_size=1)  # a new store
    assert calls["predict"] >= 1


def test_save_persists_and_counts_use_it(survey, capsys):
    tuner = ThresholdTuner(survey)
    tuner.sliders["live"].value = 0.42
    tuner.sliders["dead"].value = 0.66
    tuner.save_button.click()
    assert "saved" in tuner.status_html.value
    reopened = mt.open_run(survey.run_id, store=survey.store.root)
    assert reopened.thresholds == {"live": 0.42, "dead": 0.66}
    assert reopened.counts() == tuner.survey_counts == _cli_counts(capsys, reopened)
    assert ThresholdTuner(reopened).thresholds == {"live": 0.42, "dead": 0.66}  # a new tuner starts there
    reopened.save_thresholds(0.5)  # leave the shared run as it was


def test_run_monitor_follows_a_background_run(tmp_path, tiny_model):
    folder = tmp_path / "bg"
    write_images(folder, 8, seed=11)
    handle = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store="store", quiet=True, commit_every=2,
                    background=True)
    monitor = RunMonitor(handle, interval=0.05)
    seen = set()
    deadline = time.monotonic() + 120
    while monitor.polling and time.monotonic() < deadline:
        seen.add(monitor.bar.value)
        time.sleep(0.02)
    run = handle.wait(timeout=60)
    assert not monitor.polling  # it stopped by itself when the run ended
    assert run.status == "completed"
    p = monitor.last
    assert p["status"] == "completed" and p["processed_count"] == 8
    assert (monitor.bar.value, monitor.bar.max, monitor.bar.bar_style) == (8, 8, "success")
    assert "completed" in monitor.label.value and "8/8 images" in monitor.label.value
    assert max(seen) <= 8
    # by id, in a fresh widget (what another notebook would do); no thread for an ended run
    by_id = RunMonitor(run.run_id, store="store", start=False)
    assert by_id.refresh()["status"] == "completed" and not by_id.polling


@pytest.mark.slow
def test_run_monitor_follows_a_run_in_another_process(tmp_path, tiny_model):
    folder = tmp_path / "survey"
    write_images(folder, 3, seed=21)
    args = [str(folder), "--model", str(tiny_model), "--imgsz", str(IMGSZ), "--store", "store"]
    run = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store="store", quiet=True)
    monitor = RunMonitor(run, interval=0.1, start=False)
    assert monitor.refresh()["processed_count"] == 3
    write_images(folder, 4, seed=22, start=3)  # new images: the same run grows to 7
    env = {**os.environ, "MUSSELTOOLS_COMMIT_EVERY": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "musseltools", "run", *args, "--quiet"], env=env)
    try:
        statuses = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            p = monitor.refresh()
            statuses.append((p["status"], p["processed_count"]))
            if proc.poll() is not None and p["status"] == "completed" and p["processed_count"] == 7:
                break
            time.sleep(0.05)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert statuses[-1] == ("completed", 7)
    assert monitor.bar.value == 7 and monitor.bar.max == 7
    assert any(s == "running" for s, _ in statuses)  # it saw the other process working


def test_tuner_with_truth_shows_metrics_live(survey, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    for i, p in enumerate(sorted(survey.per_image()["path"])):
        if "broken" not in p:
            (labels / (p.rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".txt")).write_text(
                f"0 0.5 0.5 0.3 0.3\n1 0.2 0.3 0.2 0.25\n0 0.7 0.{i + 1} 0.2 0.1\n")
    ev = mt.evaluate(survey, labels)
    tuner = ThresholdTuner(survey, truth=labels)
    for t in ({"live": 0.3, "dead": 0.6}, {"live": 0.9, "dead": 0.1}):
        for name, v in t.items():
            tuner.sliders[name].value = v
        expected = ev.at(t)
        assert tuner.metrics == expected
        shown = tuner.metrics_html.value
        for c, m in expected.items():
            assert f"<td>{c}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>" in shown
            assert f"<td>{m['count_mae']:.2f}</td>" in shown
    assert ThresholdTuner(survey, truth=ev).metrics == ev.at(survey.thresholds)


def test_tuner_starts_on_an_image_with_results(survey):
    tuner = ThresholdTuner(survey)
    assert not isinstance(tuner.table.loc[tuner.picker.value, "error"], str)
    assert bytes(tuner.image.value).startswith(JPEG)


def test_one_monitor_follows_its_run_through_a_resume(tmp_path, tiny_model, capsys):
    """Issue 22, point 7: a monitor made before a resume follows the resumed call to its end, counting the
    run's images (with those done before this call) and its counts; a background call prints no bar into
    the running cell; the handle's repr says the handle's state, not the last call's status."""
    folder = tmp_path / "grow"
    write_images(folder, 4, seed=31)
    run = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store="store", quiet=True, commit_every=2)
    monitor = RunMonitor(run, interval=0.05)
    assert not monitor.polling and "4/4 images" in monitor.label.value
    write_images(folder, 4, seed=32, start=4)  # the run grows to 8: a resume infers the 4 new images
    capsys.readouterr()
    handle = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store="store", commit_every=2, background=True)
    assert "cancelled" not in repr(handle) and "completed" not in repr(handle)  # this call's state
    assert monitor.polling  # the old monitor woke up for the new call
    deadline = time.monotonic() + 120
    while monitor.polling and time.monotonic() < deadline:
        time.sleep(0.02)
    handle.wait(timeout=60)
    assert not monitor.polling
    counts = handle.run.counts()
    assert (monitor.bar.value, monitor.bar.max, monitor.bar.bar_style) == (8, 8, "success")
    text = monitor.label.value
    assert "completed" in text and "8/8 images (4 before this call)" in text, text
    assert f"live {counts['live']}, dead {counts['dead']}" in text, text
    assert repr(handle).startswith(f"<RunHandle {run.run_id} done (completed): 8/8 images")
    assert "img" not in capsys.readouterr().err  # no tqdm bar from the background thread
    # a call in the foreground shows one bar over the run's images: 8 done before, 10 in all
    write_images(folder, 2, seed=33, start=8)
    mt.run(folder, model=tiny_model, imgsz=IMGSZ, store="store", commit_every=2)
    bar = capsys.readouterr().err
    assert "10/10" in bar and "/2 " not in bar and " 8/10" in bar, bar


def test_confidence_labels_are_drawn_at_the_size_shown_and_never_overlap(survey):
    """Issue 22, point 6: the preview is drawn at the size the page shows it (its CSS width is the JPEG's
    width), each confidence label is at least 10 px tall there, no two overlap, and the note under the
    image says how many were left out (the labels drawn plus those left out are the boxes in view)."""
    import re

    import cv2
    import numpy as np

    tuner = ThresholdTuner(survey, display_side=480)
    for s in tuner.sliders.values():
        s.value = 0.01  # every stored box: crowded, so some labels must be left out
    tuner.nav.confidences.value = True
    shown = cv2.imdecode(np.frombuffer(bytes(tuner.image.value), np.uint8), cv2.IMREAD_COLOR)
    assert max(shown.shape[:2]) == 480 and tuner.image.layout.width == f"{shown.shape[1]}px"
    note = tuner.labels_html.value
    boxes = json.loads(re.search(r"data-boxes='([^']*)'", note).group(1))
    height = int(re.search(r"data-text-height='(\d+)'", note).group(1))
    assert boxes and height >= 10, note
    assert all(not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
               for i, a in enumerate(boxes) for b in boxes[i + 1:]), boxes
    assert all(0 <= x0 < x1 <= shown.shape[1] and 0 <= y0 < y1 <= shown.shape[0] for x0, y0, x1, y1 in boxes)
    in_view = sum(tuner.image_counts.values())
    m = re.search(r"confidence shown on (\d+) of (\d+) boxes(; (\d+) left out)?", note)
    assert (int(m.group(1)), int(m.group(2))) == (len(boxes), in_view), note
    assert len(boxes) < in_view and "zoom in" in note  # crowded at 0.01: the rest are left out, not piled up
    colours = [np.array(plots.colour_of(c, plots.class_colours(tuner.categories))[::-1]) for c in tuner.categories]
    for x0, y0, x1, y1 in boxes:  # a plate in a class colour is drawn where each label is said to be (BGR, JPEG)
        plate = shown[y0 + 1:y1 - 1, x0 + 1:x1 - 1].astype(int)
        assert max((np.abs(plate - c).max(axis=2) < 40).mean() for c in colours) > 0.4
    tuner.nav.confidences.value = False
    assert tuner.labels_html.value == ""


def _slow_local_executor(monkeypatch, seconds: float) -> None:
    """Test-only: the local executor sleeps after each image, so a run can be cancelled part way. (Undo
    with a ``monkeypatch.context()``: ``monkeypatch.undo()`` would also undo the test's chdir.)"""
    import musseltools.executors.local as local_executor

    original = local_executor.LocalExecutor.process

    def slow_process(self, task, units, *, cancel, on_progress=lambda n: None):
        def slow(n):
            on_progress(n)
            time.sleep(seconds * n)
        return original(self, task, units, cancel=cancel, on_progress=slow)

    monkeypatch.setattr(local_executor.LocalExecutor, "process", slow_process)


def _wait(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_a_handle_shows_its_monitor_which_follows_a_cancel_and_the_resume(tmp_path, tiny_model, monkeypatch):
    """Issue 22, point 7: a background handle shown in a notebook shows one progress display of its own
    (the same widget each time it is shown); cancelled, the display says so; the run resumed by a new
    call, that same display follows it to the end, counting the images done before the resume."""
    import IPython.display

    folder = tmp_path / "cancel"
    write_images(folder, 8, seed=41)
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    with monkeypatch.context() as slow:
        _slow_local_executor(slow, 0.3)
        handle = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store="store", quiet=True, commit_every=2,
                        batch_size=1, background=True)
        handle._ipython_display_()  # what the cell does with `handle` as its last line
        handle._ipython_display_()
        monitor = shown[0]
        assert isinstance(monitor, RunMonitor) and shown == [monitor, monitor] and monitor.handle is handle
        monitor.interval = 0.05
        _wait(lambda: (handle.run.meta.get("processed_count") or 0) >= 2)
        handle.cancel()
        handle.wait(timeout=60)
    _wait(lambda: not monitor.polling)
    saved = handle.run.meta["processed_count"]
    assert handle.run.status == "cancelled" and 2 <= saved < 8
    assert "cancelled" in monitor.label.value and monitor.bar.bar_style == "warning", monitor.label.value
    resumed = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store="store", quiet=True, commit_every=2,
                     background=True)
    assert resumed is not handle
    resumed.wait(timeout=120)
    _wait(lambda: not monitor.polling)
    text = monitor.label.value
    assert "completed" in text and f"8/8 images ({saved} before this call)" in text, text
    assert (monitor.bar.value, monitor.bar.max, monitor.bar.bar_style) == (8, 8, "success")


def test_a_resume_right_after_a_cancel_resumes(tmp_path, tiny_model, monkeypatch):
    """Cells run back to back (Run All): ``handle.cancel()`` then ``mt.run(..., background=True)`` at once
    gets a new call that resumes the run once the cancelled one has stopped, not the cancelled handle."""
    folder = tmp_path / "again"
    write_images(folder, 8, seed=43)
    with monkeypatch.context() as slow:
        _slow_local_executor(slow, 0.3)
        handle = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store="store", quiet=True, commit_every=2,
                        batch_size=1, background=True)
        _wait(lambda: (handle.run.meta.get("processed_count") or 0) >= 2)
        handle.cancel()
        resumed = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store="store", quiet=True, commit_every=2,
                         background=True)
        assert resumed is not handle and handle.done()
    run = resumed.wait(timeout=120)
    assert run.status == "completed" and run.meta["processed_count"] == 8
    assert 2 <= run.meta["processed_before_call"] < 8


def test_the_status_line_names_the_images_inferred_and_those_saved():
    """The bar shows images inferred; the line says the same number, then how many of them are saved."""
    from musseltools.jupyter.monitor import progress_text

    done, total, text = progress_text("r1", {"status": "running", "total_images": 9, "processed_count": 6,
                                             "inferred_count": 7, "processed_before_call": 5})
    assert (done, total) == (7, 9)
    assert "7/9 images, 6 of them saved (5 before this call)" in text, text
    done, _, text = progress_text("r1", {"status": "cancelled", "total_images": 9, "processed_count": 6,
                                         "inferred_count": 7})
    assert done == 6 and "6/9 images" in text and "saved" not in text, text  # ended: what is kept


def test_a_resume_cell_that_shows_its_handle_takes_over_the_runs_one_live_display(tmp_path, tiny_model, monkeypatch):
    """Issue 22, point 7: one progress display per run. A resume in a later cell that shows its own handle
    gets the live display; the first cell's display stops following and says that a later one does."""
    import IPython.display

    folder = tmp_path / "two-cells"
    write_images(folder, 6, seed=43)
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    kw = {"model": tiny_model, "imgsz": IMGSZ, "store": "store", "quiet": True, "commit_every": 2, "batch_size": 1}
    with monkeypatch.context() as slow:
        _slow_local_executor(slow, 0.3)
        first = mt.run(folder, **kw, background=True)
        first._ipython_display_()
        _wait(lambda: (first.run.meta.get("processed_count") or 0) >= 2)
        first.cancel()
        first.wait(timeout=60)
    old = shown[0]
    _wait(lambda: not old.polling)
    cancelled_text = old.label.value
    resumed = mt.run(folder, **kw, background=True)
    resumed._ipython_display_()  # the resume cell's last line
    new = shown[1]
    assert new is not old and old.handed_over and not old.polling
    assert "cancelled" in old.label.value and "a newer display of this run" in old.label.value
    resumed.wait(timeout=120)
    _wait(lambda: not new.polling)
    assert "completed" in new.label.value and "6/6 images" in new.label.value, new.label.value
    assert old.label.value.startswith(cancelled_text)  # the old display never came back to life
    assert old.bar.bar_style == "warning"
