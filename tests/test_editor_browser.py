"""The correction editor in a real JupyterLab, driven by headless Chromium (Playwright).

A notebook opens the editor on a small survey of demo images counted by the demo detector, a 4000x3000
quadrat first: it opens zoomed so that the median box is at least 20 px on screen, and zooms and pans
with keys. At that zoom the test clicks a box (live -> dead), deletes another with the ``d`` key, draws a box with the mouse, marks the
image verified with ``v`` and goes to the next image with the right arrow. After each, the stored
corrections (read from the store by this process) and the counts the editor shows have changed with it,
and JupyterLab's own shortcuts did not fire (the notebook keeps its cells). The screenshot is kept as
``test-artifacts/correction_editor.png``. Fails (does not skip) when Chromium is missing.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from test_browser import ARGS, CHROMIUM, _free_port, _stop_server, _wait_for_idle_kernel, _wait_for_server

import musseltools as mt
from musseltools.store.corrections_log import read_corrections

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "test-artifacts" / "correction_editor.png"
DEMO = ROOT / "data" / "demo" / "images"
MODEL = ROOT / "data" / "models" / "mussel-demo.pt"

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: JavaScript: a point (page pixels) where the top element is the given box, or the image itself
FIND_POINT = """([kind, id]) => {
  const svg = document.querySelector('.mt-correction-editor svg.mt-editor-svg');
  const r = (kind === 'box' ? svg.querySelector(`rect.mt-box[data-id="${id}"]`) : svg).getBoundingClientRect();
  for (let fy = 0.5; fy < 0.95; fy += 0.07) for (let fx = 0.5; fx < 0.95; fx += 0.07)
    for (const [x, y] of [[r.left + r.width * fx, r.top + r.height * fy], [r.left + r.width * (1 - fx), r.top + r.height * (1 - fy)]]) {
      const el = document.elementFromPoint(x, y);
      if (kind === 'box' && el && el.getAttribute('data-id') === id) return [x, y];
      if (kind === 'image' && el && el.classList.contains('mt-editor-image')) return [x, y];
    }
  return null;
}"""


def _notebook(root: Path, run: mt.Run) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import musseltools as mt\nfrom musseltools.jupyter.editor import CorrectionEditor\n"
            f"editor = CorrectionEditor(mt.open_run({run.run_id!r}, store={str(run.store.root)!r}), order='path')\n"
            "editor"),
        nbformat.v4.new_code_cell("1 + 1"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = root / "editor.ipynb"
    nbformat.write(nb, path)
    return path


def _counts(page) -> dict[str, int]:
    text = page.locator(".mt-editor-survey-counts").first.inner_text()
    return {k: int(v) for k, v in re.findall(r"(live|dead) (\d+)", text)}


def _wait_for(check, timeout: float = 30.0, what: str = "") -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - t0


def _point(page, kind: str, box_id: str = "") -> tuple[float, float]:
    pt = page.evaluate(FIND_POINT, [kind, box_id])
    assert pt is not None, f"no visible point on {kind} {box_id}"
    return pt[0], pt[1]


#: JavaScript: the zoom, the viewBox, and the median of the boxes' smaller side on screen (pixels)
SHOWN = """() => {
  const svg = document.querySelector('.mt-correction-editor svg.mt-editor-svg');
  const sides = [...svg.querySelectorAll('rect.mt-box')].map((r) => {
    const b = r.getBoundingClientRect(); return Math.min(b.width, b.height); }).sort((a, b) => a - b);
  return {zoom: Number(svg.getAttribute('data-zoom')), viewBox: svg.getAttribute('viewBox').split(' ').map(Number),
          median: sides[Math.floor(sides.length / 2)], n: sides.length};
}"""


def _zoom_and_pan(page, run: mt.Run) -> None:
    """Issue 22, point 5: a 4000x3000 quadrat opens zoomed so its median box is at least 20 px on screen;
    +, -, 0 and Shift+arrows zoom and pan the view only (nothing is saved)."""
    first = run.per_image().sort_values("path").iloc[0]
    assert (first["width"], first["height"]) == (4000, 3000)
    shown = page.evaluate(SHOWN)
    print(f"editor: quadrat of {shown['n']} boxes opens at zoom {shown['zoom']}x, median box {shown['median']:.1f} px")
    assert shown["n"] >= 200 and shown["zoom"] > 1 and shown["median"] >= 20, shown
    assert shown["viewBox"][:2] == [0, 0] and shown["viewBox"][2] == pytest.approx(4000 / shown["zoom"])
    page.mouse.move(*_point(page, "image"))
    page.keyboard.press("0")  # the whole image: the boxes the researcher could not use
    assert page.evaluate(SHOWN)["zoom"] == 1 and page.evaluate(SHOWN)["median"] < 20
    page.keyboard.press("+")
    page.keyboard.press("+")
    assert page.evaluate(SHOWN)["zoom"] == 4
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Shift+ArrowDown")
    x, y, w, _h = page.evaluate(SHOWN)["viewBox"]
    assert x > 0 and y > 0 and w == pytest.approx(1000), (x, y, w)
    page.keyboard.press("-")
    assert page.evaluate(SHOWN)["zoom"] == 2
    assert "image 1 of" in page.locator(".mt-editor-title").first.inner_text()  # Shift+arrow did not move on
    assert read_corrections(run.store).empty  # the view only: nothing saved
    page.keyboard.press("+")
    page.keyboard.press("+")  # the edits below are made at 8x


def _edit_in_the_browser(page, run: mt.Run) -> list[float]:
    """Click, delete, draw, verify and move on; returns the seconds each edit took to show."""
    seconds = []
    _zoom_and_pan(page, run)
    boxes = page.locator(".mt-correction-editor rect.mt-box")
    before = _counts(page)
    assert before == run.counts(), (before, run.counts())
    live_ids = [b.get_attribute("data-id") for b in boxes.all() if b.get_attribute("data-label") == "live"]
    target = next(i for i in live_ids if page.evaluate(FIND_POINT, ["box", i]) is not None)
    page.mouse.click(*_point(page, "box", target))  # live -> dead
    seconds.append(_wait_for(lambda: _counts(page) != before, what="the counts after a click"))
    saved = read_corrections(run.store)
    assert saved[["kind", "detection_id", "class_name"]].values.tolist() == [["reclassify", target, "dead"]]
    assert _counts(page) == {"live": before["live"] - 1, "dead": before["dead"] + 1} == run.counts()

    now = _counts(page)
    other = next(b.get_attribute("data-id") for b in boxes.all()
                 if b.get_attribute("data-id") != target and page.evaluate(FIND_POINT, ["box", b.get_attribute("data-id")]))
    label = page.locator(f'rect.mt-box[data-id="{other}"]').get_attribute("data-label")
    page.mouse.move(*_point(page, "box", other))
    page.keyboard.press("d")  # delete the box under the pointer
    seconds.append(_wait_for(lambda: _counts(page) != now, what="the counts after the d key"))
    assert read_corrections(run.store).iloc[-1][["kind", "detection_id"]].tolist() == ["delete", other]
    assert _counts(page)[label] == now[label] - 1 and _counts(page) == run.counts()

    now = _counts(page)
    x, y = _point(page, "image")
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, 6):
        page.mouse.move(x + 8 * k, y + 6 * k)
    page.mouse.up()  # a new box of the chosen category (live)
    seconds.append(_wait_for(lambda: _counts(page) != now, what="the counts after drawing a box"))
    last = read_corrections(run.store).iloc[-1]
    assert last["kind"] == "add" and last["class_name"] == "live" and last["x2"] - last["x1"] > 10
    assert _counts(page) == {**now, "live": now["live"] + 1} == run.counts()

    title = page.locator(".mt-editor-title").first
    page.keyboard.press("v")
    seconds.append(_wait_for(lambda: "verified" in title.inner_text(), what="the verified mark"))
    assert read_corrections(run.store).iloc[-1]["kind"] == "verify"
    assert run.verified_images()["path"].tolist() == [sorted(run.per_image()["path"])[0]]
    page.keyboard.press("ArrowRight")
    seconds.append(_wait_for(lambda: "image 2 of" in title.inner_text(), what="the next image"))
    # the next image has another size: the picture and the boxes share its pixel coordinates, and the
    # view is chosen again for it (from its top-left corner)
    second = run.per_image().sort_values("path").iloc[1]
    page.wait_for_function(f"() => {{ const v = document.querySelector('.mt-editor-svg').getAttribute('viewBox')"
                           f".split(' ').map(Number); const z = Number(document.querySelector('.mt-editor-svg')"
                           f".getAttribute('data-zoom')); return v[0] === 0 && v[1] === 0 && "
                           f"Math.abs(v[2] * z - {second['width']}) < 1e-6 && Math.abs(v[3] * z - {second['height']}) < 1e-6; }}",
                           timeout=10_000)
    assert page.evaluate(SHOWN)["median"] >= 20
    size = page.evaluate("() => { const i = document.querySelector('.mt-editor-image'); "
                         "return [i.getAttribute('width'), i.getAttribute('height')]; }")
    assert size == [str(second["width"]), str(second["height"])]
    return seconds


def test_correction_editor_in_jupyterlab(tmp_path):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing — install Debian's chromium (make dev does)"
    from playwright.sync_api import sync_playwright

    root = tmp_path / "lab"
    folder = root / "images"
    folder.mkdir(parents=True)
    for name in ("quadrat_0037.jpg", "survey_0000.jpg", "survey_0001.jpg"):  # a 4000x3000 quadrat first
        shutil.copy(DEMO / name, folder / name)
    run = mt.run(folder, model=MODEL, store=root / "store", quiet=True, threshold=0.5, iou=0.5)
    _notebook(root, run)
    ARTIFACT.with_name("correction_editor-failure.png").unlink(missing_ok=True)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime")}
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
                page = browser.new_page(viewport={"width": 1400, "height": 1300})
                page.goto(f"{base}/lab/tree/editor.ipynb?token={token}", timeout=120_000)
                page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
                _wait_for_idle_kernel(page, timeout=180)
                page.get_by_role("menuitem", name="Run").first.click(force=True)
                page.get_by_role("menuitem", name="Run All Cells").first.click(force=True)
                errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
                deadline = time.monotonic() + 240
                while not page.locator(".mt-correction-editor rect.mt-box").count():
                    assert not errors.count(), errors.first.inner_text()
                    assert time.monotonic() < deadline, "the editor did not show boxes"
                    page.wait_for_timeout(500)
                page.locator(".mt-correction-editor").first.scroll_into_view_if_needed()
                page.wait_for_timeout(500)
                seconds = _edit_in_the_browser(page, run)
                print(f"editor: edit -> counts shown in the browser: {', '.join(f'{s * 1000:.0f}' for s in seconds)} ms")
                assert page.locator(".jp-NotebookPanel .jp-Cell").count() == 2  # JupyterLab's shortcuts kept out
                for close in page.locator(".jp-Notification-Toast-Close, .Toastify__close-button").all():
                    close.click(force=True)
                ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACT), full_page=False)
                page.mouse.move(*_point(page, "image"))  # the editor takes the keys while the pointer is on it
                page.keyboard.press("ArrowLeft")  # back to the quadrat, as the researcher sees it
                page.wait_for_timeout(1500)
                page.screenshot(path=str(ARTIFACT.with_name("correction_editor-quadrat.png")), full_page=False)
            except BaseException:
                ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACT.with_name("correction_editor-failure.png")), full_page=True)
                raise
            finally:
                browser.close()
    finally:
        _stop_server(server)
