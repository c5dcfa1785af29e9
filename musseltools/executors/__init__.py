"""Executors: how commit units get processed, behind one protocol (:mod:`.base`).

- :class:`LocalExecutor`: in this process, decode threads running ahead of the model (``workers=1``,
  and on a GPU);
- :class:`ProcessExecutor`: worker processes, one per core by default;
- :class:`DaskExecutor`: tasks on a Dask cluster (``client=``, ``--scheduler``, ``--scheduler-file``).

:func:`choose_executor` picks one from the run's options and the work left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..machine import cpu_cores, cuda_possible

if TYPE_CHECKING:
    from .base import Executor

#: Where each executor lives: imported on first use (PEP 562), so that the workers' server can be started
#: (:mod:`.server`, :mod:`.warmup`) before pandas, pyarrow and the models load.
_LAZY = {"Executor": "base", "UnitTask": "base", "DaskExecutor": "dask", "connect": "dask",
         "LocalExecutor": "local", "default_decode_workers": "local", "MAX_ATTEMPTS": "processes",
         "ProcessExecutor": "processes"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Executor",
    "UnitTask",
    "LocalExecutor",
    "ProcessExecutor",
    "DaskExecutor",
    "MAX_ATTEMPTS",
    "MIN_IMAGES_PER_WORKER",
    "choose_executor",
    "connect",
    "cpu_cores",
    "default_decode_workers",
]

#: Worker processes start only when each would get at least this many images to infer: starting one
#: (a fresh Python with torch, and the model) costs about as much as inferring ~40 survey frames here.
MIN_IMAGES_PER_WORKER = 48


def choose_executor(*, workers: int | None, client: Any, device: str | None, n_images: int,
                    tiled: bool = False) -> Executor:
    """The executor for a run.

    ``client`` given: Dask. ``workers`` given: that many processes (1: this process). Otherwise
    one process per core when there are enough images to pay back the workers' start
    (:data:`MIN_IMAGES_PER_WORKER` each; a tiled image counts as many), and this process on a GPU,
    where one process batching is fastest.

    Examples
    --------
    >>> choose_executor(workers=None, client=None, device="cpu", n_images=10)
    LocalExecutor()
    >>> choose_executor(workers=2, client=None, device="cpu", n_images=10)  # doctest: +ELLIPSIS
    ProcessExecutor(workers=2, threads=...)
    """
    from .dask import DaskExecutor
    from .local import LocalExecutor
    from .processes import ProcessExecutor

    if client is not None:
        return DaskExecutor(client)
    if workers is None:
        gpu = bool(device) and not str(device).startswith("cpu")
        if gpu or (device is None and _cuda()):
            return LocalExecutor()
        cores = cpu_cores()
        weight = 20 if tiled else 1
        workers = max(1, min(cores, (n_images * weight) // MIN_IMAGES_PER_WORKER))
    return LocalExecutor() if workers == 1 else ProcessExecutor(workers)


def _cuda() -> bool:
    if not cuda_possible():  # no GPU here: this process need not import torch to know it
        return False
    import torch

    return torch.cuda.is_available()
