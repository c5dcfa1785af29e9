"""The card beside the weights: recommended settings travel with them, and a run says where each came from."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import IMGSZ

import musseltools as mt
from musseltools import cli
from musseltools.errors import ModelLoadError
from musseltools.models import InferenceSettings, read_card, resolve_settings
from musseltools.models.card import parse_card

CARD = """\
recommended:
  threshold: {live: 0.35, dead: 0.6}
  iou: 0.45
  tile: 64
  tile_overlap: 0.25
  tile_merge: ios
how:
  threshold: calibrated on held-out frames
  iou: lowest count error of 0.7, 0.5 and 0.45
"""


@pytest.fixture
def carded(tmp_path, tiny_model):
    """A copy of the tiny model with a card beside it."""
    weights = tmp_path / "models" / "carded.pt"
    weights.parent.mkdir()
    shutil.copy(tiny_model, weights)
    (weights.with_suffix(".yaml")).write_text(CARD)
    return weights


def test_given_beats_the_card_which_beats_the_default():
    card = parse_card({"recommended": {"iou": 0.4, "tile": "auto", "threshold": "live=0.3,dead=0.2"},
                       "how": {"iou": "measured"}}, "m.yaml")
    r = resolve_settings({"iou": None, "tile": 640, "threshold": None}, card, default_iou=0.5, train_imgsz=320)
    assert r.values == {"threshold": {"live": 0.3, "dead": 0.2}, "iou": 0.4, "imgsz": 320, "tile": 640,
                        "tile_overlap": 0.2, "tile_merge": "edge", "conf_floor": 0.01, "max_det": 10000,
                        "backend": "torch"}
    assert r.origins["iou"] == {"value": 0.4, "from": "card", "source": "m.yaml", "how": "measured"}
    assert r.origins["tile"]["from"] == "given" and r.origins["imgsz"]["from"] == "default"
    # tile='none' is given: whole images although the card recommends tiles
    none = resolve_settings({"tile": "none"}, card)
    assert none.values["tile"] is None and none.origins["tile"]["from"] == "given"
    # without a card: the family's own IoU
    assert resolve_settings({}, None, default_iou=0.5).values["iou"] == 0.5


@pytest.mark.parametrize("recommended, words", [
    ({"iou": 1.5}, ["recommended iou", "lie in (0, 1]"]),
    ({"tile_merge": "union"}, ["recommended tile_merge", "edge, ios, nmm"]),
    ({"threshold": {"live": "high"}}, ["recommended threshold"]),
    ({"batch_size": 8}, ["recommends batch_size", "a card may recommend"]),
])
def test_a_bad_card_names_the_card_and_the_setting(recommended, words):
    with pytest.raises(ModelLoadError) as e:
        parse_card({"recommended": recommended}, "mine.yaml")
    for w in ["'mine.yaml'", *words]:
        assert w in str(e.value)


def test_a_yaml_beside_yolo_weights_without_recommended_is_not_a_card(tmp_path):
    (tmp_path / "yolov8n.yaml").write_text("nc: 2\nbackbone: []\n")  # a network's own config
    assert read_card(tmp_path / "yolov8n.pt") is None
    (tmp_path / "m.json").write_text(json.dumps({"recommended": {"iou": 0.5}}))
    assert read_card(tmp_path / "m.pt").recommended == {"iou": 0.5}
    (tmp_path / "bad.yaml").write_text("recommended: [unclosed")
    with pytest.raises(ModelLoadError, match="cannot read the model card"):
        read_card(tmp_path / "bad.pt")


def test_a_run_uses_the_card_and_records_where_each_setting_came_from(carded, images, tmp_path):
    run = mt.run(images, model=carded, imgsz=IMGSZ, store=tmp_path / "store", quiet=True, workers=1)
    s = run.meta["settings"]
    assert (s["iou"], s["tile"], s["tile_overlap"], s["tile_merge"]) == (0.45, 64, 0.25, "ios")
    assert run.thresholds == {"live": 0.35, "dead": 0.6}
    assert run.counts() == run.counts({"live": 0.35, "dead": 0.6})
    table = run.settings_table()
    assert table.loc["iou", "from"] == "card (carded.yaml)" and "0.45" in table.loc["iou", "how"]
    assert table.loc["imgsz", "from"] == "given" and table.loc["max_det", "from"] == "default"
    assert table.loc["threshold", "from"] == "card (carded.yaml)"
    run.save_thresholds(0.4)
    assert run.settings_table().loc["threshold", "from"].startswith("saved by hand, 20")  # and the date

    # given values win; the same settings as the card's give the same run as the card's
    other = mt.run(images, model=carded, imgsz=IMGSZ, iou=0.6, tile="none", threshold=0.2,
                   store=tmp_path / "store", quiet=True, workers=1)
    assert other.run_id != run.run_id and other.meta["settings"]["tile"] is None
    assert other.settings_table().loc["iou", "from"] == "given" and other.thresholds == 0.2
    same = mt.run(images, model=carded, imgsz=IMGSZ, iou=0.45, tile=64, tile_overlap=0.25, tile_merge="ios",
                  threshold={"live": 0.35, "dead": 0.6}, store=tmp_path / "store", quiet=True, workers=1)
    assert same.run_id == run.run_id and same.meta["inferred_this_call"] == 0


def test_tile_merge_is_a_flag_and_keys_only_when_it_changes_results(tiny_model, images, tmp_path, capsys):
    legacy = InferenceSettings(tile=64)
    assert legacy.tile_merge == "edge"
    # the merge every store used before it was a setting keeps its keys; another merge is another key
    assert legacy.key("f" * 64) == InferenceSettings(tile=64, tile_merge="edge").key("f" * 64)
    assert "tile_merge" not in legacy.identity()
    assert InferenceSettings(tile=64, tile_merge="ios").key("f" * 64) != legacy.key("f" * 64)
    assert InferenceSettings(tile_merge="ios").key("f" * 64) == InferenceSettings().key("f" * 64)  # no tiles
    store = tmp_path / "store"
    base = [str(images), "--model", str(tiny_model), "--imgsz", str(IMGSZ), "--store", str(store), "--tile", "64",
            "--workers", "1", "--json"]
    assert cli.main(["run", *base, "--tile-merge", "nmm"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert mt.open_run(out["run_id"], store=store).meta["settings"]["tile_merge"] == "nmm"
    with pytest.raises(SystemExit):
        cli.main(["run", *base, "--tile-merge", "union"])
    assert "not a tile merge method" in capsys.readouterr().err


@pytest.mark.slow
def test_the_tile_merge_from_the_keyword_the_flag_and_the_card_changes_the_boxes(tiny_model, images, tmp_path,
                                                                                  capsys):
    """Not only recorded: each way of naming the merge changes the merged detections. On this untrained
    model at 64-px tiles nmm (which also merges within a tile) keeps far fewer boxes than edge."""
    common = {"model": tiny_model, "imgsz": IMGSZ, "tile": 64, "quiet": True, "workers": 1}

    def boxes(run) -> set:
        d = run.detections(run.conf_floor)
        return set(zip(d["path"], d["class_name"], d["x1"].round(1), d["y1"].round(1), d["x2"].round(1),
                       d["y2"].round(1)))

    by_keyword = {m: boxes(mt.run(images, tile_merge=m, store=tmp_path / "kw", **common)) for m in ("edge", "ios", "nmm")}
    assert by_keyword["edge"] != by_keyword["ios"]
    assert len(by_keyword["nmm"]) < min(len(by_keyword["edge"]), len(by_keyword["ios"])) / 2

    flag = tmp_path / "flag"
    assert cli.main(["run", str(images), "--model", str(tiny_model), "--imgsz", str(IMGSZ), "--store", str(flag),
                     "--tile", "64", "--workers", "1", "--json", "--tile-merge", "nmm"]) == 0
    by_flag = boxes(mt.open_run(json.loads(capsys.readouterr().out)["run_id"], store=flag))
    assert len(by_flag) < len(by_keyword["edge"]) / 2

    weights = tmp_path / "models" / "nmm.pt"
    weights.parent.mkdir()
    shutil.copy(tiny_model, weights)
    weights.with_suffix(".yaml").write_text("recommended:\n  tile: 64\n  tile_merge: nmm\n")
    carded = mt.run(images, model=weights, imgsz=IMGSZ, store=tmp_path / "card", quiet=True, workers=1)
    assert carded.settings_table().loc["tile_merge", "from"] == "card (nmm.yaml)"
    assert len(boxes(carded)) < len(by_keyword["edge"]) / 2


def test_images_at_the_detection_cap_are_named_with_what_to_do(tiny_model, images, tmp_path, capsys, caplog):
    store = tmp_path / "store"
    assert cli.main(["run", str(images), "--model", str(tiny_model), "--imgsz", str(IMGSZ), "--store", str(store),
                     "--max-det", "1", "--conf-floor", "0.001", "--workers", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    run = mt.open_run(mt.list_runs(store=store).iloc[0].run_id, store=store)
    capped = run.meta["cap_hit_images"]
    assert capped and set(capped) <= {p.name for p in images.iterdir()} | {str(p) for p in images.iterdir()}
    assert "reached the detection cap (max_det 1)" in out and capped[0] in out
    assert "--tile auto" in out and "--max-det N" in out
    assert "reached the detection cap" in caplog.text


# ------------------------------------------------------ hand-built cards: edges pinned by mutation testing
def test_card_values_written_as_text_or_numbers_are_read_as_the_options_read_them():
    card = parse_card({"recommended": {"threshold": 0.3, "iou": "0.4", "imgsz": "320", "tile": "none",
                                       "tile_overlap": "0.25", "tile_merge": "ios"},
                       "how": {"iou": "lowest count error\n   on held-out frames"}}, "m.yaml")
    assert card.recommended == {"threshold": 0.3, "iou": 0.4, "imgsz": 320, "tile": "none", "tile_overlap": 0.25,
                                "tile_merge": "ios"}
    assert card.how == {"iou": "lowest count error on held-out frames"}  # one line, as the report shows it
    assert parse_card({"recommended": {"tile": 640, "threshold": {"live": 0.4}}}, "m.yaml").recommended == {
        "tile": 640, "threshold": {"live": 0.4}}
    assert parse_card({"recommended": {"tile": "auto"}}, "m.yaml").recommended == {"tile": "auto"}
    # the card's tile 'none' means whole images, as --tile none does
    assert resolve_settings({}, card).values["tile"] is None


@pytest.mark.parametrize("doc, words", [
    (["iou", 0.4], ["recommended must be a mapping of setting to value", "got None"]),
    ({"recommended": {"iou": 0.4}, "how": ["measured"]}, ["how must be a mapping of setting to text", "got list"]),
    ({"recommended": {"tile": [640, 640]}}, ["recommended tile", "an integer >= 32 pixels", "got [640, 640]"]),
    ({"recommended": {"tile_merge": "union"}}, ["recommended tile_merge: tile_merge must be one of edge, ios, nmm"]),
    ({"recommended": {"batch_size": 8, "workers": 2}},
     ["recommends batch_size, workers — a card may recommend threshold, iou, imgsz, tile, tile_overlap, tile_merge"]),
])
def test_a_bad_card_document_says_what_is_wrong_and_what_a_card_holds(doc, words):
    with pytest.raises(ModelLoadError) as e:
        parse_card(doc, "mine.yaml")
    for w in ["model card 'mine.yaml'", *words]:
        assert w in str(e.value)


def test_a_json_card_is_read_as_json_and_named_in_the_settings_it_gives(tmp_path):
    # tab-indented JSON (as some tools write it) is no YAML: the .json card must be read as JSON
    (tmp_path / "m.json").write_text(json.dumps({"recommended": {"iou": 0.5}, "how": {"iou": "measured"}},
                                                indent="\t"))
    card = read_card(tmp_path / "m.pt")
    assert (card.source, card.recommended) == ("m.json", {"iou": 0.5})
    assert resolve_settings({}, card).origins["iou"] == {"value": 0.5, "from": "card", "source": "m.json",
                                                         "how": "measured"}
    (tmp_path / "bad.yaml").write_text("recommended: [unclosed")
    with pytest.raises(ModelLoadError) as e:
        read_card(tmp_path / "bad.pt")
    assert f"model card {str(tmp_path / 'bad.yaml')!r} of weights file {str(tmp_path / 'bad.pt')!r}" in str(e.value)
    assert str(e.value).endswith("— fix its syntax, or move it away")


def test_the_cap_and_the_floor_are_given_or_default_whatever_the_card():
    card = parse_card({"recommended": {"iou": 0.4}}, "m.yaml")
    r = resolve_settings({"conf_floor": 0.2, "max_det": None}, card)
    assert (r.values["conf_floor"], r.values["max_det"]) == (0.2, 10000)
    assert r.origins["conf_floor"] == {"value": 0.2, "from": "given"}
    assert r.origins["max_det"] == {"value": 10000, "from": "default"}
    # given as the default's value: recorded as the default
    assert resolve_settings({"max_det": 10000}, None).origins["max_det"] == {"value": 10000, "from": "default"}
