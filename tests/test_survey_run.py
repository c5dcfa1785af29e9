"""A run's sample sheet: stored and versioned beside the run without re-running the model, the per-image and
verified tables the survey estimators receive, the cube grouped by sheet columns, export-table and --sheet."""

from __future__ import annotations

import json
import sys
import types

import pandas as pd
import pytest

import musseltools as mt
from musseltools import cli
from musseltools.survey.sheet import SheetError

IDS = list("abcdef")
SHEET = ("image,site,treatment,date,area_m2,lat,lon\n"
         "q/a.jpg,North,caged,2024-05-01,0.25,57.1,-5.2\n" "q/b.jpg,North,open,2024-05-01,0.25,57.1,-5.2\n"
         "q/c.jpg,North,caged,2024-06-01,0.5,57.1,-5.2\n" "q/d.jpg,South,open,2024-05-01,0.5,56.0,-4.0\n"
         "e.jpg,South,caged,2024-06-01,1,56.0,-4.0\n" "f.jpg,South,open,2024-06-01,1,56.0,-4.0\n")


def _run(tmp_path):
    """A hand-built completed run of 6 images under /s (f failed to decode), with known detections."""
    from hand_built_store import commit, detections_part, images_part, write_run

    from musseltools.store.store import Store

    store = Store(tmp_path / "store")
    meta = write_run(store, "r1", "k1", pd.DataFrame({"image_id": IDS, "path": [f"/s/q/{i}.jpg" for i in IDS]}))
    store.write_run({**meta, "collection": {"name": "s", "source": {"kind": "folder", "root": "/s"}}})
    dets = [("a", 0, "mussel", 0.9, 1.0), ("a", 0, "mussel", 0.6, 2.0), ("a", 1, "gaping", 0.8, 3.0),
            ("b", 0, "mussel", 0.7, 1.0), ("b", 2, "shell", 0.3, 2.0), ("c", 1, "gaping", 0.55, 1.0),
            ("d", 0, "mussel", 0.95, 1.0), ("d", 0, "mussel", 0.45, 2.0), ("e", 2, "shell", 0.99, 1.0)]
    commit(store, "k1", "u1", images_part(IDS, n=[3, 2, 1, 2, 1, 0], error=[None] * 5 + ["unreadable"]),
           detections_part(dets))
    (tmp_path / "survey.csv").write_text(SHEET)
    return mt.open_run("r1", store=store.root)


def test_a_sheet_is_stored_as_versions_beside_the_run_and_a_bad_one_attaches_nothing(tmp_path):
    run = _run(tmp_path)
    assert run.sheet() is None and run.sheet_versions().empty
    first = run.attach_sheet(tmp_path / "survey.csv")
    sha1 = run.meta["sheet"]["sha256"]
    stored = run.store.run_dir("r1") / "sheets" / f"{sha1}.parquet"
    assert stored.is_file() and pd.read_parquet(stored)["site"].tolist() == first["site"].tolist()
    assert run.meta["sheet"]["columns"] == ["site", "treatment", "date", "area_m2", "lat", "lon"]
    run.attach_sheet(tmp_path / "survey.csv")  # the same file again: no new version
    assert len(run.sheet_versions()) == 1

    (tmp_path / "survey.csv").write_text(SHEET.replace("q/a.jpg,North", "q/a.jpg,East"))  # edited
    run.attach_sheet(tmp_path / "survey.csv")
    versions = run.sheet_versions()
    assert versions["current"].tolist() == [False, True] and versions["sha256"].iloc[0] == sha1
    assert run.sheet()["site"].iloc[0] == "East" and run.sheet(sha1)["site"].iloc[0] == "North"  # both kept

    (tmp_path / "bad.csv").write_text(SHEET.replace("0.25,57.1", "-1,57.1"))
    before = run.meta
    with pytest.raises(SheetError, match=r"row 2, column 'area_m2': -1 is out of range"):
        run.attach_sheet(tmp_path / "bad.csv")
    after = run.meta
    assert after["sheet"] == before["sheet"] and after["sheet_history"] == before["sheet_history"]
    assert sorted(p.name for p in (run.store.run_dir("r1") / "sheets").iterdir()) == sorted(
        f"{s}.parquet" for s in versions["sha256"])  # nothing written for the bad sheet


