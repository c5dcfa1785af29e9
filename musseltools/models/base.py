"""Model families behind one small protocol: what the engine and tiling know about a model.

A *model family* (Ultralytics YOLO today) knows how to build a model from the bytes of a weights file
and how to make a :class:`Predictor` for it. A :class:`Predictor` turns decoded images into
:class:`~musseltools.core.detections.Detections` in two halves, so that the engine can overlap them:
:meth:`Predictor.prepare` (per image, in the decode thread) and :meth:`Predictor.predict` (a batch, in
the model thread). Nothing outside a family's module touches the framework behind it.

Loading from the bytes that were hashed
    :func:`load_model` reads the weights file once, computes its SHA-256 (the ``model_fingerprint``)
    on those bytes and builds the model from the same bytes, so there is no moment at which the file
    could be swapped between the hash and the load.

Model cards
    What planning needs to know about a model (family, task, class names, training input size) is a
    :class:`ModelCard`, cached by the weights' SHA-256 (:func:`describe_model`), so that a resume with
    nothing left to infer never builds the model.

Sidecars
    A family may name files beside the weights that are part of the model (the torchvision family's
    ``WEIGHTS.yaml``: class names). :func:`load_model` reads them once with the weights and hashes them
    with the weights: the ``model_fingerprint`` is the SHA-256 of the weights' bytes when no sidecar
    exists, else of the weights' bytes followed by each sidecar's name and bytes
    (:func:`model_fingerprint`). Editing a sidecar is a new model: new inference key, new card, and a
    run made before it refuses the change as it refuses changed weights.

Families and the inference key
    The family is part of the inference key. The key of the ``ultralytics`` family is computed exactly
    as before families existed (no ``family`` entry in the hashed payload: :data:`LEGACY_FAMILY`), so
    existing stores stay valid; any other family adds ``"family": name``.

Examples
--------
>>> sorted(families())                                                            # doctest: +SKIP
['ultralytics']
>>> m = load_model("data/models/mussel-demo.pt")                                  # doctest: +SKIP
>>> m.info.family, m.info.task, m.info.names                                      # doctest: +SKIP
('ultralytics', 'detect', {0: 'live', 1: 'dead'})
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..core.detections import Detections
from ..core.options import OPTIONS
from ..core.thresholds import ClassMap
from ..errors import ModelChangedError, ModelLoadError
from ..machine import cuda_possible

__all__ = [
    "DEFAULT_FAMILY",
    "LEGACY_FAMILY",
    "LEGACY_TILE_MERGE",
    "RESULTS_FORMAT",
    "SUPPORTED_TASKS",
    "InferenceSettings",
    "LoadedModel",
    "ModelCard",
    "ModelFamily",
    "ModelInfo",
    "Predictor",
    "Prepared",
    "claiming_family",
    "cpu_threads",
    "default_device",
    "describe_model",
    "detect_family",
    "families",
    "fastest_batch_size",
    "fingerprint",
    "get_family",
    "load_model",
    "model_fingerprint",
    "pin_threads",
    "register_family",
]

#: What musseltools can store: boxes (detect), outlines (segment) and rotated boxes (obb).
SUPPORTED_TASKS = ("detect", "segment", "obb")
#: Bumped when a change in musseltools would change stored results for the same settings.
RESULTS_FORMAT = 1
#: The family chosen when a weights file is claimed by none (it then explains what it expected).
DEFAULT_FAMILY = "ultralytics"
#: The family whose inference key has no ``family`` entry: the key stores made before families existed.
LEGACY_FAMILY = "ultralytics"


def fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file (its ``model_fingerprint`` when it has no sidecar)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_fingerprint(data: bytes, sidecars: Mapping[str, bytes] | None = None) -> str:
    """The ``model_fingerprint``: SHA-256 of the weights' bytes, followed, when the model has sidecar files,
    by each sidecar's name and bytes (in name order).

    Examples
    --------
    >>> model_fingerprint(b"w") == hashlib.sha256(b"w").hexdigest()
    True
    >>> model_fingerprint(b"w", {"m.yaml": b"names: [a]"}) != model_fingerprint(b"w")
    True
    """
    h = hashlib.sha256(data)
    for name in sorted(sidecars or {}):
        body = sidecars[name]  # type: ignore[index]
        h.update(b"\0sidecar\0" + name.encode() + b"\0" + str(len(body)).encode() + b"\0" + body)
    return h.hexdigest()


#: The tile merge of every result stored before ``tile_merge`` was a setting (kept out of their keys).
LEGACY_TILE_MERGE = "edge"


def default_device() -> str:
    """``cuda:0`` when a CUDA GPU is usable, else ``cpu`` (without importing torch where no GPU can be:
    :func:`~musseltools.machine.cuda_possible`)."""
    if not cuda_possible():
        return "cpu"
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def cpu_threads(threads: int | None = None) -> int:
    """torch threads per inference on CPU: ``threads``, else ``$MUSSELTOOLS_TORCH_THREADS``, else all cores
    but one (the decode thread uses that one: oversubscribed OpenMP threads stall each other; on 2 cores,
    2 torch threads next to a busy decoder ran 20x slower than 1).

    Results on CPU change in the last bits with this number (docs/what-survives-what.md, "Determinism"):
    a predictor pins it before each forward pass (:func:`pin_threads`), whatever else in the process
    (Ultralytics' device set-up, another predictor) changed torch's setting meanwhile.
    """
    return threads or int(os.environ.get("MUSSELTOOLS_TORCH_THREADS", 0)) or max(1, (os.cpu_count() or 2) - 1)


def pin_threads(threads: int | None) -> None:
    """Set torch's CPU threads to ``threads`` in the calling thread (None: leave them) before a forward pass."""
    import torch

    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- settings
class _SettingsBehaviour:
    """Validation, ``to_dict`` and ``key`` of :class:`InferenceSettings` (whose fields are generated)."""

    def __post_init__(self) -> None:
        for option in OPTIONS.inference_settings():
            option.validate(getattr(self, option.name))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def identity(self) -> dict[str, Any]:
        """The settings as they identify results and runs: :meth:`to_dict` without ``tile_merge`` where it
        changes nothing (no tiles) or is the merge that every store made before it was a setting
        (:data:`LEGACY_TILE_MERGE`), so that the keys and run ids made then stay valid."""
        d = self.to_dict()
        if d["tile"] is None or d["tile_merge"] == LEGACY_TILE_MERGE:
            d.pop("tile_merge")
        if d["backend"] == "torch":  # as before backends were a setting (models/onnx.py)
            d.pop("backend")
        return d

    def key(self, model_fingerprint: str, family: str = LEGACY_FAMILY) -> str:
        """The ``inference_key``: results are cached by (image_id, inference_key).

        The payload of the ``ultralytics`` family is what it was before families existed (see the module
        docstring); other families add ``"family": name``.
        """
        payload = {"model": model_fingerprint, "format": RESULTS_FORMAT, **self.identity()}
        if payload["tile"] is None:  # overlap means nothing without tiles
            payload.pop("tile_overlap")
        if family != LEGACY_FAMILY:
            payload["family"] = family
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# The fields and defaults come from the one declaration of run options (musseltools.core.options): every
# option marked ``inference=True`` is a field, with its default (or fallback, for imgsz: 640).
InferenceSettings = dataclasses.make_dataclass(
    "InferenceSettings",
    [(o.name, o.annotation, field(default=o.settings_default)) for o in OPTIONS.inference_settings()],
    bases=(_SettingsBehaviour,),
    frozen=True,
)
InferenceSettings.__module__ = __name__
InferenceSettings.__doc__ = (
    "Everything that changes what the model outputs. Hashed with the model into ``inference_key``.\n\n"
    "Fields (declared in :mod:`musseltools.core.options`)\n"
    "-----------------------------------------------\n"
    + "".join(f"{o.name} : default {o.settings_default!r}\n    {o.help_text}\n" for o in OPTIONS.inference_settings())
    + "\nExamples\n--------\n>>> InferenceSettings(imgsz=320).iou\n0.7\n"
)


# ---------------------------------------------------------------------------------------------- model values
@dataclass(frozen=True)
class ModelCard:
    """What a model is, without its weights: enough to plan a run (cached by the weights' SHA-256)."""

    family: str
    task: str
    names: dict[int, str]
    train_imgsz: int
    #: The family's own NMS IoU (torchvision's Faster R-CNN: 0.5), used when ``iou`` is not given; None:
    #: the option's fallback (0.7, Ultralytics').
    default_iou: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "task": self.task, "names": {str(k): v for k, v in self.names.items()},
                "train_imgsz": self.train_imgsz, "default_iou": self.default_iou}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelCard:
        iou = d.get("default_iou")
        return cls(str(d["family"]), str(d["task"]), {int(k): str(v) for k, v in d["names"].items()},
                   int(d["train_imgsz"]), None if iou is None else float(iou))


