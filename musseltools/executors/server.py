"""The server that worker processes fork from: what it imports, and starting it.

Kept apart from :mod:`~musseltools.executors.processes` and light to import (the standard library only), so
that ``musseltools run`` can start the server before it imports pandas, pyarrow and the models itself
(:func:`~musseltools.executors.warmup.start_early`, called first thing by the command): the server's
imports of torch, torchvision and Ultralytics (about 3.7 s on one of this project's 2 cores) then overlap
the command's own (about 0.55 s on the other) instead of following them.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["FORKSERVER_PRELOAD", "LEAN_PRELOAD", "context", "main_module_hidden", "start_server", "started"]


#: What the fork server imports once, so that each worker forks with it imported: torchvision too, which
#: Ultralytics imports when a predictor warms up (for its NMS) and which imports ``torch._dynamo``: about
#: 1.9 s per worker on this project's CPU, when it was not preloaded (a missing module is skipped). First,
#: :mod:`~musseltools.executors.serverexit`: the server's exit skips the tear-down of all that.
FORKSERVER_PRELOAD = ["musseltools.executors.serverexit", "musseltools.executors.task", "torch", "torchvision", "ultralytics", "musseltools.models.ultralytics"]
#: What the fork server imports for a run whose workers will infer without torch (a graph checked with the
#: torch-free predictor: :mod:`musseltools.models.onnx_lean`): torch's imports would cost each worker's core
#: about 3.5 s of CPU for nothing. A later run of this process that needs torch imports it in its workers.
LEAN_PRELOAD = ["musseltools.executors.serverexit", "musseltools.executors.task", "onnxruntime", "cv2", "musseltools.models.onnx_detect"]
_preload = FORKSERVER_PRELOAD
#: Whether :func:`start_server` started the server in this process.
_started = False


def context() -> Any:
    """``forkserver`` where there is one (workers fork from a clean server that imported musseltools once,
    and serves every later run of this process), else ``spawn``; never plain ``fork`` from a process that
    may already run torch threads."""
    if sys.platform.startswith("linux"):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_preload)
        return ctx
    return mp.get_context("spawn")


def start_server(lean: bool = False) -> bool:
    """Start the fork server now (its imports run in the background); whether there is one on this platform.
    The pool started later forks its workers from it (:mod:`~musseltools.executors.warmup`). ``lean``: it
    imports :data:`LEAN_PRELOAD`, not torch (a server already running keeps what it imported)."""
    global _preload, _started
    if not sys.platform.startswith("linux"):
        return False
    from multiprocessing import forkserver

    _preload = LEAN_PRELOAD if lean else FORKSERVER_PRELOAD
    context()
    with main_module_hidden():
        forkserver.ensure_running()
    _started = True
    return True


def started() -> bool:
    """Whether :func:`start_server` started the workers' server in this process."""
    return _started


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Start worker processes without re-running the caller's ``__main__`` (a script without an
    ``if __name__ == "__main__"`` guard, or a notebook): they run functions of musseltools only."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)
