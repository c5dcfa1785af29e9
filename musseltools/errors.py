"""The errors musseltools raises.

Every error is a :class:`MusselToolsError`; messages say what happened, what was expected and what
to do about it, so that the command line can print them on one line.
"""

from __future__ import annotations

__all__ = [
    "MusselToolsError",
    "CollectionError",
    "ModelLoadError",
    "ModelChangedError",
    "StoreError",
    "CorruptStoreError",
    "RunNotFoundError",
    "RunLockedError",
    "ThresholdError",
    "InferenceError",
    "RunCancelled",
    "CorrectionError",
]


class MusselToolsError(Exception):
    """Base class of every error raised by musseltools."""


class CollectionError(MusselToolsError, ValueError):
    """A collection of images could not be built (missing folder, no such file, bad list)."""


class ModelLoadError(MusselToolsError):
    """A weights file could not be loaded as an Ultralytics YOLO model."""


class ModelChangedError(MusselToolsError):
    """The weights file of an existing run no longer has the content the run was made with."""


class StoreError(MusselToolsError):
    """The results store cannot be read or written."""


class CorruptStoreError(StoreError):
    """A file in the store is damaged (truncated or garbage Parquet part, unreadable metadata)."""


class RunNotFoundError(StoreError, KeyError):
    """No run with the given id exists in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "run not found"


class RunLockedError(MusselToolsError):
    """Another process is executing the same run (or one sharing its cached results)."""


class ThresholdError(MusselToolsError, ValueError):
    """A confidence threshold outside what the stored results can answer exactly."""


class InferenceError(MusselToolsError):
    """The model crashed while running; committed results are kept."""


class RunCancelled(MusselToolsError):
    """The run was cancelled (Ctrl-C, kernel interrupt or ``handle.cancel()``); committed work is kept."""


class CorrectionError(MusselToolsError, ValueError):
    """A hand correction (or a file of them) is not valid for the run; nothing of it was saved."""
