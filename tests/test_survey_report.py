"""The survey report's pieces for a run with a sample sheet (issue 23, points 5 and 6): the methods paragraph a
researcher pastes into a paper, the per-group table and figures (dot-and-whisker, time series, site map)."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

import musseltools as mt
from musseltools.plots import groups as group_plots
from musseltools.plots.survey import DEAD_COLOUR, LIVE_COLOUR
from musseltools.reports.methods import methods_paragraph

IDS = list("abcdefg")
SHEET = ("image,site,treatment,date,area_m2,lat,lon\n"
         "a.jpg,North,caged,2024-05-01,0.25,57.1,-5.2\n" "b.jpg,North,open,2024-05-01,0.25,57.1,-5.2\n"
         "c.jpg,North,caged,2024-06-01,0.5,57.1,-5.2\n" "d.jpg,South,open,2024-05-01,0.5,56.0,-4.0\n"
         "e.jpg,South,caged,2024-06-01,1,56.0,-4.0\n" "f.jpg,South,open,2024-06-01,1,56.0,-4.0\n"
         "g.jpg,North,open,2024-06-01,0.5,57.1,-5.2\n")
SHA = "ab" * 32
FROM = {"threshold": {"from": "card", "source": "mussels.yaml", "value": 0.5, "how": "a long story"},
        "conf_floor": {"from": "default"}, "iou": {"from": "card", "source": "mussels.yaml", "how": "measured"},
        "imgsz": {"from": "given"}}


def _run(tmp_path, sheet: bool = True):
    """A hand-built completed run of 7 images (one failed), card settings recorded, and its sheet."""
    from hand_built_store import commit, detections_part, images_part, write_run

    from musseltools.store.store import Store

    store = Store(tmp_path / "store")
    meta = write_run(store, "r1", "k1", pd.DataFrame({"image_id": IDS, "path": [f"/s/{i}.jpg" for i in IDS]}),
                     settings={"conf_floor": 0.05, "iou": 0.4, "imgsz": 128}, settings_from=FROM, total_images=7,
                     processed_count=7, failed_count=1,
                     model={"names": {"0": "mussel", "1": "gaping"}, "fingerprint": SHA, "path": "/models/mussels.pt",
                            "family": "ultralytics", "class_map": {"mussel": "live", "gaping": "dead"}})
    store.write_run({**meta, "collection": {"name": "s", "source": {"kind": "folder", "root": "/s"}}})
    dets = [("a", 0, "mussel", 0.9, 1.0), ("a", 0, "mussel", 0.6, 2.0), ("a", 1, "gaping", 0.8, 3.0),
            ("b", 0, "mussel", 0.7, 1.0), ("b", 1, "gaping", 0.9, 2.0), ("c", 1, "gaping", 0.55, 1.0),
            ("d", 0, "mussel", 0.95, 1.0), ("d", 0, "mussel", 0.85, 2.0), ("e", 0, "mussel", 0.99, 1.0),
            ("g", 0, "mussel", 0.9, 1.0), ("g", 1, "gaping", 0.9, 2.0), ("g", 1, "gaping", 0.9, 3.0)]
    commit(store, "k1", "u1", images_part(IDS, n=[3, 2, 1, 2, 1, 0, 3], error=[None] * 5 + ["unreadable", None]),
           detections_part(dets))
    run = mt.open_run("r1", store=store.root)
    if sheet:
        (tmp_path / "survey.csv").write_text(SHEET)
        run.attach_sheet(tmp_path / "survey.csv")
    return run


def test_the_methods_paragraph_names_the_model_its_hash_each_setting_with_its_origin_and_no_groups_without_a_sheet(
        tmp_path):
    text = methods_paragraph(_run(tmp_path, sheet=False))
    assert "weights file mussels.pt" in text and f"SHA-256 {SHA}" in text and "/models/" not in text
    assert "conf_floor = 0.05 (musseltools' defaults)" in text
    assert "iou = 0.4 (recommended by the weights' card mussels.yaml)" in text
    assert "imgsz = 128 (given to the run)" in text
    assert "counted at confidence >= 0.50 (recommended by the weights' card mussels.yaml)" in text
    assert "its classes counted as dead (gaping) and live (mussel)" in text
    assert "6 of 7 images were processed (1 could not be read and was left out)" in text
    assert "a long story" not in text and "verified" not in text and "Against labels" not in text
    for word in ("group", "Densit", "interval", "sheet"):  # no survey design without a sheet
        assert word not in text


def test_the_methods_paragraph_states_the_estimators_the_verified_images_the_evaluation_and_the_glms(tmp_path):
    run = _run(tmp_path)
    run.verify("a")
    run.verify("b")
    evaluation = types.SimpleNamespace(  # what the paragraph reads of an Evaluation
        images_evaluated=5, has_boxes=True, iou=0.5,
        metrics=pd.DataFrame({"class": ["live", "dead"], "precision": [0.912, 0.8], "recall": [0.87, 0.75],
                              "ap50": [0.9, 0.7], "count_mae": [1.25, 0.5], "count_bias": [-0.5, 0.25]}))
    cmp = run.compare_groups("treatment", threshold=0.5)
    text = methods_paragraph(run, evaluation, comparison=cmp, level=0.9)
    assert "2 images were verified by hand; counts include the hand corrections" in text
    assert ("Against labels of 5 images (boxes matched at IoU 0.5), live: precision 0.91, recall 0.87, AP50 0.90, "
            "mean absolute count error 1.25 per image (bias -0.50); dead: precision 0.80") in text
    assert "ratios of sums over the group's images" in text and "the image (quadrat) is the sampling unit" in text
    assert "90% intervals are t intervals" in text and "log scale for densities and the logit scale" in text
    assert "measured on the 2 verified images" in text
    assert f"Levels of treatment were compared with {cmp.reference}" in text
    decisions = cmp.dispersion["decision"].tolist()
    count_nb = decisions[0].startswith("negative binomial")
    assert ("a negative binomial GLM" if count_nb else "a Poisson GLM of each image's count") in text
    assert cmp.formulas["count_model"] in text and cmp.formulas["dead_model"] in text
    overdispersed = types.SimpleNamespace(  # the models the dispersion check chose are the ones named
        factor="site", reference="North", formulas={"count_model": "MASS::glm.nb(x)", "dead_model": "glm(y)"},
        dispersion=pd.DataFrame({"model": ["count (Poisson)", "dead (binomial)"],
                                 "decision": ["negative binomial: Poisson dispersion 4.2", "quasi-binomial: 2.9"]}))
    text = methods_paragraph(run, comparison=overdispersed)
    assert "Levels of site were compared with North" in text and "In R: MASS::glm.nb(x); glm(y)." in text
    assert "a negative binomial GLM of each image's count (Poisson was overdispersed)" in text
    assert "a quasi-binomial GLM of dead out of all mussels per image (binomial was overdispersed)" in text
    kept = overdispersed.dispersion.assign(decision=["Poisson kept: 1.1", "binomial kept: 0.9"])
    text = methods_paragraph(run, comparison=types.SimpleNamespace(**{**vars(overdispersed), "dispersion": kept}))
    assert "a Poisson GLM of each image's count, with log(area)" in text and "was overdispersed" not in text
    assert "and a binomial GLM of dead out of all mussels per image" in text


def test_the_group_table_says_estimate_and_interval_and_never_a_zero_width_one(tmp_path):
    run = _run(tmp_path)
    est = run.by_group(["site", "date"], threshold=0.5)
    table = group_plots.interval_table(est, ["site", "date"])
    assert table.index.names == ["site", "date", "category"]
    north_may = table.loc[("North", "2024-05-01", "live")]  # a (0.25 m², 2 live), b (0.25 m², 1 live)
    assert north_may["images"] == 2 and north_may["count"] == 3
    assert north_may["per m² (95% interval)"].startswith("6.0 (")  # 3 live / 0.5 m²
    # South, 2024-06-01: e only (f failed): one image, no interval, never a zero-width one
    one = table.loc[("South", "2024-06-01", "live")]
    assert one["images"] == 1 and one["per m² (95% interval)"] == "1.0 (no interval)"
    assert "one image" in one["note"]
    assert table.loc[("South", "2024-06-01", "dead"), "fraction (95% interval)"].startswith("0.0%")


def test_the_dot_and_whisker_plot_has_one_row_per_group_in_the_palette_and_hollow_dots_without_interval(tmp_path):
    run = _run(tmp_path)
    est = run.by_group(["site", "date"], threshold=0.5)
    fig = group_plots.group_intervals(est, ["site", "date"])
    left, right = fig.axes
    assert [t.get_text() for t in left.get_yticklabels()] == [
        "North, 2024-05-01", "North, 2024-06-01", "South, 2024-05-01", "South, 2024-06-01"]
    labels = left.get_legend_handles_labels()[1]
    assert set(labels) == {"live", "dead", "live: no interval (not estimable)", "dead: no interval (not estimable)"}
    colours = {line.get_label(): line.get_color() for line in left.get_lines() if not line.get_label().startswith("_")}
    hollow = [line for line in left.get_lines() if line.get_label() == "live: no interval (not estimable)"][0]
    assert hollow.get_markerfacecolor() == "white" and hollow.get_markeredgecolor() == LIVE_COLOUR
    assert hollow.get_ydata().tolist() == pytest.approx([2 - 0.15, 3 - 0.15])  # South's two one-image groups
    assert colours.get("live", LIVE_COLOUR) == LIVE_COLOUR
    assert right.get_xlim() == (0, 1) and "dead fraction" in right.get_xlabel()
    assert any(c.get_color() == DEAD_COLOUR for c in right.get_lines())


def test_the_time_series_names_each_site_and_the_map_places_the_sites_at_their_positions(tmp_path):
    run = _run(tmp_path)
    est = run.by_group(["site", "date"], threshold=0.5)
    fig = group_plots.density_over_time(est)
    assert [ax.get_title() for ax in fig.axes] == ["live per m²", "dead per m²", "dead fraction"]
    for ax in fig.axes:
        assert sorted(t.get_text() for t in ax.texts) == ["North", "South"]  # each line named at its end
        assert [t.get_text() for t in ax.get_xticklabels()] == ["2024-05-01", "2024-06-01"]
    names = fig.axes[0].texts
    assert abs(names[0].get_position()[1] - names[1].get_position()[1]) > 0  # never on top of each other

    by_site = run.by_group("site", threshold=0.5)
    fig = group_plots.site_map(run.sheet(), by_site)
    ax = fig.axes[0]
    offsets = ax.collections[0].get_offsets()
    assert sorted(map(tuple, np.round(offsets, 3))) == [(-5.2, 57.1), (-4.0, 56.0)]
    texts = sorted(t.get_text() for t in ax.texts)
    north = by_site.query("site == 'North'")
    total = north["density"].sum()
    dead = north.set_index("category").at["dead", "fraction"]
    assert texts[0] == f"North\n{total:.0f} per m², {dead:.0%} dead"
    assert ax.get_xlabel() == "longitude (°E)" and ax.get_ylabel() == "latitude (°N)"
    assert ax.get_aspect() == pytest.approx(1 / np.cos(np.radians(56.55)))


def test_the_report_counts_images_per_source_of_scale_and_lists_drawn_scales_that_disagree_with_the_sheet(tmp_path):
    from musseltools.reports.report import scale_tables

    run = _run(tmp_path, sheet=False)
    (tmp_path / "scaled.csv").write_text("image,site,area_m2,mm_per_px\na.jpg,N,0.25,0.5\nb.jpg,N,0.25,0.5\n"
                                         "c.jpg,N,0.25,\n" + "".join(f"{i}.jpg,S,0.25,\n" for i in "defg"))
    run.attach_sheet(tmp_path / "scaled.csv")
    run.set_scale("a", px_length=100, mm=60, author="ana")  # 0.6 mm/px against the sheet's 0.5: 20 % off
    run.set_scale("b", px_length=100, mm=52)  # 4 % off: not flagged
    run.set_scale("c", px_length=200, mm=100)  # no sheet scale: the drawn one applies
    by_source, flagged = scale_tables(run.scales())
    assert by_source["images"].to_dict() == {"drawn": 1, "none (pixels only)": 4, "sheet mm_per_px": 2}
    assert list(flagged.index) == ["a.jpg"] and flagged.loc["a.jpg", "drawn_by"] == "ana"
    assert flagged.loc["a.jpg", "disagreement"] == pytest.approx(0.2)
    assert flagged.loc["a.jpg", "sheet_mm_per_px"] == 0.5 and flagged.loc["a.jpg", "drawn_mm_per_px"] == 0.6
