"""Moved to :mod:`musseltools.corrections.review`; this path works, with a DeprecationWarning, for one release."""

from ._moved import moved

moved(__name__, "musseltools.corrections.review")
