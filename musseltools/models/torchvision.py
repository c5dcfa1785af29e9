"""The torchvision family: Faster R-CNN checkpoints of torchvision's detection models.

This is the only module of musseltools that imports torchvision's detection models. torchvision is
imported lazily, when a model is built; models are built with ``weights=None, weights_backbone=None``,
so nothing is ever downloaded.

Checkpoint forms
    A weights file is read with ``torch.load(weights_only=True)`` (tensors and plain values only: no
    code can run) and may hold

    - a bare state dict (``torch.save(model.state_dict(), path)``);
    - a dict holding one under ``model_state_dict``, ``state_dict`` or ``model`` (a training
      checkpoint; its other entries, such as the optimizer's state, are ignored; an
      ``argparse.Namespace`` of torchvision's reference scripts is allowed);
    - a fully pickled model (``torch.save(model, path)``), or a dict holding one: only with
      ``trust_pickle=True`` / ``--trust-pickle``, because unpickling it can run any code. Its state
      dict is taken and the model is built anew, as for the other forms.

Architectures (:data:`ARCHITECTURES`), recognised from the state dict's keys and shapes
    - ``fasterrcnn_resnet50_fpn``: a ResNet-50 body (``backbone.body.conv1``, layers of 3, 4, 6, 3
      blocks) and the two-layer box head ``roi_heads.box_head.fc6``/``fc7``;
    - ``fasterrcnn_resnet50_fpn_v2``: the same body, a two-conv RPN head (``rpn.head.conv.1``) and the
      convolutional box head (``roi_heads.box_head.0.0``);
    - ``fasterrcnn_mobilenet_v3_large_fpn`` and ``fasterrcnn_mobilenet_v3_large_320_fpn``: a
      MobileNetV3-Large body (``backbone.body.0`` to ``backbone.body.16``). These two have the same
      weights, keys and shapes: the 320 variant is the same network run on smaller inputs (320 to 640
      pixels instead of 800 to 1333) with 150 region proposals instead of 1000. Their state dicts
      cannot tell them apart, so the architecture is named by the sidecar (``architecture:``), else
      by the checkpoint (a string under ``arch``, ``architecture`` or ``model_name``, or the
      ``args.model`` of torchvision's reference scripts; a pickled model's own input size), else it is
      ``fasterrcnn_mobilenet_v3_large_fpn`` (with a warning).

    The number of classes (background included) is the number of rows of
    ``roi_heads.box_predictor.cls_score.weight``. Mask and keypoint R-CNN checkpoints, other backbones
    and other detectors are refused with the reason.

Class names: the sidecar
    Class names come from a sidecar file beside the weights, named after the weights without their
    suffix: ``model.pt`` -> ``model.yaml`` or ``model.json`` (one of the two; both is an error). It is
    read and hashed with the weights (editing it makes a new model). YAML::

        names: {1: live, 2: dead}     # label -> name; or a list, for labels 1, 2, ...: [live, dead]
        architecture: fasterrcnn_mobilenet_v3_large_320_fpn   # optional (see above)

    or the same as JSON (``{"names": {"1": "live", "2": "dead"}}``). Label 0 is the background and has
    no name; every other label of the head needs one, and names are unique. Without a sidecar, a
    three-class head is named as the replaced system named it: {1: live, 2: dead}
    (:data:`DEFAULT_NAMES`).

    musseltools numbers a model's classes from 0, in label order, as YOLO does (so that corrections,
    training datasets and every view treat both families alike): label ``l`` is class id ``l - 1``,
    and the model's class names are ``{0: live, 1: dead}`` for the labels {1: live, 2: dead}.

``imgsz``: the transform's sizes
    torchvision's ``GeneralizedRCNNTransform`` scales an image so that its shorter side is
    ``min_size``, unless its longer side would then exceed ``max_size``, in which case the longer side
    is ``max_size``. For this family ``imgsz`` is ``min_size``, and ``max_size`` keeps the
    architecture's proportion (:func:`transform_sizes`): ``max_size = round(imgsz * 1333 / 800)`` for
    the ResNet-50 and MobileNetV3-Large FPN models, ``round(imgsz * 640 / 320)`` for the 320 variant.
    The default ``imgsz`` is the architecture's own ``min_size`` (800, or 320 for the 320 variant),
    which is exactly torchvision's resizing. Tiles of ``tile="auto"`` are ``imgsz`` pixels square, so
    a tile runs at its native resolution.

Inference that keeps threshold views exact
    The model is configured as torchvision's builders would be with ``box_score_thresh`` = the run's
    confidence floor, ``box_nms_thresh`` = ``iou`` (default 0.5, torchvision's) and
    ``box_detections_per_img`` = ``max_det`` (torchvision's defaults, 0.05 and 100, would cut low
    thresholds and dense beds). Per-class NMS visits boxes by score, so the detections stored down to
    the floor, filtered at a threshold, are those the model gives with that threshold: counts are
    exact at every threshold at or above the floor while no image reaches ``max_det``. Images are
    batched through the model's own transform, only with images of the same size (the transform pads
    a batch to its largest image, which would make results depend on the batch). The region proposal
    network keeps the architecture's proposal count (1000 per image; 150 for the 320 variant), which
    bounds the detections of one image: tile dense quadrats.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.detections import Detections
from ..errors import ModelLoadError
from .base import (
    LoadedModel,
    ModelCard,
    Prepared,
    cpu_threads,
    default_device,
    fastest_batch_size,
    pin_threads,
    register_family,
)

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_NAMES",
    "Architecture",
    "FasterRCNNModel",
    "FasterRCNNPredictor",
    "TorchvisionFamily",
    "build_network",
    "num_classes_of",
    "parse_sidecar",
    "read_checkpoint",
    "recognise_architecture",
    "sidecar_names",
    "transform_sizes",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Architecture:
    """A torchvision Faster R-CNN builder and its transform's default sizes."""

    name: str
    min_size: int
    max_size: int


