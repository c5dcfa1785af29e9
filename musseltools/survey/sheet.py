"""The sample sheet: which image is which site, date, treatment, replicate and quadrat, and what area it shows.

A sheet is a CSV or Excel (``.xlsx``) file with one row per image. One column names the image (``image``,
else ``path``, ``file`` or ``filename``): its path relative to the collection folder (``beds/a/q01.jpg``),
its file name alone (``q01.jpg``) when no other image of the run has that name, or its full path. The
other columns are free; these names have a meaning and are checked:

============== ===============================================================================
``site``       text: where (a group)
``date``       a date, ISO 8601 (``2024-05-13``, or with a time); an Excel date cell as it is
``treatment``  text: a group
``replicate``  text
``quadrat``    text
``area_m2``    the area the image shows, in m²: a number > 0 in every row (density needs it)
``lat``        latitude in degrees, -90 to 90 (empty: unknown)
``lon``        longitude in degrees, -180 to 180 (empty: unknown)
``depth_m``    a number (empty: unknown)
``note``       text
``mm_per_px``  the image's scale, mm per pixel: a number > 0 (empty: unknown)
``quadrat_side_m`` the side of the quadrat frame in the image, in m: a number > 0 (empty: unknown)
============== ===============================================================================

Other columns are kept: as numbers when every filled cell is a number, else as text.

Validation collects every problem, each naming the row (as a spreadsheet shows it: the header is row 1),
the column and the reason, and raises one :class:`SheetError` listing them (the first 20, then how many
more); nothing is attached then. Every mismatch between the sheet and the run is an error:

- an image of the run with no row (it could not be put in a group; it is named, never dropped);
- a row naming no image of the run (a typo, or a sheet of another survey: remove the row or fix the name);
- two rows naming one image; a file name shared by several images of the run (give the relative path);
- a non-numeric, empty or non-positive ``area_m2``; an unparseable ``date``; ``lat``/``lon`` out of range;
  a non-numeric ``depth_m``; a column named like one of the run's own (``path``, a category such as ``live``).

A valid sheet becomes a table with ``image_id`` (the run's), ``sheet_row``, ``sheet_image`` (what the
sheet said) and the sheet's other columns, typed as above.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from ..errors import MusselToolsError

__all__ = ["SheetError", "SheetProblem", "IMAGE_COLUMNS", "TEXT_COLUMNS", "NUMBER_COLUMNS", "RESERVED_COLUMNS",
           "MAX_LISTED", "read_sheet_file", "validate_sheet", "load_sheet", "sheet_sha256", "design_columns",
           "with_design_coords"]

#: The columns that may name the image, in the order they are looked for.
IMAGE_COLUMNS = ("image", "path", "file", "filename")
#: Columns kept as text (group labels: ``replicate`` 1, 2, 3 are labels, not numbers).
TEXT_COLUMNS = ("site", "treatment", "replicate", "quadrat", "note")
#: Numeric columns: (lowest, highest, whether the lowest is excluded, whether an empty cell is allowed).
NUMBER_COLUMNS: dict[str, tuple[float, float, bool, bool]] = {
    "area_m2": (0.0, np.inf, True, False),
    "lat": (-90.0, 90.0, False, True),
    "lon": (-180.0, 180.0, False, True),
    "depth_m": (-np.inf, np.inf, False, True),
    "mm_per_px": (0.0, np.inf, True, True),
    "quadrat_side_m": (0.0, np.inf, True, True),
}
#: Column names of the run's own tables (per-image table, detections) that a sheet column may not take.
RESERVED_COLUMNS = ("image_id", "width", "height", "n_detections", "cap_hit", "error", "processed_at", "verified",
                    "sheet_row", "sheet_image", "detection_id", "class_id", "class_name", "confidence", "category",
                    "polygon", "source", "x1", "y1", "x2", "y2")
#: How many problems the error message lists before it says how many more there are.
MAX_LISTED = 20


@dataclass(frozen=True)
class SheetProblem:
    """One problem of a sheet: its row as a spreadsheet shows it (None: the whole sheet), column, reason."""

    row: int | None
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = [f"row {self.row}" if self.row is not None else "", f"column {self.column!r}" if self.column else ""]
        return f"{', '.join(w for w in where if w) or 'sheet'}: {self.reason}"


class SheetError(MusselToolsError):
    """A sample sheet that cannot be attached; ``problems`` lists every :class:`SheetProblem`."""

    def __init__(self, source: str, problems: Sequence[SheetProblem]) -> None:
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:MAX_LISTED])
        more = len(self.problems) - MAX_LISTED
        tail = f"\n  ... and {more} more problem{'s' if more > 1 else ''}" if more > 0 else ""
        super().__init__(
            f"sample sheet {source} has {len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}; nothing "
            f"was attached (rows count as a spreadsheet shows them: the header is row 1):\n{shown}{tail}\n"
            + ("— fix these rows (or add the missing ones) and attach the sheet again"
               if any(p.row is not None or p.column for p in self.problems) else "— give a CSV or .xlsx file"))


def sheet_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a sheet file's bytes: the version of the sheet (``sha256sum survey.csv`` shows it)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_sheet_file(path: str | os.PathLike) -> pd.DataFrame:
    """A sheet file as read, cells untyped: CSV (text cells) or ``.xlsx``/``.xlsm`` (the first worksheet)."""
    p = Path(path)
    if not p.is_file():
        raise SheetError(str(path), [SheetProblem(None, None, "no such file — expected a CSV or .xlsx file")])
    suffix = p.suffix.lower()
    try:
        if suffix in (".xlsx", ".xlsm"):
            raw = pd.read_excel(p, dtype=object, engine="openpyxl")
        elif suffix in (".csv", ".txt", ".tsv"):
            raw = pd.read_csv(p, dtype=str, keep_default_na=False, sep=_delimiter(p), encoding="utf-8-sig")
        else:
            raise SheetError(str(path), [SheetProblem(None, None, f"a {suffix or 'suffix-less'} file — expected "
                                                                  "a .csv or .xlsx file")])
    except SheetError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's: one message
        raise SheetError(str(path), [SheetProblem(None, None, f"unreadable ({type(exc).__name__}: {exc})")]) from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    return raw


def _delimiter(path: Path) -> str:
    """The CSV's delimiter: a comma, a semicolon (spreadsheets in many locales) or a tab, read from its header."""
    import csv

    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    try:
        return csv.Sniffer().sniff(header, delimiters=",;\t").delimiter
    except csv.Error:  # one column: no delimiter to find
        return ","


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT or (
        isinstance(value, str) and not value.strip())