def test_the_survey_table_has_one_row_per_image_with_its_counts_and_the_sheets_columns(tmp_path):
    run = _run(tmp_path)
    with pytest.raises(mt.MusselToolsError, match="has no sample sheet .* run.attach_sheet"):
        run.survey_table()
    run.attach_sheet(tmp_path / "survey.csv")
    for t in (None, 0.5, {"mussel": 0.5, "gaping": 0.6, "shell": 0.2}):
        table = run.survey_table(t)
        counts = run.per_image(t)
        assert table["image_id"].tolist() == counts["image_id"].tolist() == IDS  # one row per image
        assert table[["live", "dead"]].values.tolist() == counts[["live", "dead"]].values.tolist()
    table = run.survey_table(0.5)
    assert list(table.columns[:11]) == ["image_id", "path", "sheet_image", "site", "treatment", "date", "lat", "lon",
                                        "area_m2", "live", "dead"]
    assert table[["live", "dead"]].values.tolist() == [[2, 1], [1, 0], [0, 1], [1, 0], [0, 1], [0, 0]]
    assert table["site"].tolist() == ["North"] * 3 + ["South"] * 3 and table["area_m2"].tolist()[3:] == [0.5, 1, 1]


def test_the_verified_table_holds_the_corrected_counts_as_truth_and_the_models_beside_them(tmp_path):
    run = _run(tmp_path)
    run.attach_sheet(tmp_path / "survey.csv")
    assert run.validated_table().empty
    dets = run.detections(0.5)
    run.delete_detection(dets[(dets["image_id"] == "a") & (dets["class_name"] == "gaping")]["detection_id"].iloc[0])
    run.add_detection("b", [5, 5, 20, 20], "gaping")
    run.verify("a")
    run.verify("b")
    run.add_detection("c", [5, 5, 20, 20], "mussel")  # corrected but not verified: no truth
    v = run.validated_table(0.5)
    assert list(v.columns) == ["image_id", "live", "live_model", "dead", "dead_model"]
    assert v.values.tolist() == [["a", 2, 2, 0, 1], ["b", 1, 1, 1, 0]]


class _Fake:
    """Stand-ins for the survey estimators (tests only): they record what the run hands them."""

    def __init__(self, monkeypatch):
        self.calls = []
        for name, fn in (("estimate", "group_estimates"), ("glm", "compare_groups")):
            module = types.ModuleType(f"musseltools.survey.{name}")
            setattr(module, fn, self.recorder(fn))
            monkeypatch.setitem(sys.modules, f"musseltools.survey.{name}", module)

    def recorder(self, fn):
        def record(images, by, categories, **kw):
            self.calls.append((fn, images, by, categories, kw))
            return "estimated"
        return record


def test_by_group_and_compare_groups_hand_the_estimators_the_images_with_results_and_the_verified(
        tmp_path, monkeypatch, caplog):
    run = _run(tmp_path)
    run.attach_sheet(tmp_path / "survey.csv")
    run.verify("a")
    fake = _Fake(monkeypatch)
    assert run.by_group(["site", "date"], threshold=0.5, level=0.9, seed=3) == "estimated"
    fn, images, by, cats, kw = fake.calls[-1]
    assert (fn, by, cats) == ("group_estimates", ["site", "date"], ["live", "dead"])
    assert images["image_id"].tolist() == list("abcde")  # f failed: left out, with a warning
    assert "1 images without a result" in caplog.text
    assert images[["live", "dead"]].values.tolist() == run.survey_table(0.5)[["live", "dead"]].values[:5].tolist()
    assert kw["validated"].values.tolist() == [["a", 2, 2, 1, 1]]
    assert {k: kw[k] for k in ("area", "level", "seed", "n_boot")} == {"area": "area_m2", "level": 0.9, "seed": 3,
                                                                       "n_boot": 2000}
    run.by_group("site", corrected=False)
    assert fake.calls[-1][2] == ["site"] and fake.calls[-1][4]["validated"] is None  # the model alone
    run.unverify("a")
    run.by_group("site")
    assert fake.calls[-1][4]["validated"] is None  # nothing verified: no ratio correction

    assert run.compare_groups("treatment", reference="open", n_boot=50) == "estimated"
    fn, images, factor, cats, kw = fake.calls[-1]
    assert (fn, factor, len(images)) == ("compare_groups", "treatment", 5)
    assert {k: kw[k] for k in ("area", "reference", "n_boot")} == {"area": "area_m2", "reference": "open", "n_boot": 50}
    with pytest.raises(mt.MusselToolsError, match=r"'habitat' is not a column of run r1's sheet — expected one of "
                                                  r"site, treatment, date, area_m2, lat, lon"):
        run.by_group(["site", "habitat"])


def test_images_added_after_the_sheet_must_get_rows_before_groups_are_estimated(tmp_path, monkeypatch):
    run = _run(tmp_path)
    run.attach_sheet(tmp_path / "survey.csv")
    coll = run.store.read_collection("r1")
    from hand_built_store import commit, detections_part, images_part

    run.store.write_collection("r1", pd.concat([coll, pd.DataFrame({"image_id": ["g"], "path": ["/s/q/g.jpg"]})]))
    commit(run.store, "k1", "u2", images_part(["g"]), detections_part([]))
    _Fake(monkeypatch)
    with pytest.raises(mt.MusselToolsError, match=r"1 images of run r1 have no row in its sheet \('/s/q/g.jpg'\)"):
        run.by_group("site")