#: The architectures this family builds, by torchvision builder name.
ARCHITECTURES: dict[str, Architecture] = {
    a.name: a for a in (
        Architecture("fasterrcnn_resnet50_fpn", 800, 1333),
        Architecture("fasterrcnn_resnet50_fpn_v2", 800, 1333),
        Architecture("fasterrcnn_mobilenet_v3_large_fpn", 800, 1333),
        Architecture("fasterrcnn_mobilenet_v3_large_320_fpn", 320, 640),
    )
}
#: Class names of a three-class head without a sidecar: the replaced system's convention (0 is background).
DEFAULT_NAMES = {1: "live", 2: "dead"}
#: torchvision's ``box_nms_thresh``: the family's NMS IoU when ``iou`` is not given.
TORCHVISION_NMS_IOU = 0.5
#: Where a training checkpoint may hold its state dict.
STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model")
#: What the pickle of a Faster R-CNN checkpoint names: a state dict's box predictor, or the model's class.
_MARKERS = (b"roi_heads.box_predictor.cls_score", b"torchvision.models.detection.faster_rcnn")
_MOBILENET = ("fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn")
_HINT_KEYS = ("arch", "architecture", "model_name")


# ---------------------------------------------------------------------------------------------- checkpoints
def _pickle_bytes(data: bytes) -> bytes:
    """The pickle of a torch file (``data.pkl`` of the zip format; the head of a legacy file), never unpickled."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return b"".join(z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
    except (zipfile.BadZipFile, OSError, ValueError):
        return data[: 1 << 20]


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _hint_of(checkpoint: Mapping[str, Any]) -> str | None:
    """An architecture named by a training checkpoint (``arch``..., or the reference scripts' ``args.model``)."""
    args = checkpoint.get("args")
    named = [checkpoint.get(k) for k in _HINT_KEYS]
    named.append(args.get("model") if isinstance(args, Mapping) else getattr(args, "model", None))
    return next((n for n in named if isinstance(n, str) and n in ARCHITECTURES), None)


def _module_hint(module: Any) -> str | None:
    """The MobileNet variant that a pickled model's own transform sizes say (None when they say nothing)."""
    t = getattr(module, "transform", None)
    sizes = (min(getattr(t, "min_size", (0,)) or (0,)), getattr(t, "max_size", 0))
    return "fasterrcnn_mobilenet_v3_large_320_fpn" if sizes == (320, 640) else None


def _unwrap(obj: Any, shown: str) -> tuple[dict[str, Any], str | None]:
    """(state dict, architecture hint) of a loaded checkpoint."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict()), _module_hint(obj)
    if _is_state_dict(obj):
        return dict(obj), None
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, torch.nn.Module):
                return dict(inner.state_dict()), _hint_of(obj) or _module_hint(inner)
            if _is_state_dict(inner):
                return dict(inner), _hint_of(obj)
        keys = ", ".join(sorted(map(str, obj))[:8])
        raise ModelLoadError(
            f"weights file {shown!r} is a dict ({keys}) with no state dict of tensors under "
            f"{', '.join(STATE_DICT_KEYS)} — expected a state dict, or a dict holding one under model_state_dict or "
            "state_dict — re-save it with torch.save(model.state_dict(), path)"
        )
    raise ModelLoadError(
        f"weights file {shown!r} holds a {type(obj).__name__} — expected a Faster R-CNN state dict, or a dict holding "
        "one under model_state_dict or state_dict — re-save it with torch.save(model.state_dict(), path)"
    )


def read_checkpoint(data: bytes, shown: str, *, trust_pickle: bool = False) -> tuple[dict[str, Any], str | None]:
    """The state dict of a checkpoint's bytes, and the architecture it names (None when it names none).

    Read with ``torch.load(weights_only=True)`` unless ``trust_pickle``: a file that needs more (a fully
    pickled model) is refused with a ModelLoadError that says how to proceed.
    """
    import argparse
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if not trust_pickle and "Weights only load failed" in str(exc):
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f" (it names {found.group(1)})" if found else ""
            raise ModelLoadError(
                f"weights file {shown!r} holds Python objects, not only tensors{what}: a fully pickled model, whose "
                "loading can run any code — expected a state dict, or a dict holding one under model_state_dict or "
                "state_dict — re-save it with torch.save(model.state_dict(), path), or, if you trust where the file "
                "came from, pass --trust-pickle (trust_pickle=True)"
            ) from exc
        raise _unreadable(shown, exc) from exc
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: one clear error
        raise _unreadable(shown, exc) from exc
    return _unwrap(obj, shown)


def _unreadable(shown: str, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load weights file {shown!r}: {type(exc).__name__}: {exc} — expected a torch checkpoint saved with "
        "torch.save — check that the file is complete"
    )


# ---------------------------------------------------------------------------------------------- architectures
def _blocks(shapes: Mapping[str, tuple], prefix: str) -> int:
    """How many numbered blocks ``prefix.N.`` a state dict has."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({m.group(1) for k in shapes if (m := pattern.match(k))})


def _candidates(shapes: Mapping[str, tuple], shown: str) -> list[str]:
    """The architectures whose keys and shapes a state dict has (the two MobileNet variants share them)."""
    for head, kind in (("roi_heads.mask_", "a Mask R-CNN"), ("roi_heads.keypoint_", "a Keypoint R-CNN")):
        if any(k.startswith(head) for k in shapes):
            raise ModelLoadError(f"weights file {shown!r} is {kind} checkpoint — expected a Faster R-CNN — "
                                 "musseltools counts boxes: use the Faster R-CNN weights")
    if "backbone.body.conv1.weight" in shapes:
        layers = [_blocks(shapes, f"backbone.body.layer{i}") for i in range(1, 5)]
        if layers != [3, 4, 6, 3]:
            raise ModelLoadError(f"weights file {shown!r} has a ResNet body with {layers} blocks per layer — expected "
                                 "ResNet-50's [3, 4, 6, 3] — musseltools builds the ResNet-50 Faster R-CNNs only")
        if "roi_heads.box_head.fc6.weight" in shapes:
            return ["fasterrcnn_resnet50_fpn"]
        if "roi_heads.box_head.0.0.weight" in shapes and "rpn.head.conv.1.0.weight" in shapes:
            return ["fasterrcnn_resnet50_fpn_v2"]
    elif shapes.get("backbone.body.0.0.weight") == (16, 3, 3, 3) and _blocks(shapes, "backbone.body") == 17:
        return list(_MOBILENET)
    raise ModelLoadError(
        f"weights file {shown!r} is not one of the Faster R-CNN architectures musseltools knows (its backbone and "
        f"box head keys match none) — expected one of {', '.join(ARCHITECTURES)} — save the model with one of them"
    )


def _require_predictor(state_dict: Mapping[str, Any], shown: str) -> None:
    if "roi_heads.box_predictor.cls_score.weight" not in state_dict:
        raise ModelLoadError(
            f"weights file {shown!r} has no Faster R-CNN box predictor (roi_heads.box_predictor.cls_score.weight) — "
            f"expected the state dict of one of {', '.join(ARCHITECTURES)} — check that it is a Faster R-CNN"
        )


def recognise_architecture(state_dict: Mapping[str, Any], hint: str | None = None, shown: str = "weights") -> str:
    """The torchvision builder of a Faster R-CNN state dict, from its keys and shapes.

    ``hint`` (a sidecar's or a checkpoint's ``architecture``) chooses between architectures with the same
    weights (the MobileNetV3-Large FPN and its 320 variant); it must be one that the weights fit.

    Examples
    --------
    >>> import torch                                                                  # doctest: +SKIP
    >>> from torchvision.models.detection import fasterrcnn_resnet50_fpn_v2           # doctest: +SKIP
    >>> with torch.device("meta"):                                                    # doctest: +SKIP
    ...     sd = fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None).state_dict()
    >>> recognise_architecture(sd)                                                    # doctest: +SKIP
    'fasterrcnn_resnet50_fpn_v2'
    """
    _require_predictor(state_dict, shown)
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    candidates = _candidates(shapes, shown)
    if hint is not None:
        if hint not in candidates:
            raise ModelLoadError(
                f"weights file {shown!r} is said to be a {hint}, but its weights are those of "
                f"{' or '.join(candidates)} — fix the architecture in its sidecar (or checkpoint)"
            )
        return hint
    if len(candidates) > 1:
        log.warning("%s: MobileNetV3-Large weights fit both %s; using %s — name the other as 'architecture:' in its "
                    "sidecar to use it", shown, " and ".join(candidates), candidates[0])
    return candidates[0]


def num_classes_of(state_dict: Mapping[str, Any], shown: str = "weights") -> int:
    """The number of classes of a Faster R-CNN head, background included."""
    _require_predictor(state_dict, shown)
    n = int(state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0])
    boxes = state_dict.get("roi_heads.box_predictor.bbox_pred.weight")
    if n < 2 or boxes is None or int(boxes.shape[0]) != 4 * n:
        raise ModelLoadError(f"weights file {shown!r} has a box predictor of {n} classes and "
                             f"{None if boxes is None else int(boxes.shape[0])} box outputs — expected 4 per class, "
                             "background included — check the checkpoint")
    return n