@dataclass(frozen=True)
class ModelInfo:
    """What identifies a model: its file, content hash, family, task and class names."""

    path: str
    fingerprint: str
    task: str
    names: dict[int, str]
    class_map: dict[str, str] | None = None
    family: str = DEFAULT_FAMILY
    #: Loaded with the user's leave to unpickle arbitrary objects (``trust_pickle``): a process that
    #: loads the same bytes again (a worker) may do the same.
    trust_pickle: bool = False

    @property
    def classes(self) -> ClassMap:
        """The class names and the class map."""
        return ClassMap(self.names.values(), self.class_map)

    @property
    def categories(self) -> list[str]:
        """Names counted in totals: the class map's categories, else the class names."""
        return self.classes.categories

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["names"] = {str(k): v for k, v in self.names.items()}
        return d


@dataclass
class LoadedModel:
    """A model: its :class:`ModelInfo`, its training input size, and the family's model once built.

    ``model`` is None when the model was only described (:func:`describe_model` found its card in a
    cache); :func:`load_model` builds it.
    """

    info: ModelInfo
    train_imgsz: int
    model: Any = field(default=None, repr=False)
    default_iou: float | None = None


@dataclass
class Prepared:
    """One decoded image, ready for the model: the original array and the family's model input.

    ``tensor`` is None when the image is passed on unprepared (a tiled image: its tiles are prepared
    when their batch runs).
    """

    image: np.ndarray  # H x W x 3, BGR uint8, as the user sees it
    tensor: Any

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of the model input (of the image when unprepared): what the speed of a batch depends on."""
        return tuple(self.tensor.shape) if self.tensor is not None else tuple(self.image.shape)


# ---------------------------------------------------------------------------------------------- protocols
class Predictor(Protocol):
    """What the engine and :class:`~musseltools.models.tiling.TiledPredictor` use of a model.

    Attributes
    ----------
    device : str
        Where the model runs (``cpu``, ``cuda:0``...).
    names : dict of int to str
        The model's class names by class id.
    task : str
        ``detect``, ``segment`` or ``obb``.
    batch_size : int or None
        Model inputs per forward pass (images, or tiles when tiled); None: all that :meth:`predict` is
        given. Set by the engine to the run's model batch size.
    """

    device: str
    names: dict[int, str]
    task: str
    batch_size: int | None

    def prepare(self, image: np.ndarray) -> Prepared:
        """Turn one BGR image into a model input (called from a decode thread: must be thread-safe)."""
        ...

    def predict(self, batch: Sequence[Prepared]) -> list[Detections]:
        """Detections for each prepared image, down to the confidence floor, in input order."""
        ...

    def images_per_call(self, batch_size: int) -> int:
        """How many images to hand to :meth:`predict` at once for a model batch size."""
        ...

    def measure_batch_size(self, sample: Prepared) -> int:
        """The fastest model batch size on this device, timed on copies of ``sample``."""
        ...


def fastest_batch_size(predictor: Predictor, sample: Prepared, candidates: Sequence[int] | None = None,
                       repeats: int = 2) -> int:
    """Time a predictor on copies of ``sample`` at several batch sizes and return the fastest.

    On CPU, batch 1 is often fastest; on a GPU, larger batches usually win. A larger batch must beat a
    smaller one by 5 % to be chosen. Each candidate runs as one batch (``predictor.batch_size`` is None
    meanwhile, and restored afterwards).
    """
    import time

    if candidates is None:
        candidates = (1, 2, 4, 8) if predictor.device.startswith("cpu") else (1, 4, 8, 16, 32)
    best, best_rate = 1, 0.0
    kept, predictor.batch_size = predictor.batch_size, None
    try:
        for b in candidates:
            items = [sample] * b
            predictor.predict(items)  # warm-up at this size
            t0 = time.perf_counter()
            for _ in range(repeats):
                predictor.predict(items)
            rate = b * repeats / max(time.perf_counter() - t0, 1e-9)
            if rate > best_rate * 1.05:
                best, best_rate = b, rate
    finally:
        predictor.batch_size = kept
    return best


class ModelFamily(Protocol):
    """A kind of model (Ultralytics YOLO, ...): register one with :func:`register_family`.

    Attributes
    ----------
    expects : str
        What its weights file is, for error messages (``an Ultralytics YOLO .pt file``).
    """

    expects: str

    def claims(self, data: bytes, filename: str) -> bool:
        """Whether a weights file (its bytes and name) is of this family, without building it (nor unpickling)."""
        ...

    def sidecar_names(self, filename: str) -> Sequence[str]:
        """Names of files beside the weights that are part of the model (read and hashed with them when
        they exist); empty when the weights are all there is."""
        ...

    def build(self, data: bytes, filename: str, shown: str, *, sidecars: Mapping[str, bytes] | None = None,
              trust_pickle: bool = False) -> tuple[Any, ModelCard]:
        """The in-memory model built from ``data`` (and the bytes of its sidecars that exist, by name) and
        its card; ModelLoadError when it cannot be. ``trust_pickle``: the user allows unpickling arbitrary
        objects (a family that can load weights without it must refuse pickled code otherwise)."""
        ...

    def predictor(self, model: LoadedModel, settings: Any, *, device: str | None = None,
                  threads: int | None = None) -> Predictor:
        """A :class:`Predictor` running a built model with these inference settings."""
        ...


# ---------------------------------------------------------------------------------------------- registry
_FAMILIES: dict[str, ModelFamily] = {}


def register_family(name: str, family: ModelFamily) -> None:
    """Make a model family available by name (a later registration of the name replaces it)."""
    _FAMILIES[name] = family


def families() -> dict[str, ModelFamily]:
    """The registered families by name."""
    return dict(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    """The family registered under ``name``; ModelLoadError when there is none."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ModelLoadError(
            f"unknown model family {name!r} — the families are {', '.join(sorted(_FAMILIES)) or 'none'} — "
            "pass one of them, or register yours with musseltools.models.register_family"
        ) from None