def _number(value: Any) -> float | None:
    """A cell as a number; None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _date(value: Any) -> pd.Timestamp | None:
    """A cell as a date: an Excel date as it is, text in ISO 8601; None when it is neither."""
    if isinstance(value, (pd.Timestamp, np.datetime64)) or hasattr(value, "isoformat"):
        return pd.Timestamp(value)
    try:
        return pd.Timestamp(pd.to_datetime(str(value).strip(), format="ISO8601"))
    except (ValueError, TypeError, OverflowError):
        return None


def _key(path: str, root: str | None) -> str:
    """An image's path relative to the collection folder (forward slashes), else as it is."""
    p = Path(path)
    if root:
        try:
            p = p.relative_to(root)
        except ValueError:
            pass
    return PurePosixPath(*p.parts).as_posix() if p.parts else str(path)


def _matcher(images: pd.DataFrame, root: str | None) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The run's images by relative path and full path (one id each), and by file name (maybe several)."""
    exact: dict[str, str] = {}
    by_name: dict[str, list[str]] = {}
    for image_id, path in zip(images["image_id"], images["path"].astype(str)):
        exact.setdefault(_key(path, root), image_id)
        exact.setdefault(PurePosixPath(*Path(path).parts).as_posix(), image_id)
        ids = by_name.setdefault(Path(path).name, [])
        if image_id not in ids:
            ids.append(image_id)
    return exact, by_name


def _match(raw: pd.DataFrame, column: str, images: pd.DataFrame, root: str | None,
           problems: list[SheetProblem]) -> pd.Series:
    """The run's image id of each row (None where it names none), with a problem per row that fails."""
    exact, by_name = _matcher(images, root)
    ids: list[str | None] = []
    for row, value in zip(raw.index, raw[column]):
        text = "" if _blank(value) else str(value).strip().replace("\\", "/").removeprefix("./")
        found = exact.get(text)
        named = by_name.get(text, []) if found is None and "/" not in text else []
        if len(named) == 1:
            found = named[0]
        elif len(named) > 1:
            problems.append(SheetProblem(row, column, f"{text!r} is the file name of {len(named)} images of the run "
                                                      "— give its path relative to the collection folder"))
        elif found is None:
            problems.append(SheetProblem(row, column, f"{text!r} names no image of the run" if text
                                         else "empty — expected the image's path or file name"))
        ids.append(found)
    return pd.Series(ids, index=raw.index, dtype=object)


def _check_coverage(ids: pd.Series, images: pd.DataFrame, root: str | None, column: str,
                    problems: list[SheetProblem]) -> None:
    """Two rows naming one image, and the images that no row names (listed by path)."""
    named = ids.dropna()
    for rows in named.groupby(named, sort=False).groups.values():
        if len(rows) > 1:
            listed = ", ".join(str(r) for r in rows)
            problems.append(SheetProblem(int(rows[-1]), column, f"rows {listed} name the same image — keep one"))
    seen = set(named)
    distinct = images.drop_duplicates("image_id")
    for image_id, path in zip(distinct["image_id"], distinct["path"].astype(str)):
        if image_id not in seen:
            problems.append(SheetProblem(None, column, f"image {_key(path, root)!r} of the run has no row — add "
                                                       "one (every image needs its place in the design)"))


