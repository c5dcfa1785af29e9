"""Run options, declared once.

:class:`RunOptions` is the one declaration of the options a survey run and its report take. Each field
carries, in its metadata, everything the other places need, and they are all derived from it:

- the keyword defaults of :func:`musseltools.run` and :func:`musseltools.reports.report.report` (their
  signatures read ``OPTIONS.<name>.default``; ``tests/test_options.py`` checks that they match);
- the command-line flags of ``musseltools run`` and ``musseltools report`` (flag, parser, help,
  default: :func:`musseltools.cli.add_run_options`);
- the parameters cell of ``notebooks/survey_report.ipynb`` (papermill; checked by a test);
- the fields and defaults of :class:`musseltools.models.InferenceSettings`, and so the inference key.

Adding an option is one edit here (plus its tests): the keyword in ``run``/``report`` is then
required by the signature test, and the rest follows.

Examples
--------
>>> OPTIONS.iou.default, OPTIONS.iou.settings_default, OPTIONS.iou.flag, OPTIONS.iou.inference
(None, 0.7, '--iou', True)
>>> OPTIONS.iou.help_text
"NMS IoU threshold (the weights' card's, else 0.7 for YOLO and torchvision's 0.5 for Faster R-CNN)"
>>> [o.name for o in OPTIONS.inference_settings()]
['conf_floor', 'imgsz', 'iou', 'max_det', 'tile', 'tile_overlap', 'tile_merge', 'backend']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .thresholds import Thresholds, parse_class_map, parse_min_length

__all__ = ["RunOptions", "Option", "OPTIONS", "REQUIRED", "DEFAULT_COMMIT_EVERY", "NO_TILES", "TILE_MERGE_METHODS",
           "BACKENDS", "parse_backend",
           "parse_positive_int", "parse_tile", "parse_threshold", "parse_min_length_mm"]

#: Images per committed part when neither ``commit_every`` nor ``$MUSSELTOOLS_COMMIT_EVERY`` is set.
DEFAULT_COMMIT_EVERY = 32
#: ``tile="none"`` (``--tile none``): whole images, even where the weights' card recommends tiles.
NO_TILES = "none"
#: Ways of merging duplicate detections across tile seams (:mod:`musseltools.models.tiling`).
TILE_MERGE_METHODS = ("edge", "ios", "nmm")
#: What runs the network (:mod:`musseltools.models.onnx`): torch, ONNX Runtime, or ONNX Runtime on CPU when it can.
BACKENDS = ("torch", "onnx", "auto")


class _Required:
    """The default of an option that has none (``images``, ``model``)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


# ---------------------------------------------------------------------------------------------- parsers
# Parsers turn command-line text into values; they raise ValueError with a one-line reason, which the
# command line shows as it is.
def parse_positive_int(text: str) -> int:
    """An integer >= 1.

    >>> parse_positive_int("8")
    8
    """
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if n < 1:
        raise ValueError(f"{text!r} must be >= 1")
    return n


def parse_tile(text: str) -> int | str:
    """``auto``, ``none`` or a tile size in pixels.

    >>> parse_tile("auto"), parse_tile("640"), parse_tile("none")
    ('auto', 640, 'none')
    """
    return text if text in ("auto", NO_TILES) else parse_positive_int(text)


def parse_tile_merge(text: str) -> str:
    """One of :data:`TILE_MERGE_METHODS`.

    >>> parse_tile_merge("ios")
    'ios'
    """
    if text not in TILE_MERGE_METHODS:
        raise ValueError(f"{text!r} is not a tile merge method — expected one of {', '.join(TILE_MERGE_METHODS)}")
    return text


def parse_backend(text: str) -> str:
    """One of :data:`BACKENDS`.

    >>> parse_backend("onnx")
    'onnx'
    """
    if text not in BACKENDS:
        raise ValueError(f"{text!r} is not a backend — expected one of {', '.join(BACKENDS)}")
    return text