def claiming_family(data: bytes, filename: str) -> str | None:
    """The name of the first registered family that claims a weights file; None when none does."""
    for name, family in _FAMILIES.items():
        if family.claims(data, filename):
            return name
    return None


def detect_family(data: bytes, filename: str) -> str:
    """The name of the first family that claims a weights file, else :data:`DEFAULT_FAMILY`."""
    return claiming_family(data, filename) or DEFAULT_FAMILY


# ---------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class _Weights:
    """A weights file as read once: its bytes, its family, its sidecars' bytes, and the fingerprint of them all."""

    path: Path
    shown: str
    data: bytes
    family: str
    claimed: bool  # a family claimed the file (or the caller named one); else the default family is tried
    sidecars: dict[str, bytes]
    digest: str


def _read_weights(weights: str | os.PathLike, family: str | None) -> _Weights:
    """Read a weights file and its family's sidecars once; ModelLoadError when they cannot be read."""
    path = Path(weights).expanduser()
    shown = str(weights)
    if not path.is_file():
        why = "is a directory" if path.is_dir() else "does not exist"
        expects = get_family(family or DEFAULT_FAMILY).expects
        raise ModelLoadError(f"weights file {shown!r} {why} — expected {expects} — check the --model path")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read weights file {shown!r}: {exc.strerror or exc}") from exc
    name = family or claiming_family(data, path.name)
    chosen = get_family(name or DEFAULT_FAMILY)
    sidecars = {}
    for side in chosen.sidecar_names(path.name):
        side_path = path.with_name(side)
        if side_path.is_file():
            try:
                sidecars[side] = side_path.read_bytes()
            except OSError as exc:
                raise ModelLoadError(f"cannot read the sidecar {str(side_path)!r} of weights file {shown!r}: "
                                     f"{exc.strerror or exc} — make it readable, or remove it") from exc
    return _Weights(path, shown, data, name or DEFAULT_FAMILY, name is not None, sidecars,
                    model_fingerprint(data, sidecars))


