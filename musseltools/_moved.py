"""Old import paths of modules that moved into subpackages: each still works for one release, with a warning."""

from __future__ import annotations

import importlib
import sys
import warnings

#: The release after which the old paths stop working.
REMOVED_IN = "0.3"


def moved(old: str, new: str) -> None:
    """Make module ``old`` the module ``new`` (same object, every name), warning the importer once."""
    warnings.warn(
        f"{old} moved to {new} — the old path works until musseltools {REMOVED_IN} — import from {new} instead",
        DeprecationWarning,
        stacklevel=3,  # the importer: warnings skips importlib's own frames
    )
    sys.modules[old] = importlib.import_module(new)

