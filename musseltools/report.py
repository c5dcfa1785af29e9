"""Survey reports: execute ``survey_report.ipynb`` with papermill, render it to HTML with nbconvert.

``report()`` and ``musseltools report`` take the same words. The executed notebook
(``OUT/report.ipynb``) is always kept, also when a cell fails (papermill saves it before raising), so
a failure leaves evidence; the HTML (``OUT/report.html``) embeds its figures and hides code cells
unless ``show_code`` is set. papermill and nbconvert are imported only when a report is made.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import MusselToolsError

__all__ = ["report", "ReportError", "notebook_path", "render_html", "register_cli"]

log = logging.getLogger(__name__)

SURVEY_NOTEBOOK = "survey_report.ipynb"


class ReportError(MusselToolsError):
    """A report notebook could not be executed or rendered.

    Attributes ``cell_index`` (index of the failing cell in ``notebook``), ``cell_source`` (its first
    line), ``ename``/``evalue`` (the exception in the kernel) and ``notebook`` (the kept partial
    output notebook) are set when a cell failed.
    """

    def __init__(self, message: str, *, cell_index: int | None = None, cell_source: str | None = None,
                 ename: str | None = None, evalue: str | None = None, notebook: Path | None = None) -> None:
        super().__init__(message)
        self.cell_index, self.cell_source, self.ename, self.evalue = cell_index, cell_source, ename, evalue
        self.notebook = notebook


def notebook_path(name: str = SURVEY_NOTEBOOK) -> Path:
    """Where a bundled notebook is: in the installed package, else the source tree's ``notebooks/``.

    Examples
    --------
    >>> notebook_path("survey_report.ipynb").name
    'survey_report.ipynb'
    """
    here = Path(__file__).resolve().parent
    candidates = [here / "notebooks" / name, here.parent / "notebooks" / name]
    for c in candidates:
        if c.is_file():
            return c
    raise ReportError(
        f"notebook {name!r} not found — looked in {', '.join(str(c.parent) for c in candidates)} — "
        "reinstall musseltools, or pass notebook=PATH"
    )


def _first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip():
            return line.strip()
    return ""


def render_html(notebook: str | os.PathLike, out: str | os.PathLike, *, show_code: bool = False,
                title: str | None = None) -> Path:
    """Render an executed notebook to a standalone HTML file (figures embedded as data URIs).

    Code cells are hidden unless ``show_code``; markdown and outputs are kept.

    Examples
    --------
    >>> render_html("reports/demo/report.ipynb", "reports/demo/report.html")  # doctest: +SKIP
    """
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    _drop_widgets(nb)
    if title:
        nb.metadata["title"] = title
    exporter = HTMLExporter(exclude_input=not show_code, exclude_input_prompt=not show_code,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, out)
    return out


_WIDGET = "application/vnd.jupyter.widget-view+json"


def _drop_widgets(nb: Any) -> None:
    """Remove widget outputs (the run's progress bar) and widget state: a static report shows no live
    widgets, and without them the HTML needs no JavaScript from the network."""
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if _WIDGET not in o.get("data", {})]
    nb.metadata.pop("widgets", None)


def _absolute(p: Any) -> Any:
    if p is None:
        return None
    if isinstance(p, (str, os.PathLike)):
        return str(Path(p).expanduser().resolve())
    if isinstance(p, Sequence):
        return [str(Path(x).expanduser().resolve()) for x in p]
    raise ReportError(f"cannot pass {type(p).__name__} to a report notebook — expected a path or a list of paths")


def report(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    model: str | os.PathLike,
    threshold: float = 0.5,
    store: str | os.PathLike | None = None,
    truth: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    show_code: bool = False,
    title: str | None = None,
    class_map: Mapping[str, str] | None = None,
    tile: int | str | None = None,
    tile_overlap: float = 0.2,
    imgsz: int | None = None,
    n_samples: int = 6,
    conf_floor: float = 0.01,
    iou: float = 0.7,
    max_det: int = 10000,
    batch_size: int | None = None,
    commit_every: int | None = None,
    name: str | None = None,
    device: str | None = None,
    wait: bool | float = False,
    notebook: str | os.PathLike | None = None,
    kernel_name: str = "python3",
) -> Path:
    """Run (or resume) a survey and write its report: ``OUT/report.ipynb`` and ``OUT/report.html``.

    Executes ``notebooks/survey_report.ipynb`` with papermill (the run's keywords become its
    parameters), then renders the HTML with nbconvert. The notebook runs the survey with
    :func:`musseltools.run`, so a report of a finished run infers nothing.

    Parameters
    ----------
    images, model, threshold, store, class_map, tile, tile_overlap, imgsz, conf_floor, iou, max_det,
    batch_size, commit_every, name, device, wait
        As in :func:`musseltools.run` (paths are made absolute before they reach the kernel).
    truth : path, optional
        Labels (YOLO label folder, COCO JSON or counts CSV): adds an evaluation section.
    out : path, optional
        Output folder; ``reports/<collection name>`` by default.
    show_code : bool
        Keep code cells in the HTML (hidden by default).
    title : str, optional
        Report title (default: "Mussel survey: <collection>").
    n_samples : int
        Number of sample images drawn with their detections.
    notebook : path, optional
        Another notebook with the same parameters (default: the bundled survey report).

    Returns
    -------
    Path
        ``OUT/report.html``.

    Raises
    ------
    ReportError
        A cell failed (the message names the cell and the exception; ``OUT/report.ipynb`` keeps the
        partial output), or the notebook could not be executed or rendered.

    Examples
    --------
    >>> import musseltools as mt                                                        # doctest: +SKIP
    >>> mt.report("data/demo/images", model="data/models/mussel-demo.pt", out="reports/demo")  # doctest: +SKIP
    PosixPath('reports/demo/report.html')
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from .store import Store

    if isinstance(images, (str, os.PathLike)):
        collection = name or Path(images).resolve().name
    else:
        collection = name or "survey"
    out_dir = Path(out) if out is not None else Path("reports") / collection
    out_dir.mkdir(parents=True, exist_ok=True)
    out_nb, out_html = out_dir / "report.ipynb", out_dir / "report.html"
    source = Path(notebook) if notebook is not None else notebook_path(SURVEY_NOTEBOOK)
    parameters = {
        "images": _absolute(images), "model": _absolute(model), "threshold": float(threshold),
        "store": str(Store(store).root.resolve()), "truth": _absolute(truth),
        "title": title or f"Mussel survey: {collection}", "class_map": dict(class_map) if class_map else None,
        "n_samples": int(n_samples), "tile": tile, "tile_overlap": float(tile_overlap), "imgsz": None if imgsz is None else int(imgsz),
        "conf_floor": float(conf_floor), "iou": float(iou), "max_det": int(max_det), "batch_size": batch_size,
        "commit_every": commit_every, "name": name, "device": device, "wait": wait,
    }
    log.info("executing %s into %s", source, out_nb)
    try:
        pm.execute_notebook(str(source), str(out_nb), parameters=parameters, kernel_name=kernel_name,
                            cwd=os.getcwd(), progress_bar=False, log_output=False)
    except PapermillExecutionError as exc:
        out_html.unlink(missing_ok=True)  # an older report must not pass for this one
        raise _cell_error(exc, out_nb) from None
    except Exception as exc:  # noqa: BLE001 - kernel died, no kernel, bad notebook: one clear error
        out_html.unlink(missing_ok=True)
        raise ReportError(
            f"report notebook {source} could not be executed ({type(exc).__name__}: {exc}) — expected a "
            f"Jupyter kernel {kernel_name!r} with musseltools installed — check `jupyter kernelspec list`; "
            f"any partial output is in {out_nb}", notebook=out_nb,
        ) from exc
    try:
        render_html(out_nb, out_html, show_code=show_code, title=parameters["title"])
    except Exception as exc:  # noqa: BLE001
        raise ReportError(f"report executed but could not be rendered to HTML ({type(exc).__name__}: {exc}) — "
                          f"the executed notebook is {out_nb}", notebook=out_nb) from exc
    log.info("report written to %s", out_html)
    return out_html


def _cell_error(exc: Any, out_nb: Path) -> ReportError:
    """A ReportError naming the failing cell, found in the output notebook papermill saved."""
    source, index = exc.source or "", exc.cell_index
    try:  # papermill saved the notebook (with its error marker cells) before raising: read the evidence
        import nbformat

        nb = nbformat.read(str(out_nb), as_version=4)
        for i, cell in enumerate(nb.cells):
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
                index, source = i, cell.source
                break
    except Exception as read_exc:  # noqa: BLE001 - papermill's own account is enough
        log.debug("could not read %s: %s", out_nb, read_exc)
    line = _first_line(source)
    return ReportError(
        f"report notebook failed in cell {index} of {out_nb.name} (In [{exc.exec_count}]: {line!r}): "
        f"{exc.ename}: {exc.evalue} — the partial output notebook is kept at {out_nb} — fix the cause and run "
        "the report again",
        cell_index=index, cell_source=line, ename=exc.ename, evalue=exc.evalue, notebook=out_nb,
    )


# ------------------------------------------------------------------------------------------------ CLI
def _cmd_report(args: argparse.Namespace) -> int:
    from .cli import run_kwargs

    path = report(args.images, **run_kwargs(args), truth=args.truth, out=args.out, show_code=args.show_code,
                  title=args.title, n_samples=args.n_samples)
    print(f"report written to {path}")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``musseltools report IMAGES --model WEIGHTS [--truth DIR] --out reports/NAME [--show-code]``."""
    from .cli import _positive_int, add_run_options

    p = sub.add_parser("report", help="run (or resume) a survey and write its HTML report",
                       description="Execute the survey report notebook with papermill into OUT/report.ipynb "
                       "and render OUT/report.html (code hidden unless --show-code).")
    add_run_options(p)
    p.add_argument("--truth", metavar="DIR", help="labels (YOLO folder, COCO JSON or counts CSV) to evaluate against")
    p.add_argument("--out", metavar="DIR", help="output folder (reports/<collection name>)")
    p.add_argument("--show-code", action="store_true", help="keep code cells in the HTML")
    p.add_argument("--title", help="report title")
    p.add_argument("--n-samples", type=_positive_int, default=6, metavar="N", help="sample images drawn (6)")
    p.set_defaults(func=_cmd_report)


class _CallableModule(types.ModuleType):
    """``musseltools.report`` stays callable when the submodule import replaces the package's function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