def _typed_column(name: str, values: pd.Series, problems: list[SheetProblem]) -> pd.Series:
    """A column of the sheet typed by its meaning (see the module's table), problems noted per cell."""
    if name in NUMBER_COLUMNS:
        low, high, open_low, empty_ok = NUMBER_COLUMNS[name]
        out = []
        for row, value in values.items():
            x = None if _blank(value) else _number(value)
            if _blank(value) and not empty_ok:
                problems.append(SheetProblem(row, name, "empty — expected a number"))
            elif x is None and not _blank(value):
                problems.append(SheetProblem(row, name, f"{value!r} is not a number"))
            elif x is not None and (not np.isfinite(x) or x < low or x > high or (open_low and x <= low)):
                bound = f"> {low:g}" if open_low and np.isinf(high) else f"between {low:g} and {high:g}"
                problems.append(SheetProblem(row, name, f"{x:g} is out of range — expected a number {bound}"))
            out.append(np.nan if x is None else x)
        return pd.Series(out, index=values.index, dtype="float64")
    if name == "date":
        stamps = []
        for row, value in values.items():
            d = None if _blank(value) else _date(value)
            if d is None and not _blank(value):
                problems.append(SheetProblem(row, name, f"{value!r} is not a date — expected YYYY-MM-DD (ISO 8601)"))
            stamps.append(pd.NaT if d is None else d.tz_localize(None) if d.tzinfo else d)
        return pd.Series(pd.to_datetime(stamps), index=values.index)
    text = values.map(lambda v: None if _blank(v) else str(v).strip())
    if name not in TEXT_COLUMNS:
        numbers = text.dropna().map(_number)
        if len(numbers) and numbers.notna().all():
            return pd.Series([np.nan if t is None else _number(t) for t in text], index=values.index, dtype="float64")
    return text.astype(object)


def validate_sheet(raw: pd.DataFrame, images: pd.DataFrame, *, root: str | None = None,
                   categories: Iterable[str] = (), source: str = "sheet") -> pd.DataFrame:
    """The sheet checked against the run's images (``image_id, path``): the typed table, or a :class:`SheetError`.

    ``root`` is the collection folder (paths in the sheet are relative to it); ``categories`` the run's count
    columns (``live``, ``dead``), which no sheet column may be named; ``source`` names the sheet in messages.

    Length: one pass that gathers every kind of problem before it raises (the point of the function); each
    kind is a few lines.
    """
    problems: list[SheetProblem] = []
    raw = raw.copy()
    raw.index = pd.RangeIndex(2, len(raw) + 2)  # as a spreadsheet shows them: the header is row 1
    raw = raw.loc[~raw.apply(lambda r: all(_blank(v) for v in r), axis=1)] if len(raw) else raw  # blank lines
    column = next((c for c in IMAGE_COLUMNS if c in raw.columns), None)
    if column is None:
        raise SheetError(source, [SheetProblem(None, None, "no column names the images — expected one named "
                                                           + ", ".join(repr(c) for c in IMAGE_COLUMNS))])
    taken = set(RESERVED_COLUMNS) | set(categories) | ({"path"} - {column})
    problems += [SheetProblem(None, c, f"is a name the run's tables use — rename it (e.g. 'sheet_{c}')")
                 for c in raw.columns if c in taken]
    problems += [SheetProblem(None, c, "a column without a name — name it or delete it")
                 for c in raw.columns if c.startswith("Unnamed:") or not c]
    ids = _match(raw, column, images, root, problems)
    _check_coverage(ids, images, root, column, problems)
    typed = {c: _typed_column(c, raw[c], problems) for c in raw.columns if c != column}
    if problems:
        problems.sort(key=lambda p: (p.row is not None, p.row or 0))
        raise SheetError(source, problems)
    out = pd.DataFrame({"image_id": ids.astype(str), "sheet_row": raw.index.to_numpy(dtype="int64"),
                        "sheet_image": raw[column].map(lambda v: str(v).strip()).to_numpy(dtype=object)})
    for c, values in typed.items():
        out[c] = values.to_numpy()
    return out.reset_index(drop=True)


def load_sheet(path: str | os.PathLike, images: pd.DataFrame, *, root: str | None = None,
               categories: Iterable[str] = ()) -> tuple[pd.DataFrame, str]:
    """Read and validate a sheet file; returns the typed table and the file's SHA-256."""
    raw = read_sheet_file(path)
    return validate_sheet(raw, images, root=root, categories=categories, source=str(path)), sheet_sha256(path)


def design_columns(sheet: pd.DataFrame) -> list[str]:
    """The sheet's own columns (without ``image_id, sheet_row, sheet_image``)."""
    return [c for c in sheet.columns if c not in ("image_id", "sheet_row", "sheet_image")]


def with_design_coords(ds: Any, sheet: pd.DataFrame | None) -> Any:
    """The count cube with the sheet's columns as coordinates along ``image`` (``cube.groupby("site")``).

    Images of the cube without a row get missing values (NaN, NaT, None)."""
    if sheet is None or not len(sheet):
        return ds
    by_id = sheet.drop_duplicates("image_id").set_index("image_id")
    ids = pd.Index(ds["image"].values)
    coords = {}
    for c in design_columns(sheet) + ["sheet_image"]:
        values = by_id[c].reindex(ids)
        coords[c] = ("image", values.to_numpy(dtype=object) if values.dtype == object else values.to_numpy())
    return ds.assign_coords(coords)