def parse_threshold(text: str) -> float | dict[str, float]:
    """``0.5``, or one per class or category: ``live=0.45,dead=0.6`` (validated against the model later).

    >>> parse_threshold("0.5"), parse_threshold("live=0.45")
    (0.5, {'live': 0.45})
    """
    from ..errors import ThresholdError

    try:
        t = Thresholds.parse(text)
    except ThresholdError as exc:
        raise ValueError(str(exc)) from None
    return t.default if t.default is not None else dict(t.per_class)


def parse_min_length_mm(text: str) -> float | None:
    """A minimum shell length in mm, >= 0 (0: none).

    >>> parse_min_length_mm("5"), parse_min_length_mm("0")
    (5.0, None)
    """
    from ..errors import ThresholdError

    try:
        mm = parse_min_length(text)
    except ThresholdError as exc:
        raise ValueError(str(exc)) from None
    return mm or None


# ---------------------------------------------------------------------------------------------- the declaration
@dataclass(frozen=True)
class Option:
    """One run option, as declared in :class:`RunOptions`.

    Attributes
    ----------
    name : str
        The Python keyword (and the notebook parameter).
    default : Any
        The keyword's default (:data:`REQUIRED` when it has none).
    help : str
        Help text; ``{default}`` and ``{fallback}`` are filled in (see :attr:`help_text`).
    flag : str or None
        The command-line flag (``--iou``); None for the positional ``IMAGES`` or a keyword without one.
    parse : callable or None
        Turns the flag's text into a value (``float``, :func:`parse_positive_int`...); None for a switch.
    metavar : str or None
        The flag's placeholder in ``--help``.
    switch : bool
        A flag without a value (``--wait``).
    scope : {"run", "report"}
        ``run``: a keyword of ``musseltools.run`` (and of ``report``, which runs the survey), a flag of
        both commands. ``report``: of the report only.
    inference : bool
        Part of the inference settings (changes what the model outputs, so keys the cached results).
    notebook : bool
        A papermill parameter of the survey report notebook.
    fallback : Any
        What None stands for where the option's default is None but a value is needed (``imgsz``: the
        model's training size, else this; ``commit_every``: this).
    check : (callable, str) or None
        A validity test of a value and what it must be, for the inference settings' error messages.
    annotation : str
        The type, as written in the declaration.
    """

    name: str
    default: Any
    help: str
    flag: str | None = None
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None
    switch: bool = False
    scope: str = "run"
    inference: bool = False
    notebook: bool = True
    fallback: Any = None
    check: tuple[Callable[[Any], bool], str] | None = None
    annotation: Any = "Any"

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def help_text(self) -> str:
        """The help with its defaults filled in: ``NMS IoU threshold (0.7)``."""
        return self.help.format(default=self.default, fallback=self.fallback)

    @property
    def settings_default(self) -> Any:
        """The default of the inference setting: the default, or its fallback when that is None."""
        return self.fallback if self.default is None else self.default

    def validate(self, value: Any) -> None:
        """Raise ValueError when ``value`` fails the option's check."""
        if self.check is not None and not self.check[0](value):
            raise ValueError(f"{self.name} must {self.check[1]}, got {value!r}")


