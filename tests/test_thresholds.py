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


# ---------------------------------------------------------------- mutation testing (docs/testing.md)
def test_errors_name_the_value_the_class_and_what_to_do():
    cases = [
        (lambda: Thresholds.parse({"live": "x"}, default=0.5, classes=CLASSES), "threshold of 'live' 'x' is not a number"),
        (lambda: Thresholds.parse("live=x", default=0.5), "threshold of 'live' 'x' is not a number"),
        (lambda: Thresholds.parse({"live": 0.4}, default="x"), "the default threshold 'x' is not a number"),
        (lambda: Thresholds.parse("nan"), "threshold 'nan' is not a number — expected a confidence in [0, 1]"),
        (lambda: Thresholds.parse({"live": 1.5}, default=0.5), "threshold 1.5 for 'live' is not a confidence"),
        (lambda: Thresholds.parse(1.5), "threshold 1.5 is not a confidence — expected a number in [0.0, 1]"),
        (lambda: Thresholds.parse({"live": 0.4}).of("dead"), "no threshold for class 'dead' — give one for every class"),
        (lambda: Thresholds.parse({"dead": 0.6}, default=0.5).of_category("dead", CLASSES),
         "different thresholds [0.5, 0.6] — a category needs one threshold — give the category's threshold by its name"),
        (lambda: Thresholds.parse(0.5).of_category("shell", CLASSES), "'shell' is not a category of the model"),
        (lambda: Thresholds.parse({"shell": 0.5}, default=0.5, classes=CLASSES), "and its categories ['live', 'dead']"),
    ]
    for call, words in cases:
        with pytest.raises(mt.ThresholdError) as err:
            call()
        assert words in str(err.value)
    with pytest.raises(mt.ThresholdError) as err:
        Thresholds.parse({"shell": 0.5}, default=0.5, classes=["live", "dead"])
    assert "categories" not in str(err.value)  # no class map: no categories to name


def test_a_threshold_at_the_floor_or_at_one_is_valid_and_nan_is_not():
    assert Thresholds.parse(0.01, floor=0.01).of("live") == 0.01
    assert Thresholds.parse(0.01 - TOLERANCE, floor=0.01).default == 0.01 - TOLERANCE
    assert Thresholds.parse(1.0).of("live") == 1.0
    with pytest.raises(mt.ThresholdError, match="threshold nan is not a confidence"):
        Thresholds.parse(Thresholds(float("nan")))  # a Thresholds built by hand is checked too


def test_a_confidence_exactly_one_tolerance_below_counts():
    t = Thresholds.parse(0.5)
    assert t.keep([0.5 - TOLERANCE], ["live"]).tolist() == [True]
    t = Thresholds.parse({"live": 0.5}, default=0.3)
    assert t.keep([0.5 - TOLERANCE, 0.3 - TOLERANCE], ["live", "dead"]).tolist() == [True, True]
    # any iterable of names, in a 2-D array or none at all
    assert t.keep(np.array([[0.4], [0.4]]), iter(["live", "dead"])).tolist() == [False, True]
    assert t.keep([], []).tolist() == []
    assert t.per_row(["dead", "live", "dead"]).tolist() == [0.3, 0.5, 0.3]


def test_given_thresholds_take_the_default_of_the_run():
    given = Thresholds(None, {"live": 0.45})  # a mapping without default
    t = Thresholds.parse(given, default=0.5, classes=CLASSES)
    assert (t.default, t.per_class) == (0.5, {"live": 0.45})
    assert Thresholds.parse(Thresholds(0.3, {"dead": 0.6}), default=0.5) == Thresholds(0.3, {"dead": 0.6})
    assert Thresholds.parse("0.5").per_class == {}


def test_text_forms_of_thresholds():
    assert str(Thresholds.parse(0.5)) == "0.5"
    assert str(Thresholds.parse({"live": 0.45}, default=0.5)) == "live 0.45, others 0.50"
    assert str(Thresholds.parse({"live": 0.45, "dead": 0.6})) == "live 0.45, dead 0.60"
    assert Thresholds.parse({"live": 0.45}, default=0.5).label() == "live 0.45, others 0.50"
    assert Thresholds.parse({"live": 0.5, "dead": 0.5}).label(["live", "dead"]) == "live 0.50, dead 0.50"
    assert Thresholds.parse({"live": 0.5, "dead": 0.5}).to_json(["live", "dead"]) == {"live": 0.5, "dead": 0.5}
    assert Thresholds.parse({"live": 0.45, "dead": 0.6}).to_json() == {"live": 0.45, "dead": 0.6}
    assert Thresholds.parse({"dead": 0.6, "gaping": 0.6}, default=0.5).by_category(CLASSES) == {"live": 0.5, "dead": 0.6}


def test_class_map_forms():
    assert parse_class_map(None) is None
    assert parse_class_map({"live": 1}) == {"live": "1"}
    assert parse_class_map(" live = mussel ,, dead=shell ") == {"live": "mussel", "dead": "shell"}
    assert parse_class_map("live=a=b") == {"live": "a=b"}
    for bad in ("live=", "=mussel", "live=mussel,dead"):
        with pytest.raises(ValueError, match="expected e.g. live=live,dead=dead"):
            parse_class_map(bad)
    with pytest.raises(ValueError, match=r"class map '\{bad' is not a JSON object of NAME: CATEGORY"):
        parse_class_map("{bad")
    assert ClassMap(["live"]).to_dict() is None
    assert ClassMap(["live", "dead"], {"dead": "shell"}).to_dict() == {"dead": "shell"}
    assert ClassMap(["live", "dead"], {}).mapping is None
    with pytest.raises(mt.ThresholdError, match=r"names \['zebra'\] are not classes of the model — the model's classes"):
        ClassMap(["live"], {"zebra": "dead"})
