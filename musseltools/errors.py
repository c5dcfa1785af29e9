"""The errors musseltools raises.

Every error is a :class:`MusselToolsError`; messages say what happened, what was expected and what
to do about it, so that the command line can print them on one line.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "MusselToolsError",
    "CollectionError",
    "ModelLoadError",
    "ModelChangedError",
    "StoreError",
    "CorruptStoreError",
    "ReadOnlyStoreError",
    "RunNotFoundError",
    "RunLockedError",
    "ThresholdError",
    "InferenceError",
    "RunCancelled",
    "CorrectionError",
]


class MusselToolsError(Exception):
    """Base class of every error raised by musseltools.

    ``user_error`` marks errors that are the user's to fix (a missing folder, a wrong path, a locked
    run, a threshold out of range): in a notebook they show as one short message without a traceback
    (IPython calls :meth:`_render_traceback_`). Errors that are not (a damaged store, a crash of the
    model) set it False and keep their traceback, as do programming errors (TypeError, …).
    """

    user_error: bool = True

    @property
    def _render_traceback_(self) -> Callable[[], list[str]]:
        """IPython's hook, present on user errors only (others get IPython's usual traceback)."""
        if not self.user_error:
            raise AttributeError("_render_traceback_")
        return self.short_message

    def short_message(self) -> list[str]:
        """The error as IPython shows a user error: its type and message, on one line."""
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


class CollectionError(MusselToolsError, ValueError):
    """A collection of images could not be built (missing folder, no such file, bad list)."""


class ModelLoadError(MusselToolsError):
    """A weights file could not be loaded as an Ultralytics YOLO model."""


class ModelChangedError(MusselToolsError):
    """The weights file of an existing run no longer has the content the run was made with."""


class StoreError(MusselToolsError):
    """The results store cannot be read or written."""

    user_error = False


class CorruptStoreError(StoreError):
    """A file in the store is damaged (truncated or garbage Parquet part, unreadable metadata)."""


class ReadOnlyStoreError(StoreError):
    """Something must be written to a store that cannot be written here (a read-only mount, a shared archive)."""

    user_error = True


class RunNotFoundError(StoreError, KeyError):
    """No run with the given id exists in the store."""

    user_error = True

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "run not found"


class RunLockedError(MusselToolsError):
    """Another process is executing the same run (or one sharing its cached results)."""


class ThresholdError(MusselToolsError, ValueError):
    """A confidence threshold outside what the stored results can answer exactly."""


class InferenceError(MusselToolsError):
    """The model crashed while running; committed results are kept."""

    user_error = False


class RunCancelled(MusselToolsError):
    """The run was cancelled (Ctrl-C, kernel interrupt or ``handle.cancel()``); committed work is kept."""


class CorrectionError(MusselToolsError, ValueError):
    """A hand correction (or a file of them) is not valid for the run; nothing of it was saved."""
