"""Moved to :mod:`musseltools.core.detections`; this path works, with a DeprecationWarning, for one release."""

from ._moved import moved

moved(__name__, "musseltools.core.detections")
