"""Moved to :mod:`musseltools.images.collection`; this path works, with a DeprecationWarning, for one release."""

from ._moved import moved

moved(__name__, "musseltools.images.collection")
