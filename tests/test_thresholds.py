"""Thresholds and class maps: parsing, validation and the one counting rule."""

from __future__ import annotations

import numpy as np
import pytest

import musseltools as mt
from musseltools.core.thresholds import TOLERANCE, ClassMap, Thresholds, parse_class_map

CLASSES = ClassMap(["live", "dead", "gaping"], {"gaping": "dead"})


def test_cli_forms_parse_to_the_same_thresholds():
    assert Thresholds.parse("0.5") == Thresholds.parse(0.5) == Thresholds(0.5, {})
    t = Thresholds.parse("live=0.45, dead=0.6", default=0.5, classes=CLASSES)
    assert t.by_class(CLASSES) == {"live": 0.45, "dead": 0.6, "gaping": 0.5}


def test_a_class_left_out_keeps_the_default():
    t = Thresholds.parse({"live": 0.45}, default=0.5, classes=CLASSES)
    assert (t.of("live"), t.of("dead"), t.of("gaping")) == (0.45, 0.5, 0.5)


def test_a_mapping_without_default_must_name_every_class():
    with pytest.raises(mt.ThresholdError, match=r"no threshold for classes \['dead', 'gaping'\]"):
        Thresholds.parse({"live": 0.45}, classes=CLASSES)


def test_category_keys_expand_to_their_classes_and_a_class_name_wins():
    t = Thresholds.parse({"dead": 0.7, "gaping": 0.3}, default=0.5, classes=ClassMap(["live", "dead", "gaping"],
                                                                                      {"gaping": "shell", "dead": "shell"}))
    assert t.by_class(["live", "dead", "gaping"]) == {"live": 0.5, "dead": 0.7, "gaping": 0.3}
    t = Thresholds.parse({"shell": 0.7, "gaping": 0.3}, default=0.5,
                         classes=ClassMap(["live", "dead", "gaping"], {"gaping": "shell", "dead": "shell"}))
    assert t.by_class(["live", "dead", "gaping"]) == {"live": 0.5, "dead": 0.7, "gaping": 0.3}


@pytest.mark.parametrize("value, message", [
    ("high", "not a number"),
    (1.5, r"expected a number in \[0.01, 1\]"),
    (0.001, "below the confidence floor 0.01"),
    ({"zebra": 0.5}, r"unknown classes \['zebra'\]"),
    ("live=abc", "not a number"),
    ("live", "not a number"),
    ("=0.5", "is not NAME=VALUE"),
])
def test_bad_thresholds_are_refused_with_the_reason(value, message):
    with pytest.raises(mt.ThresholdError, match=message):
        Thresholds.parse(value, default=0.5, floor=0.01, classes=CLASSES)


def test_the_rule_and_its_one_tolerance():
    conf = np.array([0.5, 0.5 - TOLERANCE / 2, 0.5 - 2 * TOLERANCE, np.float32(0.3)], dtype=np.float64)
    t = Thresholds.parse({"live": 0.5, "dead": 0.3}, classes=["live", "dead"])
    assert t.keep(conf, ["live", "live", "live", "dead"]).tolist() == [True, True, False, True]
    codes = np.array([0, 0, 0, 1])
    assert t.keep_codes(conf, codes, ["live", "dead"]).tolist() == [True, True, False, True]


def test_category_threshold_needs_agreeing_classes():
    t = Thresholds.parse({"dead": 0.6}, default=0.5, classes=CLASSES)
    assert t.of_category("live", CLASSES) == 0.5
    with pytest.raises(mt.ThresholdError, match="different thresholds"):
        t.of_category("dead", CLASSES)


def test_json_and_label_forms():
    assert Thresholds.parse(0.5).to_json(CLASSES) == 0.5
    t = Thresholds.parse({"live": 0.45}, default=0.5, classes=CLASSES)
    assert t.to_json(CLASSES) == {"live": 0.45, "dead": 0.5, "gaping": 0.5}
    assert t.label(CLASSES) == "live 0.45, dead 0.50, gaping 0.50"
    assert Thresholds.parse({"live": 0.5, "dead": 0.5, "gaping": 0.5}, classes=CLASSES).label() == "0.50"


def test_class_map_categories_and_members():
    assert CLASSES.categories == ["live", "dead"]
    assert CLASSES.members("dead") == ["dead", "gaping"]
    assert CLASSES.categories_of(["gaping", "live"]) == ["dead", "live"]
    with pytest.raises(mt.ThresholdError, match="not classes of the model"):
        ClassMap(["live"], {"zebra": "dead"})
    assert parse_class_map("live=mussel, dead=mussel") == {"live": "mussel", "dead": "mussel"}
    assert parse_class_map('{"live": "m"}') == {"live": "m"}
    with pytest.raises(ValueError, match="NAME=CATEGORY"):
        parse_class_map("live")
