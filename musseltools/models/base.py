"""Model families behind one small protocol: what the engine and tiling know about a model.

A *model family* (Ultralytics YOLO today) knows how to build a model from the bytes of a weights file
and how to make a :class:`Predictor` for it. A :class:`Predictor` turns decoded images into
:class:`~musseltools.detections.Detections` in two halves, so that the engine can overlap them:
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

from ..detections import Detections
from ..errors import ModelChangedError, ModelLoadError
from ..options import OPTIONS
from ..thresholds import ClassMap

__all__ = [
    "DEFAULT_FAMILY",
    "LEGACY_FAMILY",
    "RESULTS_FORMAT",
    "SUPPORTED_TASKS",
    "InferenceSettings",
    "LoadedModel",
    "ModelCard",
    "ModelFamily",
    "ModelInfo",
    "Predictor",
    "Prepared",
    "default_device",
    "describe_model",
    "detect_family",
    "families",
    "fingerprint",
    "get_family",
    "load_model",
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
    """SHA-256 of a weights file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def default_device() -> str:
    """``cuda:0`` when a CUDA GPU is usable, else ``cpu``."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------------- settings
class _SettingsBehaviour:
    """Validation, ``to_dict`` and ``key`` of :class:`InferenceSettings` (whose fields are generated)."""

    def __post_init__(self) -> None:
        for option in OPTIONS.inference_settings():
            option.validate(getattr(self, option.name))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def key(self, model_fingerprint: str, family: str = LEGACY_FAMILY) -> str:
        """The ``inference_key``: results are cached by (image_id, inference_key).

        The payload of the ``ultralytics`` family is what it was before families existed (see the module
        docstring); other families add ``"family": name``.
        """
        payload = {"model": model_fingerprint, "format": RESULTS_FORMAT, **self.to_dict()}
        if payload["tile"] is None:  # overlap means nothing without tiles
            payload.pop("tile_overlap")
        if family != LEGACY_FAMILY:
            payload["family"] = family
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# The fields and defaults come from the one declaration of run options (musseltools.options): every
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
    "Fields (declared in :mod:`musseltools.options`)\n"
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

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "task": self.task, "names": {str(k): v for k, v in self.names.items()},
                "train_imgsz": self.train_imgsz}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelCard:
        return cls(str(d["family"]), str(d["task"]), {int(k): str(v) for k, v in d["names"].items()},
                   int(d["train_imgsz"]))


@dataclass(frozen=True)
class ModelInfo:
    """What identifies a model: its file, content hash, family, task and class names."""

    path: str
    fingerprint: str
    task: str
    names: dict[int, str]
    class_map: dict[str, str] | None = None
    family: str = DEFAULT_FAMILY

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


class ModelFamily(Protocol):
    """A kind of model (Ultralytics YOLO, ...): register one with :func:`register_family`.

    Attributes
    ----------
    expects : str
        What its weights file is, for error messages (``an Ultralytics YOLO .pt file``).
    """

    expects: str

    def claims(self, data: bytes, filename: str) -> bool:
        """Whether a weights file (its bytes and name) is of this family, without building it."""
        ...

    def build(self, data: bytes, filename: str, shown: str) -> tuple[Any, ModelCard]:
        """The in-memory model built from ``data`` and its card; ModelLoadError when it cannot be."""
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


def detect_family(data: bytes, filename: str) -> str:
    """The name of the first family that claims a weights file, else :data:`DEFAULT_FAMILY`."""
    for name, family in _FAMILIES.items():
        if family.claims(data, filename):
            return name
    return DEFAULT_FAMILY


# ---------------------------------------------------------------------------------------------- loading
def _read_weights(weights: str | os.PathLike, family: str | None) -> tuple[Path, bytes, str]:
    """(path, bytes, SHA-256 of those bytes) of a weights file; ModelLoadError when it cannot be read."""
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
    return path, data, hashlib.sha256(data).hexdigest()


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


def _model(path: Path, shown: str, digest: str, card: ModelCard, class_map: Mapping[str, str] | None,
           built: Any) -> LoadedModel:
    if card.task not in SUPPORTED_TASKS:
        raise ModelLoadError(
            f"weights file {shown!r} is a {card.task!r} model — expected one of {', '.join(SUPPORTED_TASKS)}"
        )
    info = ModelInfo(path=str(path.resolve()), fingerprint=digest, task=card.task, names=dict(card.names),
                     class_map=_check_class_map(class_map, card.names, shown), family=card.family)
    return LoadedModel(info=info, train_imgsz=card.train_imgsz, model=built)


def _build(path: Path, data: bytes, family: str | None, shown: str) -> tuple[Any, ModelCard]:
    name = family or detect_family(data, path.name)
    built, card = get_family(name).build(data, path.name, shown)
    return built, dataclasses.replace(card, family=name)


def load_model(
    weights: str | os.PathLike,
    *,
    class_map: Mapping[str, str] | None = None,
    family: str | None = None,
    sha256: str | None = None,
) -> LoadedModel:
    """Load a weights file: read it once, hash those bytes, build the model from the same bytes.

    .pt files are Python pickles: load only weights you trust.

    Parameters
    ----------
    weights : path
    class_map : mapping of str to str, optional
        Class name -> category (validated against the model's classes).
    family : str, optional
        The model family (``ultralytics``); detected from the file by default.
    sha256 : str, optional
        The SHA-256 the file must have (a run's recorded fingerprint): ModelChangedError otherwise.

    Raises
    ------
    ModelLoadError
        The file is missing, unreadable, not weights of the family, or of an unsupported task.
    ModelChangedError
        ``sha256`` was given and the file has other contents.

    Examples
    --------
    >>> load_model("data/models/mussel-demo.pt").train_imgsz                            # doctest: +SKIP
    640
    """
    path, data, digest = _read_weights(weights, family)
    if sha256 is not None and digest != sha256:
        raise ModelChangedError(
            f"weights file {str(weights)!r} changed (SHA-256 {sha256[:12]}… expected, {digest[:12]}… now) — results "
            "made so far are kept — restore the original weights, or save the new ones under another name"
        )
    built, card = _build(path, data, family, str(weights))
    return _model(path, str(weights), digest, card, class_map, built)


def describe_model(
    weights: str | os.PathLike,
    *,
    class_map: Mapping[str, str] | None = None,
    family: str | None = None,
    cards: MutableMapping[str, Any] | None = None,
) -> LoadedModel:
    """A model's info without building it when ``cards`` knows its SHA-256, else loaded as by :func:`load_model`.

    ``cards`` maps SHA-256 -> :meth:`ModelCard.to_json`; a model built here is added to it (the caller
    keeps it, e.g. in the store's cache). The weights are read and hashed either way.
    """
    path, data, digest = _read_weights(weights, family)
    known = (cards or {}).get(digest)
    if isinstance(known, Mapping):
        try:
            card = ModelCard.from_json(known)
        except (KeyError, TypeError, ValueError, AttributeError):
            card = None
        if card is not None and (family is None or card.family == family) and card.family in _FAMILIES:
            return _model(path, str(weights), digest, card, class_map, None)
    built, card = _build(path, data, family, str(weights))
    loaded = _model(path, str(weights), digest, card, class_map, built)
    if cards is not None:
        cards[digest] = card.to_json()
    return loaded
