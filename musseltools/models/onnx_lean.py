"""Where a process can infer without torch: the lean predictor of a graph checked by an earlier run.

:class:`~musseltools.models.onnx.OnnxPredictor` checks an Ultralytics detect graph with its torch-free
predictor (:mod:`~musseltools.models.onnx_detect`) and records the verdict, with the letterbox's geometry,
beside the graph. From then on a worker process that finds that record builds the
:class:`~musseltools.models.onnx_detect.LeanDetectPredictor` from the model's info (its card) and the record
alone (:func:`lean_predictor`): it never imports torch, torchvision or Ultralytics, nor loads the weights
into a model (about 3.5 s of CPU per cold run of two workers). A run's process may guess as much before its
workers start (:func:`lean_graph_checked`), to start them from a server that did not import torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .base import ModelInfo, cpu_threads, fingerprint
from .onnx import backend_in_use, default_cache, graph_key, lean_applies, read_record, session, valid_graph
from .onnx_detect import POSTPROCESS, LeanDetectPredictor

__all__ = ["lean_graph_checked", "lean_predictor"]


def lean_graph_checked(cache: Path, fingerprint: str) -> bool:
    """Whether ``cache`` holds a graph of these weights whose lean predictor passed its check (by its record;
    the graph's bytes are not hashed: a cheap guess of whether a run's workers will need torch)."""
    for path in Path(cache).glob("*.json"):
        record = read_record(path)
        if record.get("weights") == fingerprint and record.get("lean") and (record.get("check") or {}).get("passed"):
            return True
    return False


def lean_predictor(info: ModelInfo, settings: Any, cache: str | os.PathLike | None, *, device: str,
                   threads: int | None = None) -> LeanDetectPredictor | None:
    """The torch-free predictor of a model whose graph for these settings is cached with a passed check of
    its lean predictor, built from the model's info and the graph's record alone (torch is never imported,
    nor the model loaded); None when there is none (the model is loaded and the graph made and checked as
    :class:`OnnxPredictor` does), for tiled runs (their streams copy the torch model), and when the weights
    file is no longer the recorded one (loading it says so)."""
    if (backend_in_use(getattr(settings, "backend", "torch"), device) != "onnx" or settings.tile is not None
            or not lean_applies(info)):
        return None
    graph = (Path(cache) if cache is not None else default_cache()) / f"{graph_key(info, settings)}.onnx"
    record = read_record(graph.with_suffix(".json"))
    if not (record.get("lean") and (record.get("check") or {}).get("passed")) or record["lean"].get(
            "postprocess") != POSTPROCESS:
        return None
    try:
        if fingerprint(info.path) != info.fingerprint or not valid_graph(graph, record):
            return None
        threads = cpu_threads(threads)
        sess = session(graph, threads)
    except Exception:  # noqa: BLE001 - anything amiss: the full path says what
        return None
    geometry = record["lean"]
    return LeanDetectPredictor(sess, names=info.names, settings=settings, imgsz=geometry["imgsz"],
                               stride=geometry["stride"], threads=threads, device=device)
