"""The threshold tuning notebook in a real JupyterLab, driven by headless Chromium (Playwright).

Starts JupyterLab from this virtual environment on 127.0.0.1 with a token, opens a copy of
``threshold_tuning.ipynb`` whose parameters point at a tiny generated survey, runs all cells, moves a
slider with the keyboard and checks that the displayed survey counts change. The screenshot is kept
as ``test-artifacts/threshold_tuner.png``. Fails (does not skip) when Chromium is missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from conftest import IMGSZ, write_images

import musseltools as mt

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ARTIFACT = ROOT / "test-artifacts" / "threshold_tuner.png"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"JupyterLab did not answer at {url} in {timeout} s:\n{log.read_text()[-3000:]}")


def _parameterised_copy(folder: Path, setup: str | None = None, **params) -> Path:
    """The notebook with ``params`` set, and ``setup`` as a code cell after the parameters."""
    nb = nbformat.read(ROOT / "notebooks" / "threshold_tuning.ipynb", as_version=4)
    index, cell = next((i, c) for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    lines = []
    for line in cell.source.splitlines():
        name = line.split("=", 1)[0].strip()
        lines.append(f"{name} = {params[name]!r}" if "=" in line and name in params else line)
    cell.source = "\n".join(lines)
    if setup:
        nb.cells.insert(index + 1, nbformat.v4.new_code_cell(setup))
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "threshold_tuning.ipynb"
    nbformat.write(nb, out)
    return out


#: Test-only: slow the local executor down after each image, so the browser can watch a run progress.
SLOW = """import time
import musseltools.executors.local as local_executor
original = local_executor.LocalExecutor.process
def slow_process(self, task, units, *, cancel, on_progress=lambda n: None):
    def slow(n):
        on_progress(n)
        time.sleep(0.8 * n)
    return original(self, task, units, cancel=cancel, on_progress=slow)
local_executor.LocalExecutor.process = slow_process"""

#: Collects every text the RunMonitor's status line shows, as the page renders it.
WATCH_STATUS = """() => { window.mtStatus = []; setInterval(() => {
    for (const e of document.querySelectorAll('.mt-run-status')) {
        const t = e.innerText; if (window.mtStatus[window.mtStatus.length - 1] !== t) window.mtStatus.push(t); }
}, 100); }"""


def _accept_kernel_dialog(page) -> bool:
    accept = page.locator(".jp-Dialog .jp-mod-accept")
    if accept.count() and accept.first.is_visible():
        accept.first.click(force=True)
        return True
    return False


def _wait_for_idle_kernel(page, timeout: float) -> None:
    """Wait until the notebook's kernel is connected and idle (accepting a "Select Kernel" dialog)."""
    deadline = time.monotonic() + timeout
    idle = page.get_by_text(re.compile(r"\|\s*Idle"))
    while time.monotonic() < deadline:
        _accept_kernel_dialog(page)
        if idle.count():
            return
        page.wait_for_timeout(500)
    raise AssertionError(f"the kernel was not idle after {timeout} s")


def _wait_for_tuner(page, timeout: float) -> None:
    """Wait for the tuner's counts; fail early with the traceback when a cell raised."""
    deadline = time.monotonic() + timeout
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
    while time.monotonic() < deadline:
        if page.locator(".mt-survey-counts").count():
            return
        if errors.count():
            raise AssertionError(f"a notebook cell failed:\n{errors.first.inner_text()}")
        page.wait_for_timeout(1000)
    raise AssertionError(f"the ThresholdTuner did not appear in {timeout} s")


def _survey_text(page) -> str:
    return page.locator(".mt-survey-counts").first.inner_text()


def _check_monitor(page, total: int) -> None:
    """Point 3 of issue 15: the monitor counted images before their unit was saved, and said what it did."""
    page.wait_for_function(f"() => window.mtStatus.some(t => t.includes('completed') && t.includes('{total}/{total}'))",
                           timeout=120_000)
    texts = page.evaluate("() => window.mtStatus")
    partial = [t for t in texts if re.search(r"running — [1-9]\d*/\d+ images, \d+ of them saved", t)]
    assert partial, texts
    assert any("loading model" in t or "inferring" in t for t in texts), texts


