"""Where default paths are relative to: the project root.

A notebook in ``notebooks/`` and a shell in the project root must find the same default store, so
defaults are not relative to the working directory alone but to :func:`project_root`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["project_root"]


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The folder default paths are relative to: the nearest of ``start`` (the working directory) and
    its parents that holds ``data/store`` or a ``pyproject.toml``; else ``start`` itself.

    >>> project_root("/")
    PosixPath('/')
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "data" / "store").is_dir() or (folder / "pyproject.toml").is_file():
            return folder
    return here
