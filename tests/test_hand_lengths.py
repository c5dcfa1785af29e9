"""A length measured by hand (a ``length`` correction: the two ends of a line): that detection's length is the
line's, in px and in mm, marked ``hand``; every other detection keeps its own; saved append-only, undoable, and
bad lines are refused with the reason, nothing saved."""

from __future__ import annotations

import pandas as pd
import pytest
from test_sizes import _run

from musseltools.errors import CorrectionError
from musseltools.store.corrections_log import read_corrections

SIZES = ["length_px", "width_px", "length_method", "length_mm", "width_mm"]


def _first_of_a(run):
    d = run.detections()
    return d[d["image_id"] == "a"].sort_values("x1")["detection_id"].iat[0]  # the 30 x 20 box of image a


def test_a_hand_length_replaces_that_detections_length_only_and_can_be_undone(tmp_path):
    run = _run(tmp_path)
    run.attach_sheet(tmp_path / "survey.csv")  # image a: 0.5 mm/px
    before = run.detections().set_index("detection_id")
    target = _first_of_a(run)
    first = run.set_length(target, (10, 10, 22, 26), author="ana")  # 12, 16: 20 px by hand = 10 mm
    after = run.detections().set_index("detection_id")
    assert after.loc[target, ["length_px", "length_method", "length_mm"]].tolist() == [20.0, "hand", 10.0]
    assert after.loc[target, "width_px"] == before.loc[target, "width_px"] == 20.0  # the width stays
    assert after.loc[target, ["x1", "y1", "x2", "y2", "class_name"]].tolist() == \
        before.loc[target, ["x1", "y1", "x2", "y2", "class_name"]].tolist()  # box and class unchanged
    pd.testing.assert_frame_equal(after.drop(target)[SIZES], before.drop(target)[SIZES])  # no other changed
    model = run.detections(corrected=False).set_index("detection_id")
    assert model.loc[target, ["length_px", "length_method"]].tolist() == [30.0, "box"]  # the model's own

    second = run.set_length(target, (0, 0, 30, 40))  # measured again: 50 px, the latest applies
    assert run.detections().set_index("detection_id").loc[target, "length_px"] == 50.0
    saved = read_corrections(run.store)
    assert saved["kind"].tolist() == ["length", "length"] and saved["correction_id"].tolist() == [first, second]
    assert saved.iloc[0][["x1", "y1", "x2", "y2", "author"]].tolist() == [10, 10, 22, 26, "ana"]  # kept as saved
    run.undo(second)
    assert run.detections().set_index("detection_id").loc[target, "length_px"] == 20.0
    run.undo(first)
    pd.testing.assert_frame_equal(run.detections().set_index("detection_id")[SIZES], before[SIZES])
    assert len(read_corrections(run.store)) == 4  # nothing erased: two lengths, two undos


@pytest.mark.parametrize(("detection", "line", "match"), [
    (None, (10, 10, 10, 10), "zero length"),
    (None, (10, 10, 260, 20), "outside the image"),  # the image is 200 x 100
    (None, (10, "x", 20, 20), "not four numbers"),
    (None, (10, 10, 20), "not two points"),
    ("nosuchdetection", (10, 10, 20, 20), "not a detection of run"),
])
def test_a_bad_length_line_is_refused_with_the_reason_and_nothing_is_saved(tmp_path, detection, line, match):
    run = _run(tmp_path)
    with pytest.raises(CorrectionError, match=match):
        run.set_length(detection or _first_of_a(run), line)
    assert read_corrections(run.store).empty


def test_a_hand_length_decides_whether_the_shell_counts_at_a_minimum_length(tmp_path):
    run = _run(tmp_path)
    run.attach_sheet(tmp_path / "survey.csv")  # image a: 0.5 mm/px; the target's box estimate 30 px = 15 mm
    target = _first_of_a(run)
    run.save_min_length_mm(12)
    assert target in set(run.detections()["detection_id"])  # 15 mm from its box: counted
    before = run.counts()
    run.set_length(target, (10, 10, 22, 26))  # 20 px by hand = 10 mm: under the minimum
    assert target not in set(run.detections()["detection_id"])
    category = run.classes.category(run.detections(min_length_mm=0).set_index("detection_id").loc[target, "class_name"])
    assert run.counts()[category] == before[category] - 1