def _check_browser(page, before_name: str) -> None:
    """Point 7: next/previous with counts, position, zoom and confidences change the image."""
    image = page.locator(".mt-quadrat-image").first
    src0 = image.get_attribute("src")
    position = page.locator(".mt-position").first
    page.locator(".mt-next").first.click(force=True)
    page.wait_for_function("() => document.querySelector('.mt-position')?.innerText.includes('image 2 of')",
                           timeout=30_000)
    assert re.search(r"live \d+, dead \d+", page.locator(".mt-next").first.inner_text()), "counts on next"
    page.wait_for_function("(s) => document.querySelector('.mt-quadrat-image')?.src !== s", arg=src0, timeout=30_000)
    src1 = image.get_attribute("src")
    page.locator(".mt-quadrat-nav button", has_text="4x").first.click(force=True)
    page.wait_for_function("(s) => document.querySelector('.mt-quadrat-image')?.src !== s", arg=src1, timeout=30_000)
    src2 = image.get_attribute("src")
    page.locator(".mt-quadrat-nav input[type=checkbox]").first.click(force=True)
    page.wait_for_function("(s) => document.querySelector('.mt-quadrat-image')?.src !== s", arg=src2, timeout=30_000)
    assert "image 2 of" in position.inner_text() and before_name
    _check_labels(page)


def _check_labels(page) -> None:
    """Point 6: on screen, each confidence label is at least 10 px tall and none overlaps another: the page's
    image size against the JPEG's, and the labels' plates and digit height in the JPEG (the note's data)."""
    page.wait_for_function("() => document.querySelector('.mt-labels')", timeout=30_000)
    m = page.evaluate("""() => { const img = document.querySelector('.mt-quadrat-image');
        const r = img.getBoundingClientRect(); const note = document.querySelector('.mt-labels');
        return {w: r.width, h: r.height, nw: img.naturalWidth, nh: img.naturalHeight, text: note.innerText,
                dw: +note.dataset.width, th: +note.dataset.textHeight, boxes: JSON.parse(note.dataset.boxes)}; }""")
    assert m["nw"] == m["dw"] and m["nw"] > 0, m  # the note describes the image shown
    k = m["w"] / m["nw"]
    assert abs(m["h"] / m["nh"] - k) < 0.01, m  # not squeezed
    assert m["boxes"] and m["th"] * k >= 10, m  # readable: at least 10 px tall on screen
    boxes = [[v * k for v in b] for b in m["boxes"]]
    assert all(not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
               for i, a in enumerate(boxes) for b in boxes[i + 1:]), m
    assert f"confidence shown on {len(boxes)} of" in m["text"], m


def _check_curve_whole(page) -> None:
    """Point 9: at 1280x800 the curve is shown whole (not cropped), so its "1.0" tick stays."""
    box = page.evaluate("""() => { const img = document.querySelector('.mt-curve');
        const r = img.getBoundingClientRect(); const out = img.closest('.jp-OutputArea-output').getBoundingClientRect();
        return {w: r.width, h: r.height, nw: img.naturalWidth, nh: img.naturalHeight, right: r.right,
                outRight: out.right, vw: window.innerWidth}; }""")
    assert box["nw"] > 0 and box["w"] > 200, box
    assert abs(box["w"] / box["h"] - box["nw"] / box["nh"]) < 0.03, box  # not cropped nor squeezed
    assert box["right"] <= min(box["outRight"], box["vw"]) + 1, box


