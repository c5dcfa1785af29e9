"""A synthetic survey with a design (musseltools.synth.survey): seeded counts from known site truths, frames drawn
with those counts, and the sample sheet beside them (also through ``musseltools synth --survey``)."""

from __future__ import annotations

import pandas as pd

from musseltools.cli import main
from musseltools.synth.survey import draw_survey


def test_draw_survey_is_seeded_and_follows_the_site_truths():
    images, truth = draw_survey(3, 2, 4, seed=5)
    again, truth_again = draw_survey(3, 2, 4, seed=5)
    pd.testing.assert_frame_equal(images, again)
    pd.testing.assert_frame_equal(truth, truth_again)
    assert not draw_survey(3, 2, 4, seed=6)[0].equals(images)
    assert len(images) == 24 and images.groupby(["site", "date"]).size().eq(4).all()
    assert images["image_id"].is_unique and images["area_m2"].between(0.1, 0.3).all()
    assert truth["treatment"].tolist() == ["control", "restored", "control"]
    assert images.set_index("site")["treatment"].groupby(level=0).first().tolist() == truth["treatment"].tolist()
    # the counts follow the truth: over many images the ratio of sums approaches each site's density
    big, t = draw_survey(2, 1, 3000, seed=1, k=5.0)
    dens = big.groupby("site").apply(lambda g: (g["live"] + g["dead"]).sum() / g["area_m2"].sum())
    dead = big.groupby("site").apply(lambda g: g["dead"].sum() / (g["live"] + g["dead"]).sum())
    assert (abs(dens / t.set_index("site")["density_m2"] - 1) < 0.03).all()
    assert (abs(dead - t.set_index("site")["dead_fraction"]) < 0.02).all()


def test_synth_survey_cli_writes_frames_with_the_design_counts_and_the_sheet(tmp_path, capsys):
    assert main(["synth", str(tmp_path), "--survey", "2,1,3", "--seed", "2", "--size", "320x240"]) == 0
    assert "6 images (2 sites x 1 dates x 3)" in capsys.readouterr().out
    sheet = pd.read_csv(tmp_path / "sheet.csv")
    assert list(sheet.columns) == ["path", "site", "date", "treatment", "replicate", "area_m2"]
    assert all((tmp_path / p).is_file() for p in sheet["path"])
    counts = pd.read_csv(tmp_path / "counts.csv")
    drawn, _ = draw_survey(2, 1, 3, seed=2)
    # the frames are drawn with the design's counts; a shell left less than half visible is not labelled
    for c in ("live", "dead"):
        assert (counts[c] <= drawn[c]).all() and counts[c].sum() >= 0.9 * drawn[c].sum(), (counts, drawn)
    assert pd.read_csv(tmp_path / "truth.csv")["site"].tolist() == ["S1", "S2"]