def _opt(default: Any, help: str, **meta: Any) -> Any:  # noqa: A002 - the word argparse uses
    return field(default=default, metadata={"option": {"help": help, **meta}})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class RunOptions:
    """The options of a survey run and its report: the one declaration (see the module docstring).

    The order of the fields is the order of the flags in ``--help``.
    """

    images: Any = _opt(REQUIRED, "folder of images (searched recursively) or one image", metavar="IMAGES")
    model: Any = _opt(REQUIRED, "weights: Ultralytics YOLO (.pt) or a torchvision Faster R-CNN checkpoint",
                      flag="--model", metavar="WEIGHTS")
    model_family: str | None = _opt(None, "the weights' model family, ultralytics or torchvision (detected from the "
                                    "file by default)", flag="--model-family", metavar="NAME")
    trust_pickle: bool = _opt(False, "load a fully pickled torchvision model (a pickle can run code: only for files "
                              "you trust; state dicts never need it)", flag="--trust-pickle", switch=True)
    threshold: float | Mapping[str, float] | None = _opt(
        None, "confidence threshold, or one per class (live=0.4,dead=0.3) (the weights' card's, else {fallback})",
        flag="--threshold", parse=parse_threshold, metavar="T", fallback=0.5)
    min_length_mm: float | None = _opt(
        None, "leave shells shorter than this (mm) out of counts, as survey protocols leave out recruits; only on "
        "images with a scale (sheet mm_per_px or quadrat_side_m, or drawn): the others count every shell. Recorded "
        "on the run like a threshold; changes no stored result (none)", flag="--min-length-mm",
        parse=parse_min_length_mm, metavar="MM")
    store: Any = _opt(None, "results store (default $MUSSELTOOLS_STORE, else data/store in the project root: the "
                      "working folder or its nearest parent holding data/store or pyproject.toml)", flag="--store",
                      metavar="DIR")
    batch_size: int | None = _opt(None, "images per model call (measured if unset)", flag="--batch-size",
                                  parse=parse_positive_int, metavar="N")
    commit_every: int | None = _opt(None, "images per committed part ({fallback})", flag="--commit-every",
                                    parse=parse_positive_int, metavar="N", fallback=DEFAULT_COMMIT_EVERY)
    conf_floor: float = _opt(0.01, "lowest confidence stored ({default})", flag="--conf-floor", parse=float,
                             metavar="F", inference=True, check=(lambda v: 0 < v < 1, "lie in (0, 1)"))
    imgsz: int | None = _opt(None, "model input size; for Faster R-CNN the shorter side (default: the size the model "
                             "was trained at, else {fallback})",
                             flag="--imgsz", parse=parse_positive_int, metavar="N", inference=True, fallback=640,
                             check=(lambda v: _is_int(v) and v >= 32, "be an integer >= 32"))
    iou: float | None = _opt(None, "NMS IoU threshold (the weights' card's, else {fallback} for YOLO and "
                             "torchvision's 0.5 for Faster R-CNN)",
                             flag="--iou", parse=float, metavar="F", inference=True, fallback=0.7,
                             check=(lambda v: 0 < v <= 1, "lie in (0, 1]"))
    max_det: int = _opt(10000, "detection cap per image ({default})", flag="--max-det", parse=parse_positive_int,
                        metavar="N", inference=True, check=(lambda v: _is_int(v) and v >= 1, "be a positive integer"))
    tile: int | str | None = _opt(None, "tile size in pixels, 'auto' (tiles of the model input size for images "
                                  "over twice its size) or 'none' (the weights' card's, else none)", flag="--tile",
                                  parse=parse_tile, metavar="SIZE", inference=True,
                                  check=(lambda v: v is None or v == "auto" or (_is_int(v) and v >= 32),
                                         "be None, 'auto', 'none' or an integer >= 32 pixels"))
    tile_overlap: float | None = _opt(None, "tile overlap fraction (the weights' card's, else {fallback})",
                                      flag="--tile-overlap", parse=float, metavar="FRAC", inference=True,
                                      fallback=0.2, check=(lambda v: 0 <= v < 1, "lie in [0, 1)"))
    tile_merge: str | None = _opt(None, "how duplicates across tile seams merge: " + ", ".join(TILE_MERGE_METHODS)
                                  + " (the weights' card's, else {fallback})", flag="--tile-merge",
                                  parse=parse_tile_merge, metavar="METHOD", inference=True, fallback="edge",
                                  check=(lambda v: v in TILE_MERGE_METHODS,
                                         "be one of " + ", ".join(TILE_MERGE_METHODS)))
    backend: str = _opt("torch", "what runs the network: torch, onnx (ONNX Runtime on a graph exported from the weights "
                        "and checked against torch on the run's first images; torch where it cannot be) or auto "
                        "(onnx on a CPU, torch on a GPU) ({default})", flag="--backend", parse=parse_backend,
                        metavar="NAME", inference=True,
                        check=(lambda v: v in BACKENDS, "be one of " + ", ".join(BACKENDS)))
    class_map: Mapping[str, str] | None = _opt(None, "NAME=CATEGORY,... grouping classes", flag="--class-map",
                                               parse=parse_class_map, metavar="MAP")
    sheet: Any = _opt(None, "sample sheet, CSV or .xlsx: one row per image with its site, date, treatment, area_m2... "
                      "(validated, stored with the run and versioned; not an inference setting)", flag="--sheet",
                      metavar="FILE")
    name: str | None = _opt(None, "collection name (the folder's name by default)", flag="--name")
    device: str | None = _opt(None, "cpu, cuda:0, ... (the fastest available by default)", flag="--device")
    workers: int | None = _opt(None, "worker processes (default: one per core when there are enough images, "
                               "1 on a GPU; 1 runs in this process)", flag="--workers", parse=parse_positive_int,
                               metavar="N")
    scheduler: str | None = _opt(None, "run on a Dask cluster: the scheduler's address (tcp://HOST:PORT)",
                                 flag="--scheduler", metavar="ADDRESS")
    scheduler_file: str | None = _opt(None, "run on a Dask cluster: its scheduler file (dask scheduler "
                                      "--scheduler-file)", flag="--scheduler-file", metavar="FILE")
    wait: bool | float = _opt(False, "wait for another process holding the run, not fail", flag="--wait",
                              switch=True)
    # -- the report's own
    truth: Any = _opt(None, "labels (YOLO folder, COCO JSON or counts CSV) to evaluate against", flag="--truth",
                      metavar="DIR", scope="report")
    out: Any = _opt(None, "output folder (reports/<collection name>)", flag="--out", metavar="DIR", scope="report",
                    notebook=False)
    show_code: bool = _opt(False, "keep code cells in the HTML", flag="--show-code", switch=True, scope="report",
                           notebook=False)
    title: str | None = _opt(None, "report title", flag="--title", scope="report")
    n_samples: int = _opt(6, "sample images drawn ({default})", flag="--n-samples", parse=parse_positive_int,
                          metavar="N", scope="report")
    compare_model: Any = _opt(None, "a second model's weights: run on the same images and compared with the first",
                              flag="--compare-model", metavar="W2", scope="report")


