"""Corrections as CSV, so that they can come from (and go to) other tools.

``musseltools corrections export RUN_ID FILE.csv`` writes every correction of a run's images;
``musseltools corrections import RUN_ID FILE.csv`` checks every row of a file against the run and saves
them all in one atomic save, or none of them: a bad row gets an error naming its line and the file is
not applied.

Columns (a header row; column order is free; empty cells are blank)

``image``
    the image: its path as in the run, its path relative to the collection folder, or its image id.
    Needed by ``add``, ``verify`` and ``unverify``; for ``reclassify`` and ``delete`` the detection
    says which image.
``detection_id``
    the detection (the ``detection_id`` column of ``run.detections()``); needed by ``reclassify`` and
    ``delete``.
``action``
    ``reclassify``, ``delete``, ``add``, ``verify`` (the image was checked by hand), ``unverify`` or
    ``undo``.
``class``
    the new class of ``reclassify`` and ``add``: a class of the model or a category of the class map.
``x1, y1, x2, y2``
    the box of ``add``, in pixels of the image.
``note``, ``author``
    optional (author: the OS user by default).
``polygon``
    optional outline of ``add``, as JSON ``[[x, y], ...]`` in pixels.
``target``
    the ``correction_id`` an ``undo`` cancels.
``correction_id``, ``created_at``
    written by ``export``; on import, a row whose ``correction_id`` is already saved is skipped, so a
    file can be imported twice without doubling anything.

Example file::

    image,detection_id,action,class,x1,y1,x2,y2,note
    ,3f2a9c0d1e7b5a44,reclassify,dead,,,,,gaping
    ,9b1c22d0aa7f3e10,delete,,,,,,two shells seen as one
    quadrat-07.jpg,,add,live,120,340,162,371,under weed
    quadrat-07.jpg,,verify,,,,,,
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..errors import CorrectionError
from ..store.store import atomic_write_bytes
from . import api

if TYPE_CHECKING:  # pragma: no cover
    from .api import CorrectableRun

__all__ = ["CSV_COLUMNS", "export_corrections_csv", "import_corrections_csv"]

#: Columns written by :func:`export_corrections_csv`, in order.
CSV_COLUMNS = ["image", "image_id", "detection_id", "action", "class", "x1", "y1", "x2", "y2", "note", "author",
               "created_at", "correction_id", "target", "polygon"]


def export_corrections_csv(run: CorrectableRun, path: str | os.PathLike) -> int:
    """Write every correction of the run's images (undone ones and undos too) to a CSV; returns how many.

    The file is written atomically. Importing it into a run of the same store changes nothing;
    importing it into another store recreates the corrections.
    """
    table = api.corrections(run)
    out = pd.DataFrame({
        "image": table["path"], "image_id": table["image_id"], "detection_id": table["detection_id"],
        "action": table["kind"], "class": table["class_name"],
        **{c: table[c] for c in ("x1", "y1", "x2", "y2", "note", "author")},
        "created_at": table["created_at"].map(lambda t: t.isoformat() if pd.notna(t) else None),
        "correction_id": table["correction_id"], "target": table["target"],
        "polygon": table["polygon"].map(lambda p: json.dumps([[float(x), float(y)] for x, y in p])
                                        if p is not None and len(p) else None),
    }, columns=CSV_COLUMNS)
    buf = io.StringIO()
    out.to_csv(buf, index=False)
    atomic_write_bytes(Path(path), buf.getvalue().encode())
    return len(out)


def import_corrections_csv(run: CorrectableRun, path: str | os.PathLike) -> dict[str, int]:
    """Check every row of a corrections CSV against the run and save them together, or none.

    Returns ``{"rows": ..., "saved": ..., "already_saved": ...}``.

    Raises
    ------
    CorrectionError
        The file cannot be read, has no ``action`` column, or has bad rows (each named by its line);
        nothing of the file was saved.
    """
    p = Path(path)
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise CorrectionError(f"corrections file {str(p)!r} does not exist — check the path") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CorrectionError(f"cannot read corrections file {str(p)!r}: {exc} — expected a CSV with a header "
                              "row (image,detection_id,action,class,x1,y1,x2,y2,note)") from exc
    df.columns = [str(c).strip() for c in df.columns]
    if "action" not in df.columns:
        raise CorrectionError(f"corrections file {str(p)!r} has no 'action' column (columns: {list(df.columns)}) — "
                              "expected image,detection_id,action,class,x1,y1,x2,y2,note")
    specs, labels, errors = [], [], []
    for i, rec in enumerate(df.to_dict(orient="records")):
        label = f"{p.name} line {i + 2}"
        spec = _spec(rec)
        if isinstance(spec, str):
            errors.append(f"{label}: {spec}")
        else:
            specs.append(spec)
            labels.append(label)
    if errors:
        raise CorrectionError(f"{len(errors)} rows of {str(p)!r} are not valid — nothing of the file was saved — "
                              "fix them and import again:\n  " + "\n  ".join(errors[:20]))
    known = set(api.corrections(run)["correction_id"])
    ids = api.correct(run, specs, labels=labels)
    already = sum(1 for s in specs if s.get("correction_id") in known)
    return {"rows": len(ids), "saved": len(ids) - already, "already_saved": already}


def _spec(rec: dict[str, Any]) -> dict[str, Any] | str:
    """A correction spec from a CSV record, or what is wrong with its cells."""
    def cell(name: str) -> str | None:
        v = rec.get(name)
        return v.strip() if isinstance(v, str) and v.strip() else None

    spec: dict[str, Any] = {"kind": cell("action"), "image": cell("image") or cell("image_id"),
                            "detection_id": cell("detection_id"), "class_name": cell("class"), "note": cell("note"),
                            "author": cell("author"), "target": cell("target"), "correction_id": cell("correction_id")}
    if spec["kind"] is None:
        return "the action is empty — expected reclassify, delete, add, verify, unverify or undo"
    if cell("created_at"):
        try:
            spec["created_at"] = pd.Timestamp(cell("created_at"))
        except ValueError:
            return f"created_at {cell('created_at')!r} is not a time — expected ISO 8601, e.g. 2026-05-01T10:00:00Z"
    if spec["kind"].lower() == "add":
        spec["box"] = [cell(c) for c in ("x1", "y1", "x2", "y2")]
        if any(v is None for v in spec["box"]):
            return "add needs x1, y1, x2 and y2 (the box in pixels)"
    if cell("polygon"):
        try:
            poly = json.loads(cell("polygon"))
            spec["polygon"] = [[float(x), float(y)] for x, y in poly]
        except (ValueError, TypeError):
            return f"polygon {cell('polygon')[:40]!r} is not JSON [[x, y], ...] in pixels"
    return spec
