"""Shell sizes: lengths of hand-built detections equal hand calculations, scales come from the sheet before a
drawn one, a drawn scale is checked, saved append-only and flagged when the sheet disagrees."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import musseltools as mt
from musseltools.corrections.scales import ScaleError
from musseltools.results.sizes import add_lengths, outline_size
from musseltools.store.scales_log import read_scales

IDS = ["a", "b", "c", "d"]
# a: mm_per_px 0.5; b: a 0.1 m quadrat on a 200x100 image: 100 mm / 100 px; c: no scale in the sheet; d: 2
SHEET = ("image,site,camera,area_m2,mm_per_px,quadrat_side_m\n"
         "a.jpg,N,A,1,0.5,\n" "b.jpg,N,A,1,,0.1\n" "c.jpg,S,B,1,,\n" "d.jpg,S,B,1,2,\n")


def _rotated(cx, cy, length, width, deg):
    t = math.radians(deg)
    u, v = np.array([math.cos(t), math.sin(t)]), np.array([-math.sin(t), math.cos(t)])
    return np.array([[cx, cy] + sx * length / 2 * u + sy * width / 2 * v
                     for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))])


def _run(tmp_path, task="detect"):
    """A hand-built run of four 200x100 images: boxes (and their outlines for an OBB model) known to the test."""
    from hand_built_store import commit, images_part, write_run

    from musseltools.store.store import Store

    store = Store(tmp_path / "store")
    meta = write_run(store, "r1", "k1", pd.DataFrame({"image_id": IDS, "path": [f"/s/{i}.jpg" for i in IDS]}))
    store.write_run({**meta, "model": {**meta["model"], "task": task},
                     "collection": {"name": "s", "source": {"kind": "folder", "root": "/s"}}})
    shells = [("a", (10, 10, 40, 30), None),                 # 30 x 20 box
              ("a", None, _rotated(100, 50, 30, 12, 30)),    # a 30 x 12 shell tilted by 30 degrees
              ("b", (0, 0, 20, 50), None),                   # 50 x 20 box
              ("c", (5, 5, 45, 15), None),                   # no scale
              ("d", (150, 20, 250, 40), None)]               # reaches 50 px beyond the image's right edge
    rows = []
    for image, box, poly in shells:
        poly = np.array([[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]], float) \
            if poly is None else poly
        (x1, y1), (x2, y2) = poly.min(0), poly.max(0)
        rows.append({"image_id": image, "path": f"/s/{image}.jpg", "class_id": 0, "class_name": "mussel",
                     "confidence": 0.9, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "polygon": poly.tolist()})
    dets = pd.DataFrame(rows).astype({"class_id": np.int16, "confidence": np.float32, "x1": np.float32,
                                      "y1": np.float32, "x2": np.float32, "y2": np.float32})
    imgs = images_part(IDS, sizes=(200, 100), n=[2, 1, 1, 1])
    imgs["path"] = [f"/s/{i}.jpg" for i in IDS]
    commit(store, "k1", "u1", imgs, dets)
    (tmp_path / "survey.csv").write_text(SHEET)
    return mt.open_run("r1", store=store.root)


def _by_image(dets):
    return {i: g.sort_values("x1") for i, g in dets.groupby("image_id")}


def test_lengths_of_boxes_and_outlines_equal_hand_calculations_in_px_and_mm(tmp_path):
    run = _run(tmp_path)
    before = run.detections()  # no sheet: lengths in pixels only, and the table says so
    assert before["length_mm"].isna().all() and "pixels only for 5 of 5" in before.attrs["lengths"]
    run.attach_sheet(tmp_path / "survey.csv")
    d = _by_image(run.detections())
    a = d["a"]
    # detect model: the box's long side (30) and short side (20); tilted shell's box: 30cos30+12sin30 = 31.98
    assert a["length_method"].tolist() == ["box", "box"]
    assert a["length_px"].tolist() == pytest.approx([30.0, 30 * math.cos(math.pi / 6) + 12 * 0.5], abs=1e-4)
    assert a["width_px"].tolist() == pytest.approx([20.0, 30 * 0.5 + 12 * math.cos(math.pi / 6)], abs=1e-4)
    assert a["length_mm"].iloc[0] == pytest.approx(15.0) and a["width_mm"].iloc[0] == pytest.approx(10.0)
    assert d["b"]["length_mm"].tolist() == pytest.approx([50.0]) and d["b"]["width_mm"].tolist() == pytest.approx([20.0])
    assert d["c"]["length_px"].tolist() == [40.0] and d["c"]["length_mm"].isna().all()  # no scale: px only
    assert d["d"]["length_px"].tolist() == [100.0] and d["d"]["length_mm"].isna().all()  # outside the image
    assert d["d"]["mm_per_px"].isna().all()  # though its image has a scale (2 mm/px)
    assert "pixels only for 2 of 5" in run.detections().attrs["lengths"]


def test_outlines_of_an_obb_model_and_boxes_drawn_by_hand_are_measured_on_their_minimum_rectangle(tmp_path):
    run = _run(tmp_path, task="obb")
    run.attach_sheet(tmp_path / "survey.csv")
    a = _by_image(run.detections())["a"]
    assert a["length_method"].tolist() == ["outline", "outline"]
    assert a["length_px"].tolist() == pytest.approx([30.0, 30.0], abs=1e-4)
    assert a["width_px"].tolist() == pytest.approx([20.0, 12.0], abs=1e-4)
    assert a["length_mm"].tolist() == pytest.approx([15.0, 15.0], abs=1e-4)
    run.add_detection("c.jpg", [60, 10, 70, 90], "mussel")  # drawn by hand: 10 x 80
    added = run.detections(corrected=True).query("source == 'added'")
    assert added["length_method"].tolist() == ["hand"] and added["length_px"].tolist() == pytest.approx([80.0])
    # a detect model's rows stay box estimates; a hand-drawn polygon is measured whatever the model
    seg = add_lengths(pd.DataFrame({"x1": [0.0], "y1": [0.0], "x2": [34.0], "y2": [40.0], "source": ["added"],
                                    "polygon": [[[0, 0], [30, 40], [34, 37], [4, -3]]]}), "detect")
    assert seg[["length_px", "width_px"]].values[0].tolist() == pytest.approx([50.0, 5.0])
    assert math.isnan(outline_size([[1, 1], [1, 1], [1, 1]])[0])


def test_the_sheets_scale_comes_first_then_the_quadrat_then_a_drawn_one(tmp_path):
    run = _run(tmp_path)
    none = run.scales().set_index("image_id")
    assert none["mm_per_px"].isna().all() and none["source"].isna().all()
    run.attach_sheet(tmp_path / "survey.csv")
    assert pd.isna(run.scales().set_index("image_id").loc["c", "source"])  # nothing for c in the sheet
    run.set_scale("c.jpg", line=(0, 0, 30, 40), mm=25, author="ana")  # 50 px = 25 mm
    run.set_scale("a", px_length=100, mm=50, author="ana")             # drawn where the sheet says 0.5: agrees
    s = run.scales().set_index("image_id")
    assert s.loc["a", "source"] == "sheet mm_per_px" and s.loc["a", "mm_per_px"] == 0.5
    assert s.loc["b", "source"] == "sheet quadrat_side_m" and s.loc["b", "mm_per_px"] == pytest.approx(1.0)
    assert s.loc["c", "source"] == "drawn" and s.loc["c", "mm_per_px"] == pytest.approx(0.5)
    assert s.loc["c", "drawn_by"] == "ana" and not s["flagged"].any()
    c = _by_image(run.detections())["c"]
    assert c["length_mm"].tolist() == pytest.approx([20.0])  # 40 px at the drawn 0.5 mm/px
    run.set_scale({"camera": "B"}, px_length=40, mm=10)  # the group: c and d; the latest applies where no sheet's
    s = run.scales().set_index("image_id")
    assert s.loc["c", "mm_per_px"] == pytest.approx(0.25) and s.loc["d", "drawn_mm_per_px"] == pytest.approx(0.25)
    assert s.loc["d", "mm_per_px"] == 2 and s.loc["d", "flagged"]  # the sheet's 2 applies; 0.25 is far off it
    log = read_scales(run.store)
    assert len(log) == 4 and log["group"].tolist()[-2:] == ["camera=B", "camera=B"]  # append-only: all kept


def test_a_drawn_scale_off_the_sheet_by_more_than_ten_percent_is_saved_and_flagged(tmp_path):
    run = _run(tmp_path)
    run.attach_sheet(tmp_path / "survey.csv")
    run.set_scale("a.jpg", px_length=100, mm=54.9)  # 0.549 vs 0.5: 9.8 % off
    s = run.scales().set_index("image_id")
    assert not s.loc["a", "flagged"] and s.loc["a", "disagreement"] == pytest.approx(0.098)
    run.set_scale("a.jpg", px_length=100, mm=56)  # 12 % off: saved, flagged, the sheet's still applies
    s = run.scales().set_index("image_id")
    assert s.loc["a", "flagged"] and s.loc["a", "drawn_mm_per_px"] == pytest.approx(0.56)
    assert s.loc["a", "mm_per_px"] == 0.5 and s["flagged"].sum() == 1


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"line": (10, 10, 10, 10), "mm": 5}, "zero or negative length"),
    ({"px_length": 0, "mm": 5}, "zero or negative length"),
    ({"px_length": -3, "mm": 5}, "zero or negative length"),
    ({"px_length": 10, "mm": 0}, "mm is 0 .* > 0"),
    ({"px_length": 10, "mm": -1}, "mm is -1"),
    ({"px_length": float("nan"), "mm": 1}, "zero or negative length"),
    ({"mm": 5}, "needs the line's length in pixels"),
    ({"line": (0, 0, 3), "mm": 5}, "two ends"),
    ({"px_length": 10, "mm": 5, "image": "zz.jpg"}, "not an image of run r1"),
    ({"px_length": 10, "mm": 5, "image": {"camera": "Z"}}, "no image of run r1 is in the sheet group camera=Z"),
    ({"px_length": 10, "mm": 5, "image": {"lens": "Z"}}, "no column 'lens'"),
])
def test_a_bad_scale_is_refused_with_the_reason_and_nothing_is_saved(tmp_path, kwargs, match):
    run = _run(tmp_path)
    run.attach_sheet(tmp_path / "survey.csv")
    image = kwargs.pop("image", "a.jpg")
    with pytest.raises(ScaleError, match=match):
        run.set_scale(image, **kwargs)
    assert read_scales(run.store).empty
