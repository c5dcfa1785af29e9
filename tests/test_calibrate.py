"""Calibration from a few labelled images: settings chosen by cross-validation, cached runs, the card written."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import IMGSZ, write_images

import musseltools as mt
from musseltools import cli
from musseltools.evaluation.calibrate import choose_setting, search_grid
from musseltools.evaluation.crossval import cross_validate, folds
from musseltools.models import read_card
from musseltools.models.card import CardExistsError
from musseltools.runs import engine


def _dets(conf_by_image: dict[str, list[float]]) -> pd.DataFrame:
    rows = [(i, "live", c) for i, cs in conf_by_image.items() for c in cs]
    return pd.DataFrame(rows, columns=["image_id", "class", "confidence"])


def test_cross_validation_prefers_the_setting_that_holds_on_unseen_images():
    """Setting A fits the four images exactly at one threshold (in-sample error 0) only because image b
    needs a threshold no other image asks for: held out, b is counted at the others' threshold and its
    eight extra boxes count. Setting B is always one short (error 1 in-sample and held out). Choosing by
    in-sample error takes A; cross-validation takes B."""
    truth = pd.DataFrame({"live": [2, 2, 2, 2]}, index=pd.Index(list("abcd"), name="image_id"))
    a = _dets({"a": [0.95, 0.9, 0.15, 0.1], "b": [0.95, 0.9, *np.linspace(0.88, 0.8, 8)],
               "c": [0.95, 0.9, 0.3, 0.2], "d": [0.95, 0.9, 0.5, 0.4]})
    b = _dets({k: [0.9] for k in "abcd"})
    cv_a = cross_validate(a, truth, ["live"], conf_floor=0.01, fallback={"live": 0.5})
    cv_b = cross_validate(b, truth, ["live"], conf_floor=0.01, fallback={"live": 0.5})
    assert cv_a.method == "leave-one-out"
    assert cv_a.in_sample_error == 0 and cv_b.in_sample_error == 1
    assert cv_a.cv_errors.tolist() == [0, 8, 0, 0] and cv_a.cv_error == 2  # b held out: 8 boxes too many
    assert cv_b.cv_error == 1
    rows = pd.DataFrame([{"setting": name, "count_error": cv.in_sample_error, "cv_count_error": cv.cv_error}
                         for name, cv in (("run", cv_a), ("A", cv_a), ("B", cv_b))])
    assert choose_setting(rows).loc[lambda t: t["chosen"], "setting"].tolist() == ["B"]


def test_folds_hold_every_image_out_once():
    assert folds(9)[0] == "leave-one-out" and [h.tolist() for h in folds(3)[1]] == [[0], [1], [2]]
    method, held = folds(23)
    assert method == "5-fold" and len(held) == 5
    assert sorted(np.concatenate(held).tolist()) == list(range(23))


def test_the_grid_searches_tiles_only_for_tiled_runs_and_starts_at_the_run():
    flat = search_grid({"iou": 0.45, "tile": None, "imgsz": 320})
    assert [s.iou for s in flat][:2] == [0.45, 0.3] and len(flat) == 9 and {s.tile for s in flat} == {None}
    tiled = search_grid({"iou": 0.7, "tile": 320, "imgsz": 320, "tile_merge": "ios"})
    assert (tiled[0].iou, tiled[0].tile, tiled[0].tile_merge) == (0.7, 320, "ios")
    assert {s.tile for s in tiled} == {320, 480, 640} and {s.tile_merge for s in tiled} == {"edge", "ios", "nmm"}
    assert len(tiled) == 81


@pytest.fixture
def survey(tmp_path, tiny_model):
    """A card-less copy of the tiny model, a run over 6 images, and hand counts of 3 of them."""
    weights = tmp_path / "models" / "mine.pt"
    weights.parent.mkdir()
    shutil.copy(tiny_model, weights)
    folder = tmp_path / "images"
    write_images(folder, 6)
    run = mt.run(folder, model=weights, imgsz=IMGSZ, store=tmp_path / "store", quiet=True, workers=1)
    counts = tmp_path / "counts.csv"
    counts.write_text("image,live,dead\nimg0000.jpg,2,1\nimg0001.jpg,0,3\nimg0002.jpg,4,0\n")
    return run, weights, counts


def test_calibrate_infers_only_the_labelled_images_once_and_writes_a_card_runs_use(survey, tmp_path):
    run, weights, counts = survey
    cal = mt.calibrate(run, counts, ious=[0.5, 0.7], workers=1)
    assert cal.n_images == 3 and cal.method == "leave-one-out"
    assert cal.inferred == 3  # iou 0.5 on the 3 labelled images; 0.7 is the run's own: cached
    at_05 = cal.table[cal.table["iou"].eq(0.5) & cal.table["fitted"]].iloc[0]
    assert mt.open_run(at_05["run_id"], store=run.store).meta["total_images"] == 3
    assert cal.table["chosen"].sum() == 1 and cal.table["cv_count_error"].notna().all()
    assert "*" in cal.table_text() and "Chosen by leave-one-out" in cal.report()
    again = mt.calibrate(run, counts, ious=[0.5, 0.7], workers=1)
    assert again.inferred == 0 and again.table["cv_count_error"].tolist() == cal.table["cv_count_error"].tolist()

    card = weights.with_suffix(".yaml")
    assert cal.write_card() == str(card)
    written = read_card(weights)
    assert written.recommended["iou"] == cal.chosen.iou and written.recommended["threshold"] == cal.thresholds
    assert "3 labelled images" in written.how["iou"] and "musseltools calibrate" in written.how["threshold"]
    new = mt.run(tmp_path / "images", model=weights, imgsz=IMGSZ, store=run.store, quiet=True, workers=1)
    table = new.settings_table()
    assert table.loc["iou", "from"] == "card (mine.yaml)" and new.meta["settings"]["iou"] == cal.chosen.iou
    assert table.loc["threshold", "from"] == "card (mine.yaml)" and new.thresholds == cal.thresholds


def test_a_card_is_never_overwritten_without_force_and_a_forced_one_is_backed_up(survey):
    run, weights, counts = survey
    card = weights.with_suffix(".yaml")
    card.write_text("recommended:\n  iou: 0.55\nhow:\n  iou: by hand\n")
    cal = mt.calibrate(run, counts, ious=[0.7], workers=1)
    with pytest.raises(CardExistsError, match="already exists"):
        cal.write_card()
    assert card.read_text() == "recommended:\n  iou: 0.55\nhow:\n  iou: by hand\n"
    cal.write_card(force=True)
    backups = list(card.parent.glob("mine.yaml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == "recommended:\n  iou: 0.55\nhow:\n  iou: by hand\n"
    assert read_card(weights).recommended["iou"] == 0.7


def test_cli_calibrate_prints_json_and_refuses_to_overwrite_a_card(survey, capsys):
    run, weights, counts = survey
    base = ["calibrate", run.run_id, str(counts), "--store", str(run.store.location), "--iou", "0.7"]
    assert cli.main([*base, "--json", "--write-card"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 3 and out["card"] == str(weights.with_suffix(".yaml")) and out["chosen"]["iou"] == 0.7
    assert cli.main([*base, "--write-card"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli.main(base) == 0
    assert "nothing written" in capsys.readouterr().out


def test_few_or_unlike_labelled_images_are_warned_of_with_their_figures(tmp_path, tiny_model):
    folder = tmp_path / "images"
    write_images(folder, 2, size=(128, 96))
    write_images(folder, 5, size=(256, 192), start=2, seed=1)
    run = mt.run(folder, model=tiny_model, imgsz=IMGSZ, store=tmp_path / "store", quiet=True, workers=1)
    counts = tmp_path / "counts.csv"
    counts.write_text("image,live,dead\nimg0000.jpg,1,1\nimg0001.jpg,2,0\n")
    cal = mt.calibrate(run, counts, ious=[0.7], workers=1)
    text = "\n".join(cal.warnings)
    assert "only 2 labelled images" in text
    assert "median 128x96 px" in text and "median 256x192 px" in text


def test_a_model_without_a_card_says_so_once(survey, tmp_path, monkeypatch, caplog):
    run, weights, counts = survey
    monkeypatch.setattr(engine, "_CARDLESS_SAID", set())
    with caplog.at_level(logging.INFO, logger="musseltools.runs.engine"):
        mt.run(tmp_path / "images", model=weights, imgsz=IMGSZ, iou=0.6, store=run.store, quiet=True, workers=1)
        mt.run(tmp_path / "images", model=weights, imgsz=IMGSZ, iou=0.65, store=run.store, quiet=True, workers=1)
    said = [r.getMessage() for r in caplog.records if "has no card" in r.getMessage()]
    assert len(said) == 1 and "musseltools calibrate" in said[0] and "tile_merge" in said[0]
    caplog.clear()
    monkeypatch.setattr(engine, "_CARDLESS_SAID", set())
    weights.with_suffix(".yaml").write_text("recommended:\n  iou: 0.5\n")
    with caplog.at_level(logging.INFO, logger="musseltools.runs.engine"):
        mt.run(tmp_path / "images", model=weights, imgsz=IMGSZ, iou=0.55, store=run.store, quiet=True, workers=1)
    assert not [r for r in caplog.records if "has no card" in r.getMessage()]


def test_the_notebook_panel_writes_the_card_once_and_replaces_it_only_when_asked(survey):
    """Issue 25, point 5: the panel shows the table and the chosen settings; its button writes the card; a
    second click says the card exists and keeps it; with *replace* ticked it is replaced, a backup kept."""
    from musseltools.jupyter import CalibrationPanel

    run, weights, counts = survey
    cal = mt.calibrate(run, counts, ious=[0.5, 0.7], workers=1)
    panel = CalibrationPanel(cal)
    assert "cv count error" in panel.table_html.value and cal.chosen.label in panel.table_html.value
    assert f"<code>iou</code>: {cal.chosen.iou:g}" in panel.chosen_html.value
    card = weights.with_suffix(".yaml")
    assert panel.card_path == str(card) and not card.exists()
    panel.button.click()
    assert read_card(weights).recommended["iou"] == cal.chosen.iou and "card written to" in panel.status_html.value
    card.write_text("recommended:\n  iou: 0.55\n")  # changed by hand since
    panel.button.click()
    assert "not written" in panel.status_html.value and "already exists" in panel.status_html.value
    assert card.read_text() == "recommended:\n  iou: 0.55\n"
    panel.force.value = True
    panel.button.click()
    assert read_card(weights).recommended["iou"] == cal.chosen.iou and "card written to" in panel.status_html.value
    assert [b.read_text() for b in card.parent.glob("mine.yaml.bak-*")] == ["recommended:\n  iou: 0.55\n"]
