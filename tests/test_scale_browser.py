"""The scale and length tools of the correction editor in a real JupyterLab (headless Chromium, Playwright).

In a notebook the test draws a scale line with the mouse (mode "scale"), types its length in mm and saves;
restarts the kernel and runs the notebook again: the new kernel's editor shows the scale, and ``run.scales()``
lists it (it is in the store, not in the kernel). Then it selects a box (mode "length"), drags an end of its
length line and drops it: the detection's length is the line's. The screenshot is kept as
``test-artifacts/scale_tool.png``. Fails (does not skip) when Chromium is missing.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
import pytest
from conftest import IMGSZ, write_images
from test_browser import CHROMIUM, _accept_kernel_dialog, _jupyterlab, _notebook_page
from test_editor_browser import FIND_POINT, _point

import musseltools as mt
from musseltools.store.scales_log import read_scales

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT = ROOT / "test-artifacts" / "scale_tool.png"

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: JavaScript: screen pixels per image pixel of the editor's picture (the SVG's own transform, at its zoom)
SCREEN_PER_IMAGE_PX = "() => document.querySelector('.mt-correction-editor svg.mt-editor-svg').getScreenCTM().a"


def _drag(page, x: float, y: float, dx: float, dy: float) -> None:
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, 6):
        page.mouse.move(x + dx * k / 5, y + dy * k / 5)
    page.mouse.up()


def _run_all(page, restart: bool = False) -> None:
    page.get_by_role("menuitem", name="Kernel" if restart else "Run").first.click(force=True)
    item = "Restart Kernel and Run All Cells…" if restart else "Run All Cells"
    page.get_by_role("menuitem", name=item).first.click(force=True)
    if restart:
        page.wait_for_selector(".jp-Dialog .jp-mod-accept", timeout=30_000)
        assert _accept_kernel_dialog(page)
    page.wait_for_selector(".mt-correction-editor rect.mt-box", timeout=240_000)


def _draw_and_save_a_scale(page, run: mt.Run) -> float:
    """Draw a 90-screen-pixel line in scale mode, type 30 mm and save; returns its length in image pixels."""
    page.locator(".mt-editor-mode button", has_text="scale").first.click()
    page.wait_for_function("() => document.querySelector('.mt-editor-scale-form').offsetParent !== null")
    per_px = page.evaluate(SCREEN_PER_IMAGE_PX)
    svg = page.locator(".mt-correction-editor svg.mt-editor-svg").bounding_box()  # a drag over boxes too
    _drag(page, svg["x"] + svg["width"] / 2 - 45, svg["y"] + min(svg["height"], 400) / 2, 90, 0)
    page.wait_for_function("() => document.querySelector('.mt-editor-status').innerText.includes('scale line of')")
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    page.locator(".mt-correction-editor").first.screenshot(path=str(ARTIFACT.with_name("scale_tool-line.png")))
    page.locator(".mt-editor-scale-mm input").fill("30")
    page.locator(".mt-editor-scale-save").click()
    page.wait_for_function("() => document.querySelector('.mt-editor-scale').innerText.includes('mm/px')",
                           timeout=30_000)
    saved = read_scales(run.store)
    assert len(saved) == 1 and saved["mm"].iat[0] == 30 and saved["author"].iat[0] == "browser"
    assert saved["px_length"].iat[0] == pytest.approx(90 / per_px, rel=0.03)  # image pixels, at the zoom shown
    return float(saved["px_length"].iat[0])


def _drag_a_length_handle(page, run: mt.Run, mm_per_px: float) -> None:
    page.locator(".mt-editor-mode button", has_text="length").first.click()
    boxes = page.locator(".mt-correction-editor rect.mt-box")
    target = next(b.get_attribute("data-id") for b in boxes.all()
                  if page.evaluate(FIND_POINT, ["box", b.get_attribute("data-id")]) is not None)
    page.mouse.click(*_point(page, "box", target))  # select it: its length line and two handles show
    handles = page.locator(f'circle.mt-length-handle[data-id="{target}"]')
    handles.first.wait_for(timeout=10_000)
    assert handles.count() == 2
    end = handles.nth(1).bounding_box()
    was = [float(handles.nth(1).get_attribute(k)) for k in ("cx", "cy")]  # image pixels
    per_px = page.evaluate(SCREEN_PER_IMAGE_PX)
    _drag(page, end["x"] + end["width"] / 2, end["y"] + end["height"] / 2, -25, -15)  # inward: never clamped at the edge
    page.wait_for_function("() => document.querySelector('.mt-editor-length').innerText.includes('(hand)')",
                           timeout=30_000)
    det = run.detections().set_index("detection_id").loc[target]
    line = run.corrections().iloc[-1]
    assert line["kind"] == "length" and line["detection_id"] == target
    moved = [line["x2"] - was[0], line["y2"] - was[1]]  # the dropped end moved with the mouse, in image pixels
    assert moved == pytest.approx([-25 / per_px, -15 / per_px], abs=0.2), moved
    expected = math.hypot(line["x2"] - line["x1"], line["y2"] - line["y1"])
    assert det["length_method"] == "hand" and det["length_px"] == pytest.approx(expected)
    assert det["length_mm"] == pytest.approx(expected * mm_per_px)
    shown = page.locator(".mt-editor-length").inner_text()
    assert f"{expected:.1f} px = {expected * mm_per_px:.1f} mm" in shown, shown
    assert f"length set to {expected:.1f} px" in page.locator(".mt-editor-status").inner_text()


def test_scale_tool_survives_a_kernel_restart_and_a_length_handle_sets_a_length(tmp_path, tiny_model):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing — install Debian's chromium (make dev does)"

    root = tmp_path / "lab"
    write_images(root / "images", 2, seed=17)
    run = mt.run(root / "images", model=tiny_model, imgsz=IMGSZ, store=root / "store", quiet=True, threshold=0.5)
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(
        "import musseltools as mt\nfrom musseltools.jupyter.editor import CorrectionEditor\n"
        f"run = mt.open_run({run.run_id!r}, store='store')\n"
        "editor = CorrectionEditor(run, order='path', author='browser')\neditor"),
        nbformat.v4.new_code_cell("print('scales:', run.scales()[['mm_per_px', 'source']].values.tolist())")]
    nbformat.write(nb, root / "scale.ipynb")
    with _jupyterlab(root, tmp_path) as (base, token), _notebook_page(
            base, token, "scale.ipynb", {"width": 1280, "height": 1100},
            ARTIFACT.with_name("scale_tool-failure.png")) as page:
        _run_all(page)
        assert "no scale" in page.locator(".mt-editor-scale").inner_text()
        px = _draw_and_save_a_scale(page, run)
        _run_all(page, restart=True)  # a new kernel: only the store remembers the scale
        printed = page.locator(".jp-CodeCell").nth(1).locator(".jp-OutputArea")
        page.wait_for_function("() => document.querySelectorAll('.jp-CodeCell')[1].innerText.includes('drawn')",
                               timeout=120_000)
        mm_per_px = 30 / px
        assert re.search(r"\[\[([\d.e-]+), 'drawn'\]", printed.inner_text()).group(1) == repr(mm_per_px)
        assert f"{mm_per_px:.4g} mm/px" in page.locator(".mt-editor-scale").inner_text()
        _drag_a_length_handle(page, run, mm_per_px)
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        page.locator(".mt-correction-editor").first.screenshot(path=str(ARTIFACT))
