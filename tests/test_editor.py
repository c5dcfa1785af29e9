"""The correction editor's Python side: what the front end sends is saved at once, and the counts it
shows are the run's corrected counts (the browser test drives the same messages from real clicks)."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import IMGSZ, write_images

import musseltools as mt
from musseltools.jupyter.editor import CorrectionEditor, EditorCanvas
from musseltools.store.corrections_log import read_corrections

T = 0.5


@pytest.fixture
def run(tmp_path, tiny_model):
    folder = tmp_path / "images"
    write_images(folder, 4, seed=17)
    return mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", quiet=True, threshold=T)


def _send(ed, **msg):
    ed.canvas._handle_custom_msg(msg, [])  # what anywidget does with a message from the browser


def test_every_edit_is_saved_at_once_and_the_counts_follow(run):
    ed = CorrectionEditor(run)
    assert ed.survey_counts == run.counts()
    assert ed.order == run.review_queue(n=None)["image_id"].tolist()  # it walks the review queue
    first = ed.image_id
    box = next(b for b in ed.boxes if b["label"] == "live")
    _send(ed, type="toggle", id=box["id"])
    saved = read_corrections(run.store)
    assert saved[["kind", "detection_id", "class_name"]].values.tolist() == [["reclassify", box["id"], "dead"]]
    assert ed.survey_counts == run.counts() and ed.image_counts == run.per_image().set_index("image_id").loc[
        first, ["live", "dead"]].to_dict()
    assert "saved in" in ed.status_html.value and f"dead <b>{run.counts()['dead']}</b>" in ed.counts_html.value
    other = next(b for b in ed.boxes if b["id"] != box["id"])
    _send(ed, type="delete", id=other["id"])
    _send(ed, type="add", box=[3.5, 4, 30, 22.5], label="dead")
    _send(ed, type="verify")
    assert 0 < ed.last_save_s <= ed.last_edit_s  # saved, then shown (how fast: not a test's business)
    kinds = read_corrections(run.store)["kind"].tolist()
    assert kinds == ["reclassify", "delete", "add", "verify"]
    assert ed.survey_counts == run.counts()
    assert any(b["source"] == "added" and b["label"] == "dead" for b in ed.boxes)
    assert run.per_image().set_index("image_id").at[first, "verified"]
    _send(ed, type="undo")  # the verified mark taken back
    assert not run.per_image().set_index("image_id").at[first, "verified"]
    _send(ed, type="nav", step=1)
    assert ed.image_id == ed.order[1] and ed.position == 1
    _send(ed, type="nav", step=-5)
    assert ed.position == 0


def test_a_rejected_edit_says_why_and_saves_nothing(run):
    ed = CorrectionEditor(run, order="path")
    assert ed.order == run.per_image().sort_values("path")["image_id"].tolist()
    _send(ed, type="add", box=[10, 10, 5, 5], label="live")  # x2 < x1
    assert "not saved" in ed.status_html.value and "not a box" in ed.status_html.value
    assert read_corrections(run.store).empty


def test_the_canvas_is_an_anywidget_with_its_module_shipped():
    from pathlib import Path

    import musseltools.jupyter.editor

    js = Path(musseltools.jupyter.editor.__file__).with_name("static") / "editor.js"  # shipped beside the editor
    assert js.exists() and "export default { render }" in js.read_text()
    assert issubclass(EditorCanvas, __import__("anywidget").AnyWidget)


def _save_scale(ed):
    next(w for w in ed.scale_form.children if "mt-editor-scale-save" in w._dom_classes).click()  # the button


def test_a_scale_and_a_length_drawn_in_the_editor_are_saved_checked_and_shown(run, tmp_path):
    from musseltools.store.scales_log import read_scales

    names = sorted(run.per_image()["path"].map(lambda p: p.rsplit("/", 1)[-1]))
    (tmp_path / "sheet.csv").write_text("image,camera,area_m2\n" + "".join(
        f"{n},{'B' if i == len(names) - 1 else 'A'},1\n" for i, n in enumerate(names)))
    run.attach_sheet(tmp_path / "sheet.csv")
    ed = CorrectionEditor(run, order="path", author="ana")
    while not ed.boxes:
        ed.next()
    assert "no scale" in ed.scale_html.value
    assert [v for _label, v in ed.scale_target.options] == ["", '{"camera": "A"}']
    ed.mode_choice.value = "scale"
    assert ed.canvas.mode == "scale" and ed.scale_form.layout.display == "flex"
    for line, mm, why in (([10, 10, 10, 10], "25", "zero or negative length"), ([0, 0, 30, 40], "0", "true length in millimetres"),
                          ([0, 0, 30, 40], "ten", "not a number")):
        _send(ed, type="scale_line", line=line)
        ed.scale_mm.value = mm
        _save_scale(ed)
        assert "not saved" in ed.status_html.value and why in ed.status_html.value, ed.status_html.value
    assert read_scales(run.store).empty
    _send(ed, type="scale_line", line=[0, 0, 30, 40])  # 50 px
    ed.scale_mm.value, ed.scale_target.value = "25", '{"camera": "A"}'
    _save_scale(ed)
    scales = run.scales().set_index("path")["mm_per_px"]
    assert scales.iloc[:-1].tolist() == pytest.approx([0.5] * (len(names) - 1)) and pd.isna(scales.iloc[-1])
    assert "0.5 mm/px" in ed.scale_html.value and "drawn by ana" in ed.scale_html.value
    again = CorrectionEditor(mt.open_run(run.run_id, store=run.store.root), order="path")  # a new kernel's editor
    assert "0.5 mm/px" in again.scale_html.value

    ed.mode_choice.value = "length"
    box = ed.boxes[0]
    _send(ed, type="select", id=box["id"])
    assert f"{box['length_px']:.1f} px" in ed.length_html.value
    _send(ed, type="length", id=box["id"], line=[1, 1, 7, 9])  # 10 px = 5 mm
    det = run.detections().set_index("detection_id").loc[box["id"]]
    assert det[["length_px", "length_method", "length_mm"]].tolist() == [10.0, "hand", 5.0]
    shown = next(b for b in ed.boxes if b["id"] == box["id"])
    assert shown["line"] == [1, 1, 7, 9] and shown["length_method"] == "hand"
    assert "10.0 px</b> = <b>5.0 mm" in ed.length_html.value
    _send(ed, type="length", id=box["id"], line=[5, 5, 5, 5])
    assert "not saved" in ed.status_html.value and "zero length" in ed.status_html.value
    _send(ed, type="undo")
    assert run.detections().set_index("detection_id").loc[box["id"], "length_px"] == box["length_px"]
    assert next(b for b in ed.boxes if b["id"] == box["id"])["line"] == box["line"]
