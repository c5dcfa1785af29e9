"""Models: families behind one protocol, tiling around any predictor.

- :mod:`~musseltools.models.base`: the :class:`Predictor` and :class:`ModelFamily` protocols, the
  family registry, :class:`InferenceSettings`, loading (:func:`load_model`: from the bytes that were
  hashed) and model cards (:func:`describe_model`).
- :mod:`~musseltools.models.ultralytics`: the Ultralytics YOLO family (registered on import).
- :mod:`~musseltools.models.torchvision`: the torchvision Faster R-CNN family (registered on import, after
  Ultralytics).
- :mod:`~musseltools.models.tiling`: :class:`TiledPredictor`, wrapping any predictor.

Adding a family: implement :class:`ModelFamily` and :class:`Predictor` in a module of this package and
call :func:`register_family` at its end; import it here.
"""

from __future__ import annotations

from typing import Any

from .base import (
    RESULTS_FORMAT,
    SUPPORTED_TASKS,
    InferenceSettings,
    LoadedModel,
    ModelCard,
    ModelFamily,
    ModelInfo,
    Predictor,
    Prepared,
    claiming_family,
    default_device,
    describe_model,
    detect_family,
    families,
    fastest_batch_size,
    fingerprint,
    get_family,
    load_model,
    model_fingerprint,
    register_family,
)
from .card import WeightsCard, read_card, resolve_settings
from .tiling import TiledPredictor
from .ultralytics import UltralyticsFamily, YoloPredictor

# isort: split
from .torchvision import FasterRCNNPredictor, TorchvisionFamily  # registered after Ultralytics: tried second

__all__ = [
    "RESULTS_FORMAT",
    "SUPPORTED_TASKS",
    "InferenceSettings",
    "LoadedModel",
    "ModelCard",
    "ModelFamily",
    "ModelInfo",
    "Predictor",
    "Prepared",
    "TiledPredictor",
    "UltralyticsFamily",
    "YoloPredictor",
    "FasterRCNNPredictor",
    "WeightsCard",
    "read_card",
    "resolve_settings",
    "TorchvisionFamily",
    "claiming_family",
    "default_device",
    "describe_model",
    "detect_family",
    "families",
    "fastest_batch_size",
    "fingerprint",
    "get_family",
    "load_model",
    "make_predictor",
    "model_fingerprint",
    "register_family",
]


def make_predictor(
    model: LoadedModel, settings: Any, *, device: str | None = None, threads: int | None = None
) -> Predictor:
    """The predictor of a built model's family for these settings, wrapped in tiles when ``settings.tile`` is set.

    Examples
    --------
    >>> p = make_predictor(load_model("data/models/mussel-demo.pt"), InferenceSettings(tile="auto"))  # doctest: +SKIP
    >>> type(p).__name__                                                                             # doctest: +SKIP
    'TiledPredictor'
    """
    inner = get_family(model.info.family).predictor(model, settings, device=device, threads=threads)
    if settings.tile is None:
        return inner
    return TiledPredictor(inner, settings)