def _check_class_map(class_map: Mapping[str, str] | None, names: Mapping[int, str], shown: str) -> dict | None:
    if not class_map:
        return None
    unknown = sorted(set(class_map) - set(names.values()))
    if unknown:
        raise ModelLoadError(
            f"class map names {unknown} are not classes of {shown} — the model's classes are "
            f"{sorted(names.values())} — fix the class map"
        )
    return {str(k): str(v) for k, v in class_map.items()}


def _model(w: _Weights, card: ModelCard, class_map: Mapping[str, str] | None, built: Any,
           trust_pickle: bool) -> LoadedModel:
    if card.task not in SUPPORTED_TASKS:
        raise ModelLoadError(
            f"weights file {w.shown!r} is a {card.task!r} model — expected one of {', '.join(SUPPORTED_TASKS)}"
        )
    info = ModelInfo(path=str(w.path.resolve()), fingerprint=w.digest, task=card.task, names=dict(card.names),
                     class_map=_check_class_map(class_map, card.names, w.shown), family=card.family,
                     trust_pickle=bool(trust_pickle))
    return LoadedModel(info=info, train_imgsz=card.train_imgsz, model=built, default_iou=card.default_iou)


def _unrecognised(w: _Weights, exc: ModelLoadError) -> ModelLoadError:
    """The one error for a file that no family claims and the default family cannot load either."""
    cause = exc.__cause__
    reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
    tried = " or ".join(f"{f.expects} ({name})" for name, f in _FAMILIES.items())
    return ModelLoadError(
        f"cannot load weights file {w.shown!r}: no model family recognises it — expected {tried}; loading it as "
        f"{DEFAULT_FAMILY} failed with {reason} — check that the file is complete and holds model weights, or "
        "name its family with --model-family (model_family=)"
    )


