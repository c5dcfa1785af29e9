"""Survey reports: execute ``survey_report.ipynb`` with papermill, render it to HTML with nbconvert.

``report()`` and ``musseltools report`` take the same words. The executed notebook
(``OUT/report.ipynb``) is always kept, also when a cell fails (papermill saves it before raising), so
a failure leaves evidence; the HTML (``OUT/report.html``) embeds its figures and hides code cells
unless ``show_code`` is set. papermill and nbconvert are imported only when a report is made.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.options import OPTIONS
from ..errors import MusselToolsError
from .templates import prepare_template

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["report", "ReportError", "notebook_path", "render_html", "scale_tables"]

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
    candidates = [here / "notebooks" / name, here.parents[1] / "notebooks" / name]
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
    _images_with_alt(nb)
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


def _images_with_alt(nb: Any) -> None:
    """Images whose output metadata carries an ``alt`` text become HTML ``<img alt=...>`` outputs, so the
    report's figures have text alternatives (nbconvert's templates drop that metadata)."""
    import html

    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data, meta = out.get("data", {}), out.get("metadata", {})
            alt = (meta.get("image/png") or {}).get("alt") or meta.get("alt")
            if "image/png" in data and alt and "text/html" not in data:
                src = str(data["image/png"]).replace("\n", "")
                data["text/html"] = f'<img alt="{html.escape(str(alt))}" src="data:image/png;base64,{src}">'
                del data["image/png"]


def _drop_widgets(nb: Any) -> None:
    """Remove widget outputs (the run's progress bar), stderr streams (log lines, warnings: the kernel's
    diagnostics, not the reader's) and widget state: a static report shows no live widgets, and without them
    the HTML needs no JavaScript from the network."""
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if _WIDGET not in o.get("data", {})
                            and not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    nb.metadata.pop("widgets", None)


def _absolute(p: Any) -> Any:
    if p is None:
        return None
    if isinstance(p, (str, os.PathLike)):
        return str(Path(p).expanduser().resolve())
    if isinstance(p, Sequence):
        return [str(Path(x).expanduser().resolve()) for x in p]
    raise ReportError(f"cannot pass {type(p).__name__} to a report notebook — expected a path or a list of paths")


#: Folder names that say what is in a folder, not which survey it is: a report titles such a folder by its parent.
GENERIC_FOLDERS = frozenset({"images", "image", "imgs", "img", "photos", "photo", "pictures", "frames", "jpg",
                             "jpeg", "raw", "data", "survey"})


def survey_title(images: Any) -> str:
    """The default title of a report: "Mussel survey: " and the collection's folder name, or its parent's
    when the folder's own name is generic (``data/demo/images`` gives "Mussel survey: demo")."""
    if not isinstance(images, (str, os.PathLike)):
        return "Mussel survey"
    path = Path(str(images))
    name = path.name or str(path)
    if name.lower() in GENERIC_FOLDERS:
        parent = Path(os.path.abspath(path)).parent.name if "://" not in str(images) else path.parent.name
        name = parent or name
    return f"Mussel survey: {name}"


def scale_tables(scales: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The report's scale tables from ``run.scales()``: the number of images per source of scale (``none
    (pixels only)`` for images without one), and the drawn scales flagged for disagreeing with the sheet by
    more than 10 % (``image, sheet_mm_per_px, drawn_mm_per_px, disagreement, drawn_by``; empty when none)."""
    by_source = (scales.groupby(scales["source"].fillna("none (pixels only)"))["image_id"].count()
                 .rename("images").rename_axis("scale from").to_frame())
    flagged = scales[scales["flagged"].astype(bool)]
    flagged = flagged.assign(image=flagged["path"].map(lambda p: Path(str(p)).name))[
        ["image", "sheet_mm_per_px", "drawn_mm_per_px", "disagreement", "drawn_by"]].set_index("image")
    return by_source, flagged


def _parameters(values: Mapping[str, Any], collection: str) -> dict[str, Any]:
    """The notebook's papermill parameters (the options marked ``notebook`` in :mod:`musseltools.core.options`):
    paths made absolute, numbers plain, the store resolved, the title filled in."""
    from ..store.store import Store

    params = {o.name: values[o.name] for o in OPTIONS.notebook_parameters()}
    for key in ("images", "model", "truth", "compare_model", "sheet"):
        params[key] = _absolute(params[key])
    for key, kind in (("threshold", float), ("min_length_mm", float), ("tile_overlap", float), ("conf_floor", float), ("iou", float),
                      ("max_det", int), ("n_samples", int), ("imgsz", int)):
        if params[key] is not None and not isinstance(params[key], Mapping):
            params[key] = kind(params[key])
    params["store"] = Store(params["store"]).location
    params["title"] = params["title"] or (survey_title(values["images"]) if values.get("name") is None
                                          else f"Mussel survey: {collection}")
    params["class_map"] = dict(params["class_map"]) if params["class_map"] else None
    return params


def report(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    model: str | os.PathLike,
    model_family: str | None = OPTIONS.model_family.default,
    trust_pickle: bool = OPTIONS.trust_pickle.default,
    threshold: float | Mapping[str, float] | None = OPTIONS.threshold.default,
    min_length_mm: float | None = OPTIONS.min_length_mm.default,
    store: str | os.PathLike | None = OPTIONS.store.default,
    truth: str | os.PathLike | None = OPTIONS.truth.default,
    out: str | os.PathLike | None = OPTIONS.out.default,
    show_code: bool = OPTIONS.show_code.default,
    title: str | None = OPTIONS.title.default,
    class_map: Mapping[str, str] | None = OPTIONS.class_map.default,
    sheet: str | os.PathLike | None = OPTIONS.sheet.default,
    tile: int | str | None = OPTIONS.tile.default,
    tile_overlap: float | None = OPTIONS.tile_overlap.default,
    tile_merge: str | None = OPTIONS.tile_merge.default,
    backend: str = OPTIONS.backend.default,
    imgsz: int | None = OPTIONS.imgsz.default,
    n_samples: int = OPTIONS.n_samples.default,
    compare_model: str | os.PathLike | None = OPTIONS.compare_model.default,
    conf_floor: float = OPTIONS.conf_floor.default,
    iou: float | None = OPTIONS.iou.default,
    max_det: int = OPTIONS.max_det.default,
    batch_size: int | None = OPTIONS.batch_size.default,
    commit_every: int | None = OPTIONS.commit_every.default,
    name: str | None = OPTIONS.name.default,
    device: str | None = OPTIONS.device.default,
    wait: bool | float = OPTIONS.wait.default,
    workers: int | None = OPTIONS.workers.default,
    scheduler: str | None = OPTIONS.scheduler.default,
    scheduler_file: str | None = OPTIONS.scheduler_file.default,
    notebook: str | os.PathLike | None = None,
    kernel_name: str = "python3",
) -> Path:
    """Run (or resume) a survey and write its report: ``OUT/report.ipynb`` and ``OUT/report.html``.

    Executes ``notebooks/survey_report.ipynb`` with papermill (the run's keywords become its
    parameters), then renders the HTML with nbconvert. The notebook runs the survey with
    :func:`musseltools.run`, so a report of a finished run infers nothing.

    Length: the signature spells out every run option as a keyword (for ``help()`` and editors) and
    this docstring documents them; the body itself is a dozen lines.

    Parameters
    ----------
    images, model, threshold, min_length_mm, store, class_map, sheet, tile, tile_overlap, imgsz, conf_floor, iou,
    max_det, batch_size, commit_every, name, device, wait, workers, scheduler, scheduler_file
        As in :func:`musseltools.run` (paths are made absolute before they reach the kernel).
    truth : path, optional
        Labels (YOLO label folder, COCO JSON or counts CSV): adds an evaluation section.
    out : path, optional
        Output folder; ``reports/<collection name>`` by default.
    show_code : bool
        Keep code cells in the HTML (hidden by default).
    title : str, optional
        Report title (default: "Mussel survey: <collection>", the images' folder name, or its parent's when
        the folder is called ``images``, ``photos`` or the like: see :func:`survey_title`).
    n_samples : int
        Number of sample images drawn with their detections.
    compare_model : path, optional
        A second model's weights: the notebook runs it on the same images, with the same options (its
        own family's ``imgsz`` unless both models are of one family), and adds a comparison section
        (:func:`musseltools.evaluation.compare.compare`: agreement, Bland-Altman plot, totals with intervals, the
        images where the two disagree most).
    model_family, trust_pickle
        As in :func:`musseltools.run` (they apply to ``model``; ``trust_pickle`` to both models).
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
    values = {k: v for k, v in locals().items() if k in OPTIONS}
    if isinstance(images, (str, os.PathLike)):
        collection = name or Path(images).resolve().name
    else:
        collection = name or "survey"
    out_dir = Path(out) if out is not None else Path("reports") / collection
    out_dir.mkdir(parents=True, exist_ok=True)
    out_nb, out_html = out_dir / "report.ipynb", out_dir / "report.html"
    source = Path(notebook) if notebook is not None else notebook_path(SURVEY_NOTEBOOK)
    parameters = _parameters(values, collection)
    executed = prepare_template(source, out_dir, bundled=notebook is None)  # says if it has outputs or edits
    try:
        _execute(executed, out_nb, out_html, parameters, kernel_name)
    finally:
        if executed != source:
            executed.unlink(missing_ok=True)
    try:
        render_html(out_nb, out_html, show_code=show_code, title=parameters["title"])
    except Exception as exc:  # noqa: BLE001
        raise ReportError(f"report executed but could not be rendered to HTML ({type(exc).__name__}: {exc}) — "
                          f"the executed notebook is {out_nb}", notebook=out_nb) from exc
    log.info("report written to %s", out_html)
    return out_html


def _execute(source: Path, out_nb: Path, out_html: Path, parameters: dict[str, Any], kernel_name: str) -> None:
    """Execute the notebook with papermill, in a kernel reached over local sockets (IPC): nothing goes
    over TCP, so nothing could be overheard, and the kernel has no reason to warn about it."""
    import tempfile

    import papermill as pm
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    log.info("executing %s into %s", source, out_nb)
    with tempfile.TemporaryDirectory(prefix="musseltools-kernel-") as sockets:
        config = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
        try:
            pm.execute_notebook(str(source), str(out_nb), parameters=parameters, kernel_name=kernel_name,
                                cwd=os.getcwd(), progress_bar=False, log_output=False, config=config)
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