def test_threshold_tuner_in_jupyterlab(tmp_path, tiny_model):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing — install Debian's chromium (make dev does)"
    from playwright.sync_api import sync_playwright

    root = tmp_path / "lab"  # a project: pyproject.toml, data/store, notebooks/
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'survey'\n")
    folder = root / "images"
    write_images(folder, 5, seed=17)
    store = root / "data" / "store"
    # weights with a card, as the demo's: the notebook leaves every setting to it, as `make demo` does
    weights = root / "models" / "tiny.pt"
    weights.parent.mkdir()
    shutil.copy(tiny_model, weights)
    weights.with_suffix(".yaml").write_text("recommended: {tile: auto, iou: 0.5, threshold: 0.5}\n")
    run = mt.run(folder, model=weights, imgsz=IMGSZ, store=store, quiet=True, batch_size=1)  # from the root
    write_images(folder, 4, seed=18, start=5)  # the notebook resumes the same run with 4 more images
    _parameterised_copy(root / "notebooks", setup=SLOW, images="../images", model=str(weights), imgsz=IMGSZ,
                        background=True)  # store and settings left at their defaults

    ARTIFACT.with_name("threshold_tuner-failure.png").unlink(missing_ok=True)
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "MUSSELTOOLS_STORE"}
    env.update({"JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"), "MUSSELTOOLS_COMMIT_EVERY": "100",
                "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"), "MUSSELTOOLS_BATCH_SIZE": "1"})
    log = tmp_path / "jupyterlab.log"
    jupyter = Path(sys.executable).with_name("jupyter")
    with open(log, "wb") as log_file:
        server = subprocess.Popen(
            [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
             "--LabApp.news_url=", "--ServerApp.open_browser=False"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={token}", server, log)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(f"{base}/lab/tree/notebooks/threshold_tuning.ipynb?token={token}", timeout=120_000)
                page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
                _wait_for_idle_kernel(page, timeout=180)
                page.evaluate(WATCH_STATUS)
                page.get_by_role("menuitem", name="Run").first.click(force=True)
                page.get_by_role("menuitem", name="Run All Cells").first.click(force=True)

                _check_monitor(page, total=9)
                _wait_for_tuner(page, timeout=240)
                page.wait_for_function(
                    "() => document.querySelector('.mt-survey-counts')?.innerText.includes('live')", timeout=60_000
                )
                source = page.locator(".mt-tuner-source").first.inner_text()
                assert run.run_id in source and str(store.resolve()) in source, source  # point 2: the root's store
                assert "tile auto" in source and "iou 0.5" in source, source
                run = mt.open_run(run.run_id, store=store)
                assert run.status == "completed" and run.meta["total_images"] == 9
                before = _survey_text(page)
                assert f"live {run.counts(0.5)['live']}" in before, before
                page.locator(".mt-curve").first.scroll_into_view_if_needed()
                _check_curve_whole(page)
                page.locator(".mt-curve").first.screenshot(path=str(ARTIFACT.with_name("curve-1280x800.png")))
                _check_browser(page, before)

                handle = page.locator(".mt-threshold-tuner .widget-slider .noUi-handle").first
                handle.scroll_into_view_if_needed()
                handle.focus()
                for _ in range(15):
                    page.keyboard.press("ArrowRight")
                readout = page.locator(".mt-threshold-tuner .widget-readout").first
                deadline = time.monotonic() + 30
                while True:  # the kernel answers each key press; wait until it has caught up with the last
                    t = float(readout.inner_text())
                    after = _survey_text(page)
                    live_after = int(re.search(r"live (\d+)", after).group(1))
                    if live_after == run.counts({"live": t, "dead": 0.5})["live"] or time.monotonic() > deadline:
                        break
                    page.wait_for_timeout(300)
                assert t > 0.5, t
                assert after != before
                assert live_after == run.counts({"live": t, "dead": 0.5})["live"], (after, t)
                assert live_after < run.counts(0.5)["live"]

                news = page.locator(".jp-Notification-Toast-Close, .Toastify__close-button")  # "Jupyter news" toast
                for close in news.all():
                    close.click(force=True)
                page.locator(".mt-threshold-tuner").first.scroll_into_view_if_needed()
                page.wait_for_timeout(500)
                ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACT), full_page=False)
            except BaseException:
                ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACT.with_name("threshold_tuner-failure.png")), full_page=True)
                raise
            finally:
                browser.close()
    finally:
        _stop_server(server)


def _stop_server(server: subprocess.Popen) -> None:
    """Stop a server started in its own session, and everything it started (kernels)."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)


@contextlib.contextmanager
def _notebook_page(base: str, token: str, notebook: str, viewport: dict, failure: Path):
    """A headless Chromium page showing ``notebook`` in the JupyterLab at ``base``, its kernel idle; on a
    failure inside the block a full-page screenshot is saved to ``failure``; the browser is closed after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport=viewport)
        try:
            page.goto(f"{base}/lab/tree/{notebook}?token={token}", timeout=120_000)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            _wait_for_idle_kernel(page, timeout=180)
            yield page
        except BaseException:
            failure.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(failure), full_page=True)
            raise
        finally:
            browser.close()