# ---------------------------------------------------------------------------------------------- sidecar
def sidecar_names(filename: str) -> tuple[str, str]:
    """The sidecar files of a weights file: its name without the suffix, with ``.yaml`` or ``.json``.

    >>> sidecar_names("frcnn-2023.pt")
    ('frcnn-2023.yaml', 'frcnn-2023.json')
    """
    stem = Path(filename).stem
    return f"{stem}.yaml", f"{stem}.json"


def _names(given: Any, n_classes: int, where: str) -> dict[int, str]:
    """Validated class names (label -> name) for a head of ``n_classes`` (background included)."""
    if isinstance(given, (list, tuple)):
        given = {i + 1: v for i, v in enumerate(given)}
    if not isinstance(given, Mapping):
        raise ModelLoadError(f"{where}: names must be a mapping of label to name or a list — got "
                             f"{type(given).__name__} — write e.g. names: {{1: live, 2: dead}}")
    names: dict[int, str] = {}
    for k, v in given.items():
        try:
            label = int(k)
        except (TypeError, ValueError):
            raise ModelLoadError(f"{where}: label {k!r} is not an integer — write names: {{1: live, 2: dead}}") from None
        if not isinstance(v, str) or not v.strip():
            raise ModelLoadError(f"{where}: the name of label {label} is {v!r} — expected a non-empty string")
        names[label] = v.strip()
    expected = set(range(1, n_classes))
    if set(names) != expected or len(set(names.values())) != len(names):
        raise ModelLoadError(
            f"{where}: names for labels {sorted(names)} — expected one unique name for each of labels "
            f"{sorted(expected)} (the head has {n_classes} classes; label 0 is the background and has no name) — "
            "fix the names"
        )
    return dict(sorted(names.items()))


