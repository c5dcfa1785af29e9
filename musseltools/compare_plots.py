"""Moved to :mod:`musseltools.plots.compare`; this path works, with a DeprecationWarning, for one release."""

from ._moved import moved

moved(__name__, "musseltools.plots.compare")
