"""Thresholds and class maps: the one place where "is this detection counted?" is decided.

Every view of musseltools (counts, the per-image table, detections, the cube, exports, widgets, plots,
evaluation, reports and the counts a running job writes to ``run.json``) goes through the two values
defined here, so they cannot disagree.

The rule
    A detection of class ``c`` is counted at thresholds ``T`` when
    ``confidence >= T.of(c) - TOLERANCE``. :data:`TOLERANCE` absorbs the float32 rounding of stored
    confidences; it is the only tolerance in musseltools.

A class that a mapping leaves out
    keeps the run's threshold (``Thresholds.default``). ``run.save_thresholds({"live": 0.45})`` on a
    run asked at 0.5 counts ``live`` at 0.45 and every other class at 0.5. A mapping given without a
    default (outside a run) must name every class.

Keys
    Thresholds are given per model class name (``live``) or per category of the class map (``mussel``:
    every class mapped to it); a class name given explicitly wins over its category. They are stored
    per model class name.

Examples
--------
>>> cm = ClassMap(["live", "dead"])
>>> t = Thresholds.parse("live=0.45", default=0.5, classes=cm)
>>> t.of("live"), t.of("dead")
(0.45, 0.5)
>>> t.label(cm)
'live 0.45, dead 0.50'
>>> Thresholds.parse(0.3, classes=cm).keep([0.31, 0.2], ["live", "dead"]).tolist()
[True, False]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from ..errors import ThresholdError

__all__ = ["TOLERANCE", "ClassMap", "Thresholds", "ThresholdLike", "parse_class_map", "parse_min_length",
           "keep_length"]

#: The one tolerance: a confidence counts at ``T`` when ``confidence >= T - TOLERANCE``.
TOLERANCE = 1e-9

#: What callers may pass as a threshold: a number, ``"0.5"``, ``"live=0.45,dead=0.6"``, a mapping,
#: or a :class:`Thresholds`.
ThresholdLike = Union[float, str, Mapping[str, float], "Thresholds"]


def parse_class_map(text: str | Mapping[str, str] | None) -> dict[str, str] | None:
    """``NAME=CATEGORY,NAME=CATEGORY`` (or a JSON object, or a mapping) as a dict; None stays None.

    >>> parse_class_map("live=mussel,dead=shell")
    {'live': 'mussel', 'dead': 'shell'}
    """
    if text is None:
        return None
    if isinstance(text, Mapping):
        return {str(k): str(v) for k, v in text.items()}
    text = text.strip()
    if text.startswith("{"):
        import json

        try:
            return {str(k): str(v) for k, v in json.loads(text).items()}
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"class map {text!r} is not a JSON object of NAME: CATEGORY ({exc})") from None
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, cat = item.partition("=")
        if not sep or not name.strip() or not cat.strip():
            raise ValueError(f"class map entry {item!r} is not NAME=CATEGORY — expected e.g. live=live,dead=dead")
        out[name.strip()] = cat.strip()
    return out


@dataclass(frozen=True)
class ClassMap:
    """A model's class names and how they group into the categories counts are reported in.

    Parameters
    ----------
    names : sequence of str
        The model's class names, in class-id order.
    mapping : mapping of str to str, optional
        Class name -> category. A class the mapping leaves out is its own category.

    Examples
    --------
    >>> cm = ClassMap(["live", "dead", "gaping"], {"gaping": "dead"})
    >>> cm.categories, cm.category("gaping"), cm.members("dead")
    (['live', 'dead'], 'dead', ['dead', 'gaping'])
    """

    names: tuple[str, ...]
    mapping: dict[str, str] | None = field(default=None)

    def __init__(self, names: Iterable[str], mapping: Mapping[str, str] | None = None) -> None:
        names = tuple(str(n) for n in names)
        mapping = {str(k): str(v) for k, v in mapping.items()} if mapping else None
        if mapping:
            unknown = sorted(set(mapping) - set(names))
            if unknown:
                raise ThresholdError(
                    f"class map names {unknown} are not classes of the model — the model's classes are "
                    f"{sorted(names)} — fix the class map"
                )
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "mapping", mapping)

    def category(self, name: str) -> str:
        """The category a class name is counted in."""
        return self.mapping.get(name, name) if self.mapping else name

    def categories_of(self, names: Iterable[str]) -> list[str]:
        """:meth:`category` of each name."""
        return [self.category(n) for n in names]

    @property
    def categories(self) -> list[str]:
        """What counts are reported in: the categories in class-id order of first appearance."""
        return list(dict.fromkeys(self.category(n) for n in self.names))

    def members(self, category: str) -> list[str]:
        """The class names counted in a category."""
        return [n for n in self.names if self.category(n) == category]

    def to_dict(self) -> dict[str, str] | None:
        """The mapping as stored in run metadata (None without one)."""
        return dict(self.mapping) if self.mapping else None


@dataclass(frozen=True)
class Thresholds:
    """Confidence thresholds: one default, and optional overrides per model class name.

    Build with :meth:`parse`, which validates against the stored confidence floor and the model's
    classes. ``of(name)`` is the threshold of a class; :meth:`keep` applies the rule to rows.
    """

    default: float | None
    per_class: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def parse(
        cls,
        value: ThresholdLike,
        *,
        default: float | None = None,
        floor: float = 0.0,
        classes: ClassMap | Sequence[str] | None = None,
    ) -> Thresholds:
        """Validate a threshold given in any accepted form.

        Parameters
        ----------
        value : float, str, mapping or Thresholds
            ``0.5``, ``"0.5"``, ``"live=0.45,dead=0.6"``, ``{"live": 0.45}``.
        default : float, optional
            The threshold of classes a mapping leaves out (a run's own threshold).
        floor : float
            The confidence floor the results were stored with; thresholds below it are refused.
        classes : ClassMap or sequence of class names, optional
            Validates the keys of a mapping (class names or categories).

        Raises
        ------
        ThresholdError
            Not a number, outside ``[floor, 1]``, an unknown class, or a class without a threshold.
        """
        cmap = classes if isinstance(classes, ClassMap) or classes is None else ClassMap(classes)
        if isinstance(value, Thresholds):
            t = value if value.default is not None or default is None else cls(float(default), value.per_class)
            return t._checked(floor, cmap)
        if isinstance(value, str) and "=" in value:
            value = _parse_pairs(value)
        if isinstance(value, Mapping):
            per = _expand(value, cmap)
            d = None if default is None else _number(default, "the default threshold")
            return cls(d, per)._checked(floor, cmap)
        return cls(_number(value, "threshold"), {})._checked(floor, cmap)

    def _checked(self, floor: float, cmap: ClassMap | None) -> Thresholds:
        for name, t in ([("", self.default)] if self.default is not None else []) + list(self.per_class.items()):
            where = f" for {name!r}" if name else ""
            if math.isnan(t) or t > 1:
                raise ThresholdError(f"threshold {t}{where} is not a confidence — expected a number in [{floor}, 1]")
            if t < floor - TOLERANCE:
                raise ThresholdError(
                    f"threshold {t}{where} is below the confidence floor {floor} the results were stored with — "
                    f"counts below it are unknown — use a threshold >= {floor}, or run again with --conf-floor {t}"
                )
        if self.default is None and cmap is not None:
            missing = [n for n in cmap.names if n not in self.per_class]
            if missing:
                raise ThresholdError(
                    f"no threshold for classes {missing} — give one for every class, or a default "
                    "(e.g. 0.5 or live=0.45,dead=0.6)"
                )
        return self

    # ------------------------------------------------------------------ the rule
    def of(self, name: str) -> float:
        """The threshold of one model class."""
        if name in self.per_class:
            return self.per_class[name]
        if self.default is None:
            raise ThresholdError(f"no threshold for class {name!r} — give one for every class, or a default")
        return self.default

    def per_row(self, class_names: Iterable[str]) -> np.ndarray:
        """The threshold that applies to each row (one class name per row), as float64."""
        names = np.asarray(class_names if hasattr(class_names, "__len__") else list(class_names), dtype=object)
        names = names.reshape(-1)
        if not self.per_class and self.default is not None:
            return np.full(len(names), self.default, dtype=np.float64)
        if not len(names):
            return np.zeros(0, dtype=np.float64)
        uniq, inv = np.unique(names.astype(str), return_inverse=True)
        return np.array([self.of(str(n)) for n in uniq], dtype=np.float64)[inv.reshape(-1)]

    def keep(self, confidence: Iterable[float], class_names: Iterable[str]) -> np.ndarray:
        """Boolean mask of the rows that count: ``confidence >= threshold of the row - TOLERANCE``."""
        conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
        return conf >= self.per_row(class_names) - TOLERANCE

    def keep_codes(self, confidence: np.ndarray, codes: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """:meth:`keep` for rows given as integer codes into ``names`` (fast when called repeatedly)."""
        lut = np.array([self.of(n) for n in names], dtype=np.float64)
        return np.asarray(confidence, dtype=np.float64) >= lut[np.asarray(codes, dtype=np.int64)] - TOLERANCE

    def of_category(self, category: str, classes: ClassMap) -> float:
        """The one threshold of a category (its classes must agree)."""
        values = {self.of(n) for n in classes.members(category)}
        if len(values) > 1:
            raise ThresholdError(
                f"model classes of {category!r} have different thresholds {sorted(values)} — a category needs one "
                "threshold — give the category's threshold by its name"
            )
        if not values:
            raise ThresholdError(f"{category!r} is not a category of the model — the categories are {classes.categories}")
        return values.pop()

    def by_category(self, classes: ClassMap) -> dict[str, float]:
        """One threshold per category (see :meth:`of_category`)."""
        return {c: self.of_category(c, classes) for c in classes.categories}

    def by_class(self, classes: ClassMap | Sequence[str]) -> dict[str, float]:
        """One threshold per model class."""
        names = classes.names if isinstance(classes, ClassMap) else classes
        return {n: self.of(n) for n in names}

    # ------------------------------------------------------------------ forms
    @property
    def uniform(self) -> float | None:
        """The single threshold when every class has the same one, else None."""
        values = set(self.per_class.values()) | ({self.default} if self.default is not None else set())
        return values.pop() if len(values) == 1 else None

    def to_json(self, classes: ClassMap | Sequence[str] | None = None) -> float | dict[str, float]:
        """A number when uniform, else one value per class (for run.json, CLI JSON and reports)."""
        if self.uniform is not None and (self.default is not None or classes is None):
            return float(self.uniform)
        if classes is not None:
            return self.by_class(classes)
        return dict(self.per_class)

    def __str__(self) -> str:
        if not self.per_class and self.default is not None:
            return f"{self.default:g}"
        parts = [f"{k} {v:.2f}" for k, v in self.per_class.items()]
        if self.default is not None:
            parts.append(f"others {self.default:.2f}")
        return ", ".join(parts)

    def label(self, classes: ClassMap | Sequence[str] | None = None) -> str:
        """Human-readable, two decimals: ``0.50`` when uniform, else ``live 0.45, dead 0.50``.

        >>> Thresholds.parse({"live": 0.45}, default=0.5).label(["live", "dead"])
        'live 0.45, dead 0.50'
        """
        if self.uniform is not None and (self.default is not None or classes is None):
            return f"{self.uniform:.2f}"
        if classes is not None:
            return ", ".join(f"{k} {v:.2f}" for k, v in self.by_class(classes).items())
        return str(self)


def parse_min_length(value: Any) -> float:
    """A minimum shell length in mm (``min_length_mm``), validated: a number >= 0 (0 or None: no minimum).

    Like a threshold, it decides what counts and changes no stored result (:func:`keep_length` is its rule).

    >>> parse_min_length(5), parse_min_length("2.5"), parse_min_length(None)
    (5.0, 2.5, 0.0)

    Raises
    ------
    ThresholdError
        Not a number (a word, NaN, infinity, True/False), or below 0.
    """
    if value is None:
        return 0.0
    what = ("min_length_mm {!r} is {} — expected a shell length in millimetres >= 0 (0 or None: every length "
            "counts), e.g. 5 or --min-length-mm 5")
    if isinstance(value, bool):
        raise ThresholdError(what.format(value, "not a number"))
    try:
        mm = float(value)
    except (TypeError, ValueError):
        raise ThresholdError(what.format(value, "not a number")) from None
    if not math.isfinite(mm):
        raise ThresholdError(what.format(value, "not a finite number"))
    if mm < 0:
        raise ThresholdError(what.format(value, "below 0"))
    return mm


def keep_length(length_mm: Iterable[float], min_length_mm: float) -> np.ndarray:
    """Boolean mask of the rows that count at a minimum length: ``length_mm >= min_length_mm - TOLERANCE``, and
    every row without a length in mm (NaN: no scale on its image, or outside the image) — a detection that
    cannot be measured is counted, never dropped unseen.

    >>> keep_length([4.0, 5.0, float("nan"), 7.5], 5.0).tolist()
    [False, True, True, True]
    """
    mm = np.asarray(length_mm, dtype=np.float64).reshape(-1)
    if min_length_mm <= 0:
        return np.ones(len(mm), dtype=bool)
    return np.isnan(mm) | (mm >= min_length_mm - TOLERANCE)


def _number(value: Any, what: str) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ThresholdError(f"{what} {value!r} is not a number — expected a confidence in [0, 1]") from None
    if math.isnan(t):
        raise ThresholdError(f"{what} {value!r} is not a number — expected a confidence in [0, 1]")
    return t


def _parse_pairs(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, val = item.partition("=")
        if not sep or not name.strip():
            raise ThresholdError(f"threshold entry {item!r} is not NAME=VALUE — expected e.g. 0.5 or live=0.45,dead=0.6")
        out[name.strip()] = _number(val.strip(), f"threshold of {name.strip()!r}")
    return out


def _expand(value: Mapping[str, Any], cmap: ClassMap | None) -> dict[str, float]:
    """Per-class thresholds from keys that are class names or categories (a class name wins)."""
    given = {str(k): _number(v, f"threshold of {k!r}") for k, v in value.items()}
    if cmap is None:
        return given
    unknown = sorted(set(given) - set(cmap.names) - set(cmap.categories))
    if unknown:
        raise ThresholdError(
            f"thresholds given for unknown classes {unknown} — the model's classes are {list(cmap.names)}"
            + (f" and its categories {cmap.categories}" if cmap.mapping else "")
        )
    out: dict[str, float] = {}
    for cat, t in given.items():
        if cat not in cmap.names:
            for n in cmap.members(cat):
                out[n] = t
    for n, t in given.items():
        if n in cmap.names:
            out[n] = t
    return {n: out[n] for n in cmap.names if n in out}
