"""The types and rules every layer shares: the one :class:`Detections` type, :class:`Thresholds` and
:class:`ClassMap`, and the run options (:mod:`musseltools.core.options`) that keywords and CLI flags mirror."""

from __future__ import annotations

from .detections import Detections
from .thresholds import ClassMap, Thresholds

__all__ = ["Detections", "Thresholds", "ClassMap"]