def parse_sidecar(sidecars: Mapping[str, bytes], n_classes: int, shown: str = "weights") -> tuple[dict[int, str], str | None]:
    """(class names by label, architecture or None) from the sidecar's bytes (by file name), for a head of
    ``n_classes`` classes (background included); :data:`DEFAULT_NAMES` for a three-class head without one.

    >>> parse_sidecar({"m.yaml": b"names: [live, dead, gaping]"}, 4)
    ({1: 'live', 2: 'dead', 3: 'gaping'}, None)
    """
    if len(sidecars) > 1:
        raise ModelLoadError(f"weights file {shown!r} has two sidecars ({', '.join(sorted(sidecars))}) — expected one "
                             "— remove one of them")
    if not sidecars:
        if n_classes != len(DEFAULT_NAMES) + 1:
            yaml_name, json_name = sidecar_names(Path(shown).name)
            raise ModelLoadError(
                f"weights file {shown!r} has {n_classes - 1} object classes and no sidecar naming them — expected "
                f"{yaml_name} or {json_name} beside it (names: [...]) — write one; only a 3-class head (background, "
                "live, dead) is named by default"
            )
        return dict(DEFAULT_NAMES), None
    [(name, body)] = sidecars.items()
    where = f"sidecar {name!r} of weights file {shown!r}"
    try:
        if name.endswith(".json"):
            doc = json.loads(body)
        else:
            import yaml

            doc = yaml.safe_load(body)
    except Exception as exc:  # noqa: BLE001 - any syntax error: one clear message
        raise ModelLoadError(f"cannot read the {where}: {exc} — expected YAML or JSON with names (and optionally "
                             "architecture) — fix its syntax") from exc
    if not isinstance(doc, Mapping) or set(doc) - {"names", "architecture", "recommended", "how"}:
        found = sorted(map(str, doc)) if isinstance(doc, Mapping) else type(doc).__name__
        raise ModelLoadError(f"{where} holds {found} — expected a mapping with the keys names, and optionally "
                             "architecture, recommended and how (musseltools.models.card) — fix the sidecar")
    arch = doc.get("architecture")
    if arch is not None and arch not in ARCHITECTURES:
        raise ModelLoadError(f"{where} names architecture {arch!r} — expected one of {', '.join(ARCHITECTURES)}")
    if doc.get("names") is None:
        return parse_sidecar({}, n_classes, shown)[0], arch
    return _names(doc["names"], n_classes, where), arch


