"""The correction editor's Python side: what the front end sends is saved at once, and the counts it
shows are the run's corrected counts (the browser test drives the same messages from real clicks)."""

from __future__ import annotations

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
