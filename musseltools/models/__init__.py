"""Models: families behind one protocol, tiling around any predictor.

- :mod:`~musseltools.models.base`: the :class:`Predictor` and :class:`ModelFamily` protocols, the
  family registry, :class:`InferenceSettings`, loading (:func:`load_model`: from the bytes that were
  hashed) and model cards (:func:`describe_model`).
- :mod:`~musseltools.models.ultralytics`: the Ultralytics YOLO family (registered on import).
- :mod:`~musseltools.models.torchvision`: the torchvision Faster R-CNN family (registered on import, after
  Ultralytics).
- :mod:`~musseltools.models.tiling`: :class:`TiledPredictor`, wrapping any predictor.
- :mod:`~musseltools.models.onnx`: :class:`OnnxPredictor`, the ONNX Runtime backend around any predictor.

Adding a family: implement :class:`ModelFamily` and :class:`Predictor` in a module of this package and
call :func:`register_family` at its end; import it here.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ..machine import cpu_cores
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
from .onnx import OnnxPredictor, with_backend
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
    "OnnxPredictor",
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
    "tile_streams",
    "model_fingerprint",
    "register_family",
]


def make_predictor(
    model: LoadedModel, settings: Any, *, device: str | None = None, threads: int | None = None,
    cache: Any = None,
) -> Predictor:
    """The predictor of a built model's family for these settings, wrapped in tiles when ``settings.tile`` is set.

    With ``settings.backend`` other than torch, each of its streams runs an ONNX graph when it can
    (:func:`~musseltools.models.onnx.with_backend`; graphs cached in the folder ``cache``).

    Examples
    --------
    >>> p = make_predictor(load_model("data/models/mussel-demo.pt"), InferenceSettings(tile="auto"))  # doctest: +SKIP
    >>> type(p).__name__                                                                             # doctest: +SKIP
    'TiledPredictor'
    """
    family = get_family(model.info.family)

    def build(m: LoadedModel, t: int | None) -> Predictor:
        return with_backend(family.predictor(m, settings, device=device, threads=t), m, settings, cache)

    if settings.tile is None:
        return build(model, threads)
    spare = copy.deepcopy(model.model)  # before the predictor is built onto it: a model to copy for streams
    inner = build(model, threads)
    replicas = []
    for _ in range(tile_streams(inner.device, threads) - 1):
        replica = dataclasses.replace(model, model=spare if not replicas else copy.deepcopy(spare))
        replicas.append(build(replica, 1))
    return TiledPredictor(inner, settings, replicas=replicas)


def tile_streams(device: str, threads: int | None) -> int:
    """How many tile batches run at once, each on its own copy of the model: on a CPU where the model runs
    on one torch thread (two cores in this process: one left to decoding), one per core this process may
    use (``threads``, its share, when a worker process was given one); else 1. A tiled image is decoded
    once for hundreds of tiles, so the core left to decoding would idle.

    >>> tile_streams("cuda:0", None)
    1
    """
    import torch

    if not device.startswith("cpu") or torch.get_num_threads() != 1:
        return 1
    return max(1, threads if threads is not None else cpu_cores())
