"""Imported by the workers' fork server first (:data:`~musseltools.executors.server.FORKSERVER_PRELOAD`):
the server then ends without the interpreter's tear-down of every module it imported.

The fork server imports torch, torchvision and Ultralytics once so that workers fork with them. When the
run's process exits, the server sees it and exits too, and its tear-down of those modules took about 1.2 s
of CPU on this project's 2 cores: after ``musseltools run`` had returned, it held the command's output pipe
open (a ``| tee`` or a notebook's ``!musseltools run`` waited for it) and took a core from whatever ran
next. An exit handler registered before any other runs last: the others run (multiprocessing's own), then
the process ends with the status it had.

Importing this module anywhere but in the fork server does nothing.
"""

from __future__ import annotations

import atexit
import os
import sys

__all__ = ["in_fork_server"]


def in_fork_server() -> bool:
    """Whether this module is being imported by multiprocessing's fork server (its ``main`` is on the stack)."""
    server = sys.modules.get("multiprocessing.forkserver")
    if server is None:
        return False
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code is server.main.__code__:
            return True
        frame = frame.f_back
    return False


if in_fork_server():
    atexit.register(os._exit, 0)  # the server ends on a plain SystemExit (status 0) when its clients are gone
