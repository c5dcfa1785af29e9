"""Recommended settings that travel with the weights: the model card beside a weights file.

A weights file may have a card beside it, named after the weights without their suffix:
``mussel-demo.pt`` -> ``mussel-demo.yaml`` (or ``mussel-demo.json``; the torchvision family's class-name
sidecar is the same file). Its ``recommended`` section holds the settings the model's makers found best
for it, and ``how`` says, per setting, how it was found::

    recommended:
      threshold: {live: 0.35, dead: 0.23}   # one number, or one per class
      iou: 0.4                              # NMS IoU
      tile: auto                            # a size in pixels, auto or none
      tile_overlap: 0.2
      tile_merge: ios
    how:
      threshold: per class, the confidence whose count error on held-out frames is closest to zero
      iou: the lowest count error of 0.7, 0.5 and 0.4 on held-out frames

The settings a card may recommend are :data:`CARD_SETTINGS`. A YAML file beside YOLO weights without a
``recommended`` section (a network's own ``yolov8n.yaml``, say) is not a card and is left alone.

Where each setting comes from (:func:`resolve_settings`)
    A value given to the run (a keyword or a flag: anything but None) wins; else the card's; else
    musseltools' default (for ``iou`` the model family's own NMS IoU, for ``imgsz`` the size the model
    was trained at). Each run records the outcome per setting (``settings_from`` in ``run.json``:
    ``given``, ``card`` or ``default``, with the card's file and its ``how``), and the survey report
    shows it.

Examples
--------
>>> card = parse_card({"recommended": {"iou": 0.4, "tile": "auto"}, "how": {"iou": "measured"}}, "m.yaml")
>>> r = resolve_settings({"iou": None, "tile": 640}, card)
>>> r.values["iou"], r.values["tile"], r.values["tile_merge"]
(0.4, 640, 'edge')
>>> r.origins["iou"]["from"], r.origins["tile"]["from"], r.origins["tile_merge"]["from"]
('card', 'given', 'default')
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.options import NO_TILES, OPTIONS
from ..core.thresholds import Thresholds
from ..errors import ModelLoadError, MusselToolsError, ThresholdError

__all__ = ["CARD_SETTINGS", "CardExistsError", "WeightsCard", "Resolved", "card_names", "parse_card", "read_card",
           "resolve_settings", "settings_after", "write_card"]

#: The settings a card may recommend (options whose default is None, so that "not given" is visible).
CARD_SETTINGS = ("threshold", "iou", "imgsz", "tile", "tile_overlap", "tile_merge")
#: Settings whose origin a run records besides those (given, else musseltools' default).
_ALSO_RECORDED = ("conf_floor", "max_det", "backend")


@dataclass(frozen=True)
class WeightsCard:
    """The recommended settings of a card file, and how each was found."""

    source: str
    recommended: dict[str, Any] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolved:
    """The value of each run setting, and where it came from (see the module docstring)."""

    values: dict[str, Any]
    origins: dict[str, dict[str, Any]]


def card_names(weights: str | os.PathLike) -> tuple[Path, Path]:
    """The card files a weights file may have: its name without the suffix, with ``.yaml`` or ``.json``.

    >>> [p.name for p in card_names("data/models/mussel-demo.pt")]
    ['mussel-demo.yaml', 'mussel-demo.json']
    """
    p = Path(weights)
    return p.with_name(f"{p.stem}.yaml"), p.with_name(f"{p.stem}.json")


def _checked(name: str, value: Any, where: str) -> Any:
    """A recommended value, validated as the option is (ModelLoadError naming the card and the key)."""
    option = OPTIONS[name]
    try:
        if name == "threshold":
            t = Thresholds.parse(value)
            return t.default if t.default is not None and not t.per_class else dict(t.per_class)
        if isinstance(value, str) and option.parse is not None and name != "tile_merge":
            value = option.parse(value)
        if name == "tile" and value == NO_TILES:
            return NO_TILES
        option.validate(value)
        if name == "tile_merge" and value is not None:
            option.parse(value)  # type: ignore[misc]
    except (ValueError, ThresholdError) as exc:
        raise ModelLoadError(f"{where}: recommended {name}: {exc} — fix the card") from None
    return value


def parse_card(doc: Any, source: str) -> WeightsCard:
    """The card in a parsed YAML or JSON document (``recommended`` and ``how``); ModelLoadError on bad values."""
    where = f"model card {source!r}"
    rec = doc.get("recommended") if isinstance(doc, Mapping) else None
    if not isinstance(rec, Mapping):
        raise ModelLoadError(f"{where}: recommended must be a mapping of setting to value — got {rec!r}")
    unknown = sorted(set(map(str, rec)) - set(CARD_SETTINGS))
    if unknown:
        raise ModelLoadError(f"{where} recommends {', '.join(unknown)} — a card may recommend "
                             f"{', '.join(CARD_SETTINGS)} — fix the card")
    how = doc.get("how") or {}
    if not isinstance(how, Mapping):
        raise ModelLoadError(f"{where}: how must be a mapping of setting to text — got {type(how).__name__}")
    values = {str(k): _checked(str(k), v, where) for k, v in rec.items() if v is not None}
    return WeightsCard(source, values, {str(k): " ".join(str(v).split()) for k, v in how.items()})


def read_card(weights: str | os.PathLike) -> WeightsCard | None:
    """The card beside a weights file, or None when there is none (or the YAML beside it is not a card)."""
    found = [p for p in card_names(weights) if p.is_file()]
    for path in found:
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".json":
                doc = json.loads(text)
            else:
                import yaml

                doc = yaml.safe_load(text)
        except Exception as exc:  # noqa: BLE001 - any read or syntax error: one clear message
            raise ModelLoadError(f"cannot read the model card {str(path)!r} of weights file {str(weights)!r}: {exc} "
                                 "— fix its syntax, or move it away") from exc
        if isinstance(doc, Mapping) and "recommended" in doc:
            return parse_card(doc, path.name)
    return None


def _fallback(name: str, default_iou: float | None, train_imgsz: int | None) -> Any:
    if name == "iou":
        return default_iou or OPTIONS.iou.fallback
    if name == "imgsz":
        return train_imgsz or OPTIONS.imgsz.fallback
    return OPTIONS[name].settings_default


def resolve_settings(options: Mapping[str, Any], card: WeightsCard | None, *, default_iou: float | None = None,
                     train_imgsz: int | None = None) -> Resolved:
    """The run's settings: given (not None), else the card's, else musseltools' (see the module docstring).

    ``tile="none"`` is given and means whole images. ``options`` holds run options by name; those missing
    count as not given.
    """
    values: dict[str, Any] = {}
    origins: dict[str, dict[str, Any]] = {}
    for name in (*CARD_SETTINGS, *_ALSO_RECORDED):
        given = options.get(name)
        if name in _ALSO_RECORDED:
            value = OPTIONS[name].default if given is None else given
            origin = {"from": "default" if value == OPTIONS[name].default else "given"}
        elif given is not None:
            value, origin = given, {"from": "given"}
        elif card is not None and name in card.recommended:
            value, origin = card.recommended[name], {"from": "card", "source": card.source}
            if name in card.how:
                origin["how"] = card.how[name]
        else:
            value, origin = _fallback(name, default_iou, train_imgsz), {"from": "default"}
        if name == "tile" and value == NO_TILES:
            value = None
        values[name] = value
        origins[name] = {"value": value, **origin}
    return Resolved(values, origins)


def settings_after(first: Mapping[str, Any], thresholds: Any, card: WeightsCard | None, *,
                   same_family: bool) -> dict[str, Any]:
    """The run options of a second model compared with a first run (``report --compare-model``).

    The rule: the second model runs with the first run's settings (``first``: its ``meta["settings"]``),
    except those the second model's card recommends; its thresholds are its card's, else the first run's
    thresholds in effect (``thresholds``). ``imgsz`` is taken from the first run only when both models are
    of one family (else the second model's own training size). A setting left to the card is None here
    (not given), so that the run records it as the card's.

    >>> card = parse_card({"recommended": {"iou": 0.4}}, "b.yaml")
    >>> o = settings_after({"iou": 0.7, "tile": None, "imgsz": 320}, {"live": 0.6, "dead": 0.3}, card,
    ...                    same_family=True)
    >>> o["iou"], o["tile"], o["imgsz"], o["threshold"]
    (None, 'none', 320, {'live': 0.6, 'dead': 0.3})
    """
    recommended = card.recommended if card is not None else {}
    out: dict[str, Any] = {}
    for name, value in first.items():
        if name in recommended or (name == "imgsz" and not same_family):
            out[name] = None
        elif name == "tile" and value is None:
            out[name] = NO_TILES  # whole images, given: not the card's or the default
        else:
            out[name] = value
    out["threshold"] = None if "threshold" in recommended else thresholds
    return out


# ---------------------------------------------------------------------------------------------- writing
class CardExistsError(MusselToolsError, FileExistsError):
    """A card (or another file of the card's name) is already beside the weights and was not to be replaced."""


def write_card(weights: str | os.PathLike, recommended: Mapping[str, Any], how: Mapping[str, str], *,
               extra: Mapping[str, Any] | None = None, force: bool = False, now: str | None = None
               ) -> tuple[Path, Path | None]:
    """Write the card beside a weights file (``<weights stem>.yaml``); returns (the card, its backup or None).

    ``recommended`` and ``how`` are validated as :func:`parse_card` reads them before anything is
    written; ``extra`` adds top-level sections (``calibration``: how the whole card was found). A file
    already there is never replaced unless ``force``; then it is first copied to
    ``<name>.bak-<timestamp>``, and its other top-level keys (a torchvision model's class ``names``) are
    kept. The file is written whole to a temporary name and moved into place.
    """
    import shutil
    import time

    import yaml

    path = card_names(weights)[0]
    doc: dict[str, Any] = {}
    if path.exists():
        if not force:
            raise CardExistsError(f"{str(path)!r} already exists beside the weights {str(weights)!r} — it is kept; "
                                  "pass force=True (musseltools calibrate --write-card --force) to replace it "
                                  "(the old file is kept as a backup)")
        with contextlib.suppress(Exception):  # an unreadable old file is replaced whole (its backup is kept)
            old = yaml.safe_load(path.read_text(encoding="utf-8"))
            doc = {k: v for k, v in old.items() if k not in ("recommended", "how", *(extra or {}))} \
                if isinstance(old, Mapping) else {}
    doc.update({"recommended": _plain(dict(recommended)), "how": {str(k): str(v) for k, v in how.items()},
                **_plain(dict(extra or {}))})
    parse_card(doc, path.name)  # what is written is a card musseltools reads
    backup = None
    if path.exists():
        backup = path.with_name(f"{path.name}.bak-{now or time.strftime('%Y%m%dT%H%M%S')}")
        shutil.copy2(path, backup)
    header = (f"# Model card of {Path(weights).name}: the settings musseltools uses with these weights unless a run "
              "is given others\n# (musseltools.models.card). Reports show where each setting came from.\n")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110), encoding="utf-8")
    os.replace(tmp, path)
    return path, backup


def _plain(value: Any) -> Any:
    """Plain YAML types (numpy numbers and tuples become floats, ints and lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value