@contextlib.contextmanager
def _jupyterlab(root: Path, tmp_path: Path):
    """JupyterLab serving ``root`` on a free port with a token: yields its base URL and the token."""
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "MUSSELTOOLS_STORE"}
    env.update({"JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
                "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"), "MUSSELTOOLS_BATCH_SIZE": "1"})
    log = tmp_path / "jupyterlab.log"
    with open(log, "wb") as log_file:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--ip=127.0.0.1",
             f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
             "--LabApp.news_url=", "--ServerApp.open_browser=False"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={token}", server, log)
        yield base, token
    finally:
        _stop_server(server)


def test_progress_display_of_a_background_run_through_cancel_and_resume(tmp_path, tiny_model):
    """Point 7 in a real notebook: the cell that starts a background run shows one progress display (the
    handle's own); a later cell cancels the run and the display says so; a third resumes it and the same
    display, in the first cell's output area, counts the run's images to the end, with those done before
    the resume. No other cell shows a progress bar."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing — install Debian's chromium (make dev does)"

    root = tmp_path / "lab"
    write_images(root / "images", 6, seed=19)
    kw = f"model={str(tiny_model)!r}, imgsz={IMGSZ}, store='store', commit_every=2, batch_size=1"
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [
        nbformat.v4.new_code_cell(SLOW + "\nimport musseltools as mt"),
        nbformat.v4.new_code_cell(f"handle = mt.run('images', {kw}, background=True)\nhandle"),
        nbformat.v4.new_code_cell("while (handle.run.meta.get('processed_count') or 0) < 2:\n    time.sleep(0.1)\n"
                                  "handle.cancel()\nprint('cancel asked')"),
        nbformat.v4.new_code_cell("time.sleep(3)  # the display shows the cancel\n"
                                  f"resumed = mt.run('images', {kw}, background=True)\nresumed.wait()\n"
                                  "print('resumed:', resumed.run.status, resumed.run.meta['processed_before_call'])"),
    ]
    nbformat.write(nb, root / "progress.ipynb")
    artifact = ARTIFACT.with_name("progress-cancel-resume.png")
    with _jupyterlab(root, tmp_path) as (base, token), _notebook_page(
            base, token, "progress.ipynb", {"width": 1280, "height": 800},
            artifact.with_name("progress-cancel-resume-failure.png")) as page:
        page.evaluate(WATCH_STATUS)
        page.get_by_role("menuitem", name="Run").first.click(force=True)
        page.get_by_role("menuitem", name="Run All Cells").first.click(force=True)
        page.wait_for_function("() => [...document.querySelectorAll('.jp-OutputArea-output')]"
                               ".some(e => e.innerText.includes('resumed:'))", timeout=240_000)
        page.wait_for_function("() => window.mtStatus.some(t => t.includes('completed'))", timeout=60_000)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
        assert not errors.count(), errors.first.inner_text()
        cells = page.locator(".jp-NotebookPanel .jp-CodeCell")
        monitors = page.locator(".mt-run-monitor")
        assert monitors.count() == 1 and cells.nth(1).locator(".mt-run-monitor").count() == 1
        before = int(re.search(r"resumed: completed (\d+)", cells.nth(3).inner_text()).group(1))
        texts = page.evaluate("() => window.mtStatus")
        assert any("cancelled" in t for t in texts), texts
        first_cancel = next(i for i, t in enumerate(texts) if "cancelled" in t)
        assert any("running" in t for t in texts[first_cancel:]), texts  # it came back to life
        final = monitors.first.inner_text()
        assert "completed" in final and f"6/6 images ({before} before this call)" in final, final
        assert 2 <= before < 6, final
        for k in (0, 2, 3):  # no progress bar in the other cells (one display per run)
            assert "img" not in cells.nth(k).locator(".jp-OutputArea").inner_text(), cells.nth(k).inner_text()
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        monitors.first.screenshot(path=str(artifact))
