"""The sample sheet (musseltools.survey.sheet): matching rows to a run's images, typing the meaningful columns, and
one error that lists every bad row (row, column, reason) — one test per kind of bad row."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from musseltools.survey.sheet import SheetError, load_sheet, read_sheet_file, validate_sheet

ROOT = "/survey"
IMAGES = pd.DataFrame({"image_id": ["ia", "ib", "ic", "id"],
                       "path": ["/survey/bed1/q1.jpg", "/survey/bed1/q2.jpg", "/survey/bed2/q1.jpg", "/survey/bed2/q3.jpg"]})
GOOD = [  # the image named by its relative path, its unique file name, or its full path
    {"image": "bed1/q1.jpg", "site": "North", "date": "2024-05-01", "area_m2": "0.25", "lat": "57.1", "lon": "-5.2",
     "replicate": "1", "temp_c": "11.5", "diver": "ann"},
    {"image": "q2.jpg", "site": "North", "date": "2024-05-01", "area_m2": "0.25", "lat": "", "lon": "",
     "replicate": "2", "temp_c": "12", "diver": "bo"},
    {"image": "bed2/q1.jpg", "site": "South", "date": "2024-06-01T10:30", "area_m2": "1", "lat": "-90", "lon": "180",
     "replicate": "1", "temp_c": "", "diver": "3"},
    {"image": "/survey/bed2/q3.jpg", "site": "South", "date": "", "area_m2": "0.5", "lat": "", "lon": "",
     "replicate": "2", "temp_c": "9", "diver": "ann"},
]


def sheet(rows=GOOD, **changes):
    """The good sheet as read from a CSV (text cells), with cells changed: ``{(row_index, column): value}``."""
    frame = pd.DataFrame(rows).astype(str)
    for (i, col), value in changes.get("cells", {}).items():
        frame.loc[i, col] = value
    return frame


def problems(raw, images=IMAGES, **kw):
    with pytest.raises(SheetError) as info:
        validate_sheet(raw, images, root=ROOT, categories=["live", "dead"], **kw)
    return [(p.row, p.column, p.reason) for p in info.value.problems], str(info.value)


def test_a_good_sheet_matches_each_image_once_and_types_the_columns_by_meaning():
    out = validate_sheet(sheet(), IMAGES, root=ROOT, categories=["live", "dead"])
    assert out["image_id"].tolist() == ["ia", "ib", "ic", "id"]
    assert out["sheet_row"].tolist() == [2, 3, 4, 5]  # as a spreadsheet shows them: the header is row 1
    assert out["sheet_image"].tolist() == ["bed1/q1.jpg", "q2.jpg", "bed2/q1.jpg", "/survey/bed2/q3.jpg"]
    assert out["area_m2"].tolist() == [0.25, 0.25, 1.0, 0.5]
    assert out["lat"].isna().tolist() == [False, True, False, True] and out.loc[2, "lon"] == 180.0
    assert out["date"].tolist()[:3] == [pd.Timestamp("2024-05-01"), pd.Timestamp("2024-05-01"),
                                        pd.Timestamp("2024-06-01 10:30")] and pd.isna(out.loc[3, "date"])
    assert out["replicate"].tolist() == ["1", "2", "1", "2"]  # a group label, not a number
    assert out["temp_c"].dtype == "float64" and out["temp_c"].isna().tolist() == [False, False, True, False]
    assert out["diver"].tolist() == ["ann", "bo", "3", "ann"]  # a free column with text stays text
    assert list(out.columns) == ["image_id", "sheet_row", "sheet_image", "site", "date", "area_m2", "lat", "lon",
                                 "replicate", "temp_c", "diver"]


def test_an_xlsx_sheet_reads_with_its_date_and_number_cells(tmp_path):
    frame = pd.DataFrame({"file": ["bed1/q1.jpg", "q2.jpg", "bed2/q1.jpg", "q3.jpg"],
                          "date": pd.to_datetime(["2024-05-01", "2024-05-02", "2024-05-03", "2024-05-04"]),
                          "area_m2": [0.25, 0.25, 1, 2], "treatment": ["caged", "open", "caged", "open"]})
    frame.to_excel(tmp_path / "survey.xlsx", index=False)
    (tmp_path / "survey.csv").write_text("file,area_m2\nbed1/q1.jpg,1\nq2.jpg,1\nbed2/q1.jpg,1\nq3.jpg,1\n")
    out, sha = load_sheet(tmp_path / "survey.xlsx", IMAGES, root=ROOT)
    assert out["date"].tolist() == list(frame["date"]) and out["area_m2"].tolist() == [0.25, 0.25, 1.0, 2.0]
    assert out["image_id"].tolist() == ["ia", "ib", "ic", "id"] and re.fullmatch(r"[0-9a-f]{64}", sha)
    assert load_sheet(tmp_path / "survey.csv", IMAGES, root=ROOT)[1] != sha  # the version is the file's bytes
    (tmp_path / "semicolons.csv").write_text("image;site;area_m2\nq1.jpg;North;0.5\n")
    assert read_sheet_file(tmp_path / "semicolons.csv").to_dict("records") == [
        {"image": "q1.jpg", "site": "North", "area_m2": "0.5"}]  # as a spreadsheet in many locales writes it
    (tmp_path / "one.csv").write_text("image\nbed1/q1.jpg\n")
    assert read_sheet_file(tmp_path / "one.csv").to_dict("records") == [{"image": "bed1/q1.jpg"}]
    (tmp_path / "survey.ods").write_bytes(b"PK")
    with pytest.raises(SheetError, match=r"a \.ods file — expected a \.csv or \.xlsx file"):
        read_sheet_file(tmp_path / "survey.ods")
    with pytest.raises(SheetError, match=r"sheet: no such file — expected a CSV or \.xlsx file"):
        read_sheet_file(tmp_path / "gone.csv")


def test_an_image_of_the_run_with_no_row_is_named():
    found, _ = problems(sheet(GOOD[:3]))
    assert found == [(None, "image", "image 'bed2/q3.jpg' of the run has no row — add one (every image needs its "
                                     "place in the design)")]


def test_a_row_naming_no_image_of_the_run_is_named():
    found, _ = problems(sheet(GOOD + [{**GOOD[0], "image": "bed9/q1.jpg"}]))
    assert found == [(6, "image", "'bed9/q1.jpg' names no image of the run")]
    found, _ = problems(sheet(cells={(1, "image"): ""}))
    assert (3, "image", "empty — expected the image's path or file name") in found


def test_two_rows_for_one_image_are_named():
    found, _ = problems(sheet(GOOD + [{**GOOD[0], "image": "/survey/bed1/q1.jpg"}]))  # same image, by its full path
    assert found == [(6, "image", "rows 2, 6 name the same image — keep one")]


def test_a_file_name_shared_by_two_images_must_be_a_relative_path():
    found, _ = problems(sheet(cells={(0, "image"): "q1.jpg"}))
    assert (2, "image", "'q1.jpg' is the file name of 2 images of the run — give its path relative to the "
                        "collection folder") in found


@pytest.mark.parametrize(("value", "reason"), [
    ("abc", "'abc' is not a number"),
    ("0", "0 is out of range — expected a number > 0"),
    ("-0.25", "-0.25 is out of range — expected a number > 0"),
    ("", "empty — expected a number"),
    ("inf", "inf is out of range — expected a number > 0"),
])
def test_a_non_numeric_or_non_positive_area_is_named(value, reason):
    found, _ = problems(sheet(cells={(2, "area_m2"): value}))
    assert found == [(4, "area_m2", reason)]


@pytest.mark.parametrize("value", ["2024-13-01", "01/05/2024", "last May", "2024-02-30"])
def test_an_unparseable_date_is_named(value):
    found, _ = problems(sheet(cells={(1, "date"): value}))
    assert found == [(3, "date", f"{value!r} is not a date — expected YYYY-MM-DD (ISO 8601)")]


@pytest.mark.parametrize(("column", "value", "reason"), [
    ("lat", "90.5", "90.5 is out of range — expected a number between -90 and 90"),
    ("lat", "-91", "-91 is out of range — expected a number between -90 and 90"),
    ("lon", "180.01", "180.01 is out of range — expected a number between -180 and 180"),
    ("lon", "-200", "-200 is out of range — expected a number between -180 and 180"),
    ("lat", "north", "'north' is not a number"),
])
def test_lat_or_lon_out_of_range_is_named(column, value, reason):
    found, _ = problems(sheet(cells={(0, column): value}))
    assert found == [(2, column, reason)]


def test_a_column_named_like_the_runs_own_is_refused_and_a_sheet_without_an_image_column_too():
    found, _ = problems(sheet().assign(live="3", path="x"))
    assert (None, "live", "is a name the run's tables use — rename it (e.g. 'sheet_live')") in found
    assert (None, "path", "is a name the run's tables use — rename it (e.g. 'sheet_path')") in found
    found, message = problems(sheet().rename(columns={"image": "photo"}))
    assert found == [(None, None, "no column names the images — expected one named 'image', 'path', 'file', "
                                  "'filename'")]


def test_every_bad_row_is_in_one_message_up_to_20_then_a_count():
    many = pd.DataFrame({"image": [f"nope{i}.jpg" for i in range(30)], "area_m2": ["1"] * 30})
    found, message = problems(many.astype(str))
    assert len(found) == 30 + 4  # 30 rows naming nothing, 4 images without a row
    assert message.count("\n  - ") == 20 and "... and 14 more problems" in message
    assert message.startswith("sample sheet sheet has 34 problems; nothing was attached")
    mixed, message = problems(sheet(cells={(0, "area_m2"): "0", (1, "date"): "soon", (3, "lon"): "999"}))
    assert [(r, c) for r, c, _ in mixed] == [(2, "area_m2"), (3, "date"), (5, "lon")]
    assert "row 2, column 'area_m2': 0 is out of range" in message and "row 5, column 'lon'" in message
