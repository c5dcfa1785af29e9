"""Moved to :mod:`musseltools.jupyter.widgets`; this path works, with a DeprecationWarning, for one release."""

from ._moved import moved

moved(__name__, "musseltools.jupyter.widgets")