def test_the_cube_groups_by_sheet_columns(tmp_path):
    run = _run(tmp_path)
    assert "site" not in run.cube().coords
    run.attach_sheet(tmp_path / "survey.csv")
    cube = run.cube()
    by_site = cube["count"].sel(threshold=0.5).groupby("site").sum("image")
    table = run.survey_table(0.5).groupby("site")[["live", "dead"]].sum()
    assert by_site.sel(site="North").values.tolist() == table.loc["North"].tolist()
    assert by_site.sel(site="South").values.tolist() == table.loc["South"].tolist()
    assert cube["area_m2"].values.tolist() == [0.25, 0.25, 0.5, 0.5, 1.0, 1.0]


def test_export_table_writes_tidy_tables_with_the_sheets_columns(tmp_path, capsys):
    run = _run(tmp_path)
    store = str(run.store.root)
    assert cli.main(["attach-sheet", "r1", str(tmp_path / "survey.csv"), "--store", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 6
    assert cli.main(["export-table", "r1", str(tmp_path / "img.csv"), "--store", store, "--threshold", "0.5"]) == 0
    per_image = pd.read_csv(tmp_path / "img.csv")
    assert per_image["image_id"].tolist() == IDS and per_image["live"].tolist() == [2, 1, 0, 1, 0, 0]
    assert per_image["treatment"].tolist() == ["caged", "open"] * 3
    assert cli.main(["export-table", "r1", str(tmp_path / "det.parquet"), "--store", store, "--per", "detection"]) == 0
    per_det = pd.read_parquet(tmp_path / "det.parquet")
    assert len(per_det) == len(run.detections()) == 7  # at the run's threshold, 0.5
    assert per_det[["image_id", "site", "area_m2"]].values.tolist()[0] == ["a", "North", 0.25]
    assert cli.main(["export-table", "r1", str(tmp_path / "det.csv"), "--store", store, "--per", "detection"]) == 0
    assert pd.read_csv(tmp_path / "det.csv")["site"].tolist() == per_det["site"].tolist()
    assert cli.main(["export-table", "r1", str(tmp_path / "x.xlsx"), "--store", store]) == cli.EXIT_ERROR
    assert "expected a name ending in .csv or .parquet" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sheet_given_to_run_is_checked_before_inference_and_a_new_one_infers_nothing(images, tiny_model, tmp_path):
    names = sorted(p.name for p in images.iterdir())
    good = tmp_path / "survey.csv"
    good.write_text("image,site,area_m2\n" + "".join(f"{n},S{i % 2},0.25\n" for i, n in enumerate(names)))
    bad = tmp_path / "bad.csv"
    bad.write_text("image,site,area_m2\n" + "".join(f"{n},S{i % 2},x\n" for i, n in enumerate(names)))
    with pytest.raises(SheetError, match="has 6 problems; nothing was attached"):
        mt.run(images, model=tiny_model, imgsz=128, quiet=True, sheet=bad)
    run = mt.run(images, model=tiny_model, imgsz=128, quiet=True, sheet=good)
    assert run.meta["inferred_this_call"] == 6 and run.sheet()["site"].tolist() == ["S0", "S1"] * 3
    good.write_text(good.read_text().replace("S0", "S9"))
    again = mt.run(images, model=tiny_model, imgsz=128, quiet=True, sheet=good)
    assert again.run_id == run.run_id and again.meta["inferred_this_call"] == 0
    assert again.sheet()["site"].tolist() == ["S9", "S1"] * 3 and len(again.sheet_versions()) == 2


def test_by_group_with_the_real_estimators_gives_the_hand_computed_densities_and_fractions(tmp_path):
    """The run's tables through the shipped estimators: density is the group's count over its area (North: 3
    live on 0.25 + 0.25 + 0.5 m²), the fraction each category's share; the failed image is left out."""
    run = _run(tmp_path)
    run.attach_sheet(tmp_path / "survey.csv")
    est = run.by_group("site", threshold=0.5).set_index(["site", "category"])
    assert est.loc[("North", "live"), ["images", "count", "density", "fraction"]].tolist() == [3, 3, 3.0, 0.6]
    assert est.loc[("North", "dead"), ["count", "density", "fraction"]].tolist() == [2, 2.0, 0.4]
    assert est.loc[("South", "live"), "images"] == 2  # f failed: not a sample
    assert est.loc[("South", "live"), "density"] == pytest.approx(1 / 1.5)
    assert (est["density_low"] < est["density"]).all() and (est["density"] < est["density_high"]).all()
    c = run.compare_groups("treatment", reference="open")
    live = c.differences.set_index("quantity").loc["density live"]
    assert live["estimate"] == pytest.approx(2 / 1.75) and live["reference_estimate"] == pytest.approx(2 / 0.75)
    assert "offset(log(area_m2))" in c.formulas["count_model"]