# ---------------------------------------------------------------------------------------------- building
@dataclass
class FasterRCNNModel:
    """A built Faster R-CNN: its architecture, number of classes, and torchvision's module (CPU, eval mode)."""

    architecture: str
    num_classes: int
    net: Any


def build_network(architecture: str, num_classes: int, state_dict: Mapping[str, Any] | None = None,
                  shown: str = "weights", **kwargs: Any) -> Any:
    """torchvision's ``architecture(weights=None, weights_backbone=None, num_classes=..., **kwargs)``, with the
    state dict loaded, in eval mode. Keyword arguments are the builder's (``box_score_thresh``, ``min_size``...).

    A state dict saved without batch-norm counters (a backbone with frozen batch norm) loads too.
    """
    from torchvision.models import detection

    net = getattr(detection, architecture)(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    if state_dict is not None:
        try:
            missing, unexpected = net.load_state_dict(state_dict, strict=False)
        except RuntimeError as exc:
            raise ModelLoadError(f"weights file {shown!r} does not fit a {architecture}: {str(exc)[:400]} — check the "
                                 "architecture in its sidecar") from exc
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ModelLoadError(
                f"weights file {shown!r} does not fit a {architecture}: missing {missing[:5]}, unexpected "
                f"{list(unexpected)[:5]} — expected the complete state dict of that architecture"
            )
    return net.eval()


def transform_sizes(architecture: str, imgsz: int) -> tuple[int, int]:
    """``(min_size, max_size)`` of the transform for ``imgsz``: ``imgsz`` is the shorter side, and the longer
    side's limit keeps the architecture's proportion (see the module docstring).

    >>> transform_sizes("fasterrcnn_resnet50_fpn", 800), transform_sizes("fasterrcnn_mobilenet_v3_large_320_fpn", 160)
    ((800, 1333), (160, 320))
    """
    a = ARCHITECTURES[architecture]
    return int(imgsz), round(imgsz * a.max_size / a.min_size)


class TorchvisionFamily:
    """torchvision Faster R-CNN checkpoints: the ``torchvision`` model family (see the module docstring)."""

    expects = ("a torchvision Faster R-CNN checkpoint (a state dict, or a dict holding one under model_state_dict "
               "or state_dict)")

    def claims(self, data: bytes, filename: str) -> bool:
        """A torch file whose pickle names a Faster R-CNN box predictor or model class (read, never unpickled)."""
        pickled = _pickle_bytes(data)
        return any(marker in pickled for marker in _MARKERS)

    def sidecar_names(self, filename: str) -> tuple[str, str]:
        """``WEIGHTS.yaml`` and ``WEIGHTS.json`` (:func:`sidecar_names`)."""
        return sidecar_names(filename)

    def build(self, data: bytes, filename: str, shown: str, *, sidecars: Mapping[str, bytes] | None = None,
              trust_pickle: bool = False) -> tuple[FasterRCNNModel, ModelCard]:
        """Read the checkpoint, recognise its architecture and classes, build the model with its weights."""
        if not self.claims(data, filename):
            raise ModelLoadError(
                f"weights file {shown!r} is not a torchvision Faster R-CNN checkpoint: it names no Faster R-CNN box "
                f"predictor nor model — expected {self.expects} — check the file, or leave out --model-family to "
                "detect its family"
            )
        state, hint = read_checkpoint(data, shown, trust_pickle=trust_pickle)
        n_classes = num_classes_of(state, shown)
        labels, named_arch = parse_sidecar(dict(sidecars or {}), n_classes, shown)
        architecture = recognise_architecture(state, named_arch or hint, shown)
        net = build_network(architecture, n_classes, state, shown)
        names = {label - 1: name for label, name in labels.items()}  # class ids from 0 (module docstring)
        card = ModelCard("torchvision", "detect", names, ARCHITECTURES[architecture].min_size, TORCHVISION_NMS_IOU)
        return FasterRCNNModel(architecture, n_classes, net), card

    def predictor(self, model: LoadedModel, settings: Any, *, device: str | None = None,
                  threads: int | None = None) -> FasterRCNNPredictor:
        return FasterRCNNPredictor(model, settings, device=device, threads=threads)


# ---------------------------------------------------------------------------------------------- predictor
class FasterRCNNPredictor:
    """Runs a Faster R-CNN on decoded images: ``prepare`` in a worker thread, ``predict`` in batches.

    Implements :class:`~musseltools.models.base.Predictor`; a detection of label ``l`` has class id ``l - 1``
    (see the module docstring). The model is a copy of the loaded one,
    configured for the settings (see the module docstring): ``min_size, max_size`` from ``imgsz``
    (:func:`transform_sizes`), ``score_thresh`` = ``conf_floor``, ``nms_thresh`` = ``iou``,
    ``detections_per_img`` = ``max_det``: what torchvision's builder sets from ``box_score_thresh``,
    ``box_nms_thresh`` and ``box_detections_per_img``.

    Parameters
    ----------
    model : LoadedModel
        Built by :func:`~musseltools.models.load_model`.
    settings : InferenceSettings
    device : str, optional
        ``cpu``, ``cuda:0``...; the fastest available by default.
    threads : int, optional
        torch CPU threads: all cores but one by default, or ``$MUSSELTOOLS_TORCH_THREADS``.
    """

    def __init__(self, model: LoadedModel, settings: Any, *, device: str | None = None,
                 threads: int | None = None) -> None:
        if model.model is None:
            raise ValueError("the model is described but not built — load it with musseltools.models.load_model")
        built: FasterRCNNModel = model.model
        self.settings = settings
        self.device = device or default_device()
        self.names = dict(model.info.names)
        self.task = "detect"
        self.batch_size: int | None = None
        self.architecture = built.architecture
        net = copy.deepcopy(built.net)
        min_size, max_size = transform_sizes(built.architecture, settings.imgsz)
        net.transform.min_size, net.transform.max_size = (min_size,), max_size
        net.roi_heads.score_thresh = float(settings.conf_floor)
        net.roi_heads.nms_thresh = float(settings.iou)
        net.roi_heads.detections_per_img = int(settings.max_det)
        self.net = net.to(self.device).eval()
        # torch threads per forward pass on CPU, pinned before each one (as for YOLO)
        self.threads = cpu_threads(threads) if self.device.startswith("cpu") else None
        pin_threads(self.threads)
        self.runner: Any = None  # runs the network in place of ``net`` when set (musseltools.models.onnx)

    def prepare(self, image: np.ndarray) -> Prepared:
        """One BGR uint8 image as the RGB float tensor in [0, 1] that torchvision's detection models take."""
        import torch

        rgb = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1]))
        return Prepared(image=image, tensor=rgb.permute(2, 0, 1).contiguous().float().div(255))

    def predict(self, batch: Sequence[Prepared]) -> list[Detections]:
        """Detections for each prepared image, down to the confidence floor, in input order.

        Images of one size run together, :attr:`batch_size` at a time (all at once when it is None), through
        the model's own transform.
        """
        import torch

        out: list[Detections | None] = [None] * len(batch)
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault(tuple(item.tensor.shape), []).append(i)
        with torch.inference_mode():
            for same_size in groups.values():
                step = self.batch_size or len(same_size)
                for k in range(0, len(same_size), step):
                    idx = same_size[k : k + step]
                    pin_threads(self.threads)
                    results = (self.runner or self.net)([batch[i].tensor.to(self.device) for i in idx])
                    for i, r in zip(idx, results):
                        out[i] = self._detections(r, batch[i].image)
        return out  # type: ignore[return-value]

    def _detections(self, result: Mapping[str, Any], image: np.ndarray) -> Detections:
        h, w = image.shape[:2]
        return Detections(result["boxes"].float().cpu().numpy(), result["scores"].float().cpu().numpy(),
                          result["labels"].cpu().numpy() - 1, names=self.names, image_size=(w, h))  # label l: class l-1

    def images_per_call(self, batch_size: int) -> int:
        """Images handed to :meth:`predict` at once: one model batch."""
        return batch_size

    def measure_batch_size(self, sample: Prepared) -> int:
        """The fastest batch size of 1 and 2 on CPU (a Faster R-CNN gains little from batches there), of 1 to 16
        on a GPU (:func:`~musseltools.models.base.fastest_batch_size`)."""
        candidates = (1, 2) if self.device.startswith("cpu") else (1, 2, 4, 8, 16)
        return fastest_batch_size(self, sample, candidates)


register_family("torchvision", TorchvisionFamily())