class OptionTable(Mapping[str, Option]):
    """The declared options by name, also as attributes: ``OPTIONS.iou.default``."""

    def __init__(self, declaration: type) -> None:
        self._options = {
            f.name: Option(name=f.name, default=f.default, annotation=f.type, **f.metadata["option"])
            for f in dataclasses.fields(declaration)
        }

    def __getitem__(self, name: str) -> Option:
        return self._options[name]

    def __getattr__(self, name: str) -> Option:
        try:
            return self._options[name]
        except KeyError:
            raise AttributeError(f"no run option {name!r} — the options are {', '.join(self._options)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def of_scope(self, scope: str) -> list[Option]:
        """The options of ``run`` (keywords of ``musseltools.run``) or of ``report`` only."""
        return [o for o in self._options.values() if o.scope == scope]

    def inference_settings(self) -> list[Option]:
        """The options that are inference settings (the fields of ``InferenceSettings``, in this order)."""
        return [o for o in self._options.values() if o.inference]

    def notebook_parameters(self) -> list[Option]:
        """The papermill parameters of the survey report notebook."""
        return [o for o in self._options.values() if o.notebook]

    def keywords(self, scope: str) -> list[str]:
        """Keyword names of a scope, without the positional ``images``."""
        return [o.name for o in self.of_scope(scope) if o.name != "images"]


#: The declared run options (see :class:`RunOptions`).
OPTIONS = OptionTable(RunOptions)