def _build(w: _Weights, trust_pickle: bool) -> tuple[Any, ModelCard]:
    try:
        built, card = get_family(w.family).build(w.data, w.path.name, w.shown, sidecars=w.sidecars,
                                                 trust_pickle=trust_pickle)
    except ModelLoadError as exc:
        if w.claimed:
            raise
        raise _unrecognised(w, exc) from exc
    return built, dataclasses.replace(card, family=w.family)


def load_model(
    weights: str | os.PathLike,
    *,
    class_map: Mapping[str, str] | None = None,
    family: str | None = None,
    sha256: str | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Load a weights file: read it (and its sidecars) once, hash those bytes, build the model from the same bytes.

    Ultralytics .pt files are Python pickles: load only weights you trust. torchvision checkpoints are
    read with ``torch.load(weights_only=True)`` unless ``trust_pickle``.

    Parameters
    ----------
    weights : path
    class_map : mapping of str to str, optional
        Class name -> category (validated against the model's classes).
    family : str, optional
        The model family (``ultralytics``, ``torchvision``); detected from the file by default.
    sha256 : str, optional
        The fingerprint the model must have (a run's recorded one): ModelChangedError otherwise.
    trust_pickle : bool
        Allow unpickling arbitrary Python objects (a fully pickled torchvision model). A pickle can run
        code: only for files you trust.

    Raises
    ------
    ModelLoadError
        The file is missing, unreadable, not weights of the family (or of no family), or of an
        unsupported task.
    ModelChangedError
        ``sha256`` was given and the file (or its sidecar) has other contents.

    Examples
    --------
    >>> load_model("data/models/mussel-demo.pt").train_imgsz                            # doctest: +SKIP
    640
    """
    w = _read_weights(weights, family)
    if sha256 is not None and w.digest != sha256:
        what = f"weights file {str(weights)!r}" + (f" (with its sidecar {', '.join(sorted(w.sidecars))})"
                                                   if w.sidecars else "")
        raise ModelChangedError(
            f"{what} changed (SHA-256 {sha256[:12]}… expected, {w.digest[:12]}… now) — results "
            "made so far are kept — restore the original weights, or save the new ones under another name"
        )
    built, card = _build(w, trust_pickle)
    return _model(w, card, class_map, built, trust_pickle)


def describe_model(
    weights: str | os.PathLike,
    *,
    class_map: Mapping[str, str] | None = None,
    family: str | None = None,
    cards: MutableMapping[str, Any] | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """A model's info without building it when ``cards`` knows its fingerprint, else loaded as by :func:`load_model`.

    ``cards`` maps fingerprint -> :meth:`ModelCard.to_json`; a model built here is added to it (the caller
    keeps it, e.g. in the store's cache). The weights are read and hashed either way.
    """
    w = _read_weights(weights, family)
    known = (cards or {}).get(w.digest)
    if isinstance(known, Mapping):
        try:
            card = ModelCard.from_json(known)
        except (KeyError, TypeError, ValueError, AttributeError):
            card = None
        if card is not None and card.family == w.family and card.family in _FAMILIES:
            return _model(w, card, class_map, None, trust_pickle)
    built, card = _build(w, trust_pickle)
    loaded = _model(w, card, class_map, built, trust_pickle)
    if cards is not None:
        cards[w.digest] = card.to_json()
    return loaded
