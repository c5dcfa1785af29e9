"""The Detections type: validated at construction, thresholds, shifting, Arrow rows."""

from __future__ import annotations

import numpy as np
import pytest

from musseltools.core.detections import DETECTIONS_SCHEMA, Detections

NAMES = {0: "live", 1: "dead"}


def make() -> Detections:
    return Detections(
        xyxy=[[0, 0, 10, 5], [5, 5, 20, 25], [1, 2, 3, 4]],
        confidence=[0.9, 0.4, 0.2],
        class_id=[0, 1, 0],
        names=NAMES,
        image_size=(100, 50),
    )


def test_defaults_polygons_to_box_corners():
    d = make()
    assert d.polygons[1].tolist() == [[5, 5], [20, 5], [20, 25], [5, 25]]
    assert d.class_id.dtype == np.int16 and d.image_size == (100, 50)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"xyxy": [[0, 0, 1, 1]], "confidence": [0.5, 0.6], "class_id": [0]}, "one entry per detection"),
        ({"xyxy": [[5, 0, 1, 1]], "confidence": [0.5], "class_id": [0]}, "x2 >= x1"),
        ({"xyxy": [[0, 0, 1, 1]], "confidence": [1.5], "class_id": [0]}, r"\[0, 1\]"),
        ({"xyxy": [[0, 0, 1, 1]], "confidence": [0.5], "class_id": [7]}, "no name"),
        ({"xyxy": [[0, 0, 1, 1]], "confidence": [0.5], "class_id": [0], "polygons": []}, "0 polygons for 1"),
    ],
)
def test_invalid_detections_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Detections(names=NAMES, **kwargs)


def test_thresholds_global_and_per_class():
    d = make()
    assert d.counts(0.3) == {"live": 1, "dead": 1}
    assert d.counts({"live": 0.1, "dead": 0.5}) == {"live": 2, "dead": 0}
    assert len(d.above(0.95)) == 0


def test_shift_and_concat_keep_polygons_with_boxes():
    d = make().shifted(100, 200)
    assert d.xyxy[0].tolist() == [100, 200, 110, 205]
    assert d.polygons[0][0].tolist() == [100, 200]
    both = Detections.concat([make(), d], image_size=(300, 300))
    assert len(both) == 6 and both.image_size == (300, 300)
    assert Detections.concat([], names=NAMES).counts() == {"live": 0, "dead": 0}


def test_to_arrow_rows():
    t = make().to_arrow("abc", "/x/y.jpg")
    assert t.schema.equals(DETECTIONS_SCHEMA)
    row = t.slice(1, 1).to_pylist()[0]
    assert row["class_name"] == "dead" and row["image_id"] == "abc"
    assert row["polygon"] == [[5, 5], [20, 5], [20, 25], [5, 25]]
