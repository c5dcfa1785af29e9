"""The report templates musseltools ships, and what a report says before it executes one that changed.

``notebooks/survey_report.ipynb`` is also a notebook people open in JupyterLab, whose autosave writes
outputs into it, and where a cell may be edited by hand. ``musseltools report`` never executes such a
template silently: :func:`prepare_template` clears saved outputs (and says so), and warns when the cells of
the bundled template differ from the cells this version of musseltools ships (their SHA-256 below).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["SHIPPED", "cells_fingerprint", "prepare_template"]

log = logging.getLogger(__name__)

#: SHA-256 of the cells (type and source, without outputs or metadata) of each template as shipped.
#: Change a template, then put its new fingerprint here (tests/test_report_template.py prints it).
SHIPPED = {
    "survey_report.ipynb": "38b863799e5a4e6668eb9326aac7b600f4888d455ad7f61651f303aa9426c726",
}


def cells_fingerprint(nb: Any) -> str:
    """SHA-256 of a notebook's cells: their types and sources (outputs, counts and metadata left out)."""
    cells = [[c.get("cell_type"), "".join(c.get("source", ""))] for c in nb["cells"]]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def prepare_template(source: Path, out_dir: Path, *, bundled: bool) -> Path:
    """The notebook to execute for ``source``: ``source`` itself, or a copy in ``out_dir`` without the outputs
    saved in it. Warns, in one line each, when the template holds outputs, and when a ``bundled`` template's
    cells are not those musseltools ships."""
    import nbformat

    nb = nbformat.read(str(source), as_version=4)
    shipped = SHIPPED.get(source.name)
    if bundled and shipped and cells_fingerprint(nb) != shipped:
        log.warning("report template %s has local edits (its cells differ from the template musseltools ships) "
                    "— executing it as it is — to use the shipped one, restore it (`git checkout %s` in a "
                    "source tree, or reinstall musseltools)", source, source.name)
    code = [c for c in nb.cells if c.get("cell_type") == "code"]
    saved = sum(1 for c in code if c.get("outputs") or c.get("execution_count") is not None)
    if not saved:
        return source
    log.warning("report template %s holds saved outputs in %d cells (was it saved from JupyterLab?) — they are "
                "cleared before it runs — `nbstripout %s` (or `git checkout` it) removes them for good",
                source, saved, source)
    for c in code:
        c.outputs, c.execution_count = [], None
    clean = out_dir / f".template-{source.name}"
    nbformat.write(nb, str(clean))
    return clean
