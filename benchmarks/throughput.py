"""Throughput of musseltools against plain Ultralytics on the same weights and images.

On the same images and weights, each timed from the call to the last result, model loading and
worker start included:

(a) Ultralytics: ``YOLO(w).predict(source=dir, stream=True)``, as a user would write it;
(b) musseltools with 1 worker (``workers=1``: this process, a decode thread ahead of the model);
(d) musseltools with the default workers (one process per core when the images pay back their start);
(e) musseltools on a Dask ``LocalCluster`` (one worker process per core, 1 thread each);
(c) model only, one process: forward + NMS on images already decoded and letterboxed (the ceiling per
    process, without loading).

With ``--onnx``, also the ONNX Runtime rows: (f) Ultralytics on its own exported graph (``YOLO("m.onnx")``);
(g) musseltools ``backend="onnx"`` with 1 worker, (h) with the default workers, (j) 1 worker with 2 ORT
threads (against (h): 2 workers x 1 thread on 2 cores); (i) the ORT model-only ceiling. musseltools' graph is
exported and checked once, before timing (its cache is copied into each fresh store, as a store keeps it).

musseltools runs end to end into a fresh store (scan + SHA-256, decode, inference down to the 0.01
floor, Parquet commits, run metadata, Zarr cube). Each contender is warmed up once (files in the page
cache, the batch size measured once per machine); timings are the best of ``--repeat`` interleaved
passes. The last line is ``ratio_vs_ultralytics=X.XX`` for (d), the default. As every import is warm in
this process after the first pass (torch for Ultralytics), so is the server that worker processes fork
from (started once per process, it serves every later run, as it does in a notebook): each pass still
starts its workers and loads the model in each.

    python benchmarks/throughput.py --synth 300          # 300 generated survey frames (seed 7)
    python benchmarks/throughput.py                      # the 40 demo images (start-up costs dominate)
    python benchmarks/throughput.py IMAGES --model W.pt --imgsz 640 --repeat 3 --no-dask
    python benchmarks/throughput.py --cold --onnx --synth 300 --frame-size 640x480 --repeat 3   # new processes
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
#: The NMS IoU of every contender: Ultralytics' default (musseltools would otherwise take the weights' card's;
#: whole images for all, as Ultralytics' predict runs them).
IOU = 0.7


def _images(folder: Path) -> list[Path]:
    from musseltools.images.collection import IMAGE_SUFFIXES

    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def bench_ultralytics(folder: Path, weights: str, imgsz: int | None) -> float:
    from ultralytics import YOLO

    t0 = time.perf_counter()
    model = YOLO(weights)
    n = 0
    size = {"imgsz": imgsz} if imgsz else {}  # default: the model's training size, as a user would get
    size["iou"] = IOU
    for _ in model.predict(source=str(folder), stream=True, verbose=False, **size):
        n += 1
    return n / (time.perf_counter() - t0)


def bench_musseltools(folder: Path, weights: str, imgsz: int | None, graphs: Path | None = None,
                      **how) -> tuple[float, dict]:
    import shutil

    import musseltools as mt

    with tempfile.TemporaryDirectory() as store:
        if graphs is not None:
            shutil.copytree(graphs, Path(store) / "cache" / "onnx")
        t0 = time.perf_counter()
        run = mt.run(folder, model=weights, imgsz=imgsz, iou=IOU, tile="none", store=store, quiet=True, **how)
        dt = time.perf_counter() - t0
        meta = run.meta
    assert meta["inferred_this_call"] == meta["total_images"], meta
    return meta["total_images"] / dt, meta


def bench_model_only(folder: Path, weights: str, imgsz: int, batch_size: int, backend: str = "torch",
                     graphs: Path | None = None) -> float:
    import cv2

    from musseltools.models import InferenceSettings, load_model, make_predictor

    predictor = make_predictor(load_model(weights), InferenceSettings(imgsz=imgsz, iou=IOU, backend=backend),
                               cache=graphs)
    prepared = [predictor.prepare(cv2.imread(str(p))) for p in _images(folder)]
    predictor.predict(prepared[:1])  # the graph found (and checked) before timing
    t0 = time.perf_counter()
    for i in range(0, len(prepared), batch_size):
        predictor.predict(prepared[i : i + batch_size])
    return len(prepared) / (time.perf_counter() - t0)


def _cluster():
    """A Dask LocalCluster of one worker process per core, 1 thread each. Its nannies start the worker
    processes: with ``worker_class=distributed.Worker`` a LocalCluster runs its workers inside this process
    (threads sharing one interpreter), which inferred no faster than one worker (see ``--dask``)."""
    from distributed import Client, LocalCluster

    from musseltools.executors import cpu_cores

    n = cpu_cores()
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
    return cluster, Client(cluster), n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="?", default=str(ROOT / "data" / "demo" / "images"))
    ap.add_argument("--model", default=str(ROOT / "data" / "models" / "mussel-demo.pt"))
    ap.add_argument("--imgsz", type=int, help="model input size (default: the model's training size)")
    ap.add_argument("--repeat", type=int, default=2, help="passes per contender; the best is kept")
    ap.add_argument("--synth", type=int, metavar="N", help="use N synthetic survey frames instead of IMAGES")
    ap.add_argument("--no-dask", action="store_true", help="leave out the Dask LocalCluster row")
    ap.add_argument("--onnx", action="store_true", help="add the ONNX Runtime rows (f) to (j)")
    ap.add_argument("--cold", action="store_true",
                    help="time whole new processes instead (benchmarks/cold_start.py): a plain Ultralytics script "
                         "against `musseltools run` (and --backend onnx with --onnx), median of --repeat")
    ap.add_argument("--dask", action="store_true",
                    help="Dask workers against process workers on the same shape (one process per core, 1 thread "
                         "each), both warm, in this process; also the issue's LocalCluster(worker_class=Worker)")
    ap.add_argument("--frame-size", metavar="WxH", help="size of the --synth frames (default: varied)")
    ap.add_argument("--iou", type=float, help="NMS IoU of every contender (default 0.7, Ultralytics' own; --cold: 0.4)")
    args = ap.parse_args(argv)
    folder = Path(args.images)
    if args.synth:
        from musseltools import synth

        folder = Path(tempfile.mkdtemp(prefix="mt-bench-")) / "survey"
        size = tuple(int(v) for v in args.frame_size.lower().split("x")) if args.frame_size else None
        synth.generate(folder, n=args.synth, seed=7, size=size)
        folder = folder / "images"
    n = len(_images(folder))
    if not n:
        print(f"no images in {folder}", file=sys.stderr)
        return 1
    if args.cold:
        return _cold(folder, args)
    if args.dask:
        return _dask(folder, args)
    globals()["IOU"] = args.iou or IOU
    import torch

    print(f"{n} images in {folder}, weights {args.model}, imgsz {args.imgsz or 'of the model'}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, CUDA {'yes' if torch.cuda.is_available() else 'no'}")

    # warm-up: files in the page cache, musseltools' batch size measured once per machine
    bench_ultralytics(folder, args.model, args.imgsz)
    _, meta = bench_musseltools(folder, args.model, args.imgsz, workers=1)
    batch = int(meta.get("batch_size") or 1)
    imgsz = int(meta["settings"]["imgsz"])
    cluster = None if args.no_dask else _cluster()
    graphs = onnx_graph = None
    if args.onnx:
        import shutil

        from ultralytics import YOLO

        copy = Path(tempfile.mkdtemp(prefix="mt-onnx-")) / Path(args.model).name  # not beside the user's weights
        shutil.copy(args.model, copy)
        onnx_graph = YOLO(str(copy)).export(format="onnx", imgsz=imgsz, verbose=False)  # as a user would
        graphs = Path(tempfile.mkdtemp(prefix="mt-graphs-"))
        bench_model_only(folder, args.model, imgsz, 1, backend="onnx", graphs=graphs)  # export and check

    rates: dict[str, list[float]] = {k: [] for k in "abcdefghij"}
    default = ""
    for _ in range(args.repeat):  # interleaved so that machine noise hits all alike
        rates["a"].append(bench_ultralytics(folder, args.model, args.imgsz))
        rates["b"].append(bench_musseltools(folder, args.model, args.imgsz, workers=1)[0])
        rate, meta = bench_musseltools(folder, args.model, args.imgsz)
        rates["d"].append(rate)
        default = meta.get("executor", "")
        if cluster is not None:
            rates["e"].append(bench_musseltools(folder, args.model, args.imgsz, client=cluster[1])[0])
        rates["c"].append(bench_model_only(folder, args.model, imgsz, batch))
        if args.onnx:
            rates["f"].append(bench_ultralytics(folder, onnx_graph, imgsz))
            rates["g"].append(bench_musseltools(folder, args.model, args.imgsz, graphs, workers=1, backend="onnx")[0])
            rates["h"].append(bench_musseltools(folder, args.model, args.imgsz, graphs, backend="onnx")[0])
            os.environ["MUSSELTOOLS_TORCH_THREADS"] = "2"
            try:
                rates["j"].append(bench_musseltools(folder, args.model, args.imgsz, graphs, workers=1,
                                                    backend="onnx")[0])
            finally:
                del os.environ["MUSSELTOOLS_TORCH_THREADS"]
            rates["i"].append(bench_model_only(folder, args.model, imgsz, 1, backend="onnx", graphs=graphs))
    if cluster is not None:
        cluster[1].close()
        cluster[0].close()
    best = {k: max(v) if v else float("nan") for k, v in rates.items()}
    a = best["a"]
    print(f"(a) ultralytics predict(source=dir, stream=True)     {a:8.1f} images/s")
    print(f"(b) musseltools, 1 worker (this process, batch {batch})   {best['b']:8.1f} images/s   x{best['b'] / a:.2f}")
    print(f"(d) musseltools, default: {default:<24s} {best['d']:8.1f} images/s   x{best['d'] / a:.2f}")
    if cluster is not None:
        print(f"(e) musseltools on a Dask LocalCluster ({cluster[2]} workers) {best['e']:8.1f} images/s   "
              f"x{best['e'] / a:.2f}")
    print(f"(c) model only, one process, pre-decoded           {best['c']:8.1f} images/s   x{best['c'] / a:.2f}")
    if args.onnx:
        for k, what in (("f", 'ultralytics YOLO("m.onnx") predict (its own graph)'),
                        ("g", "musseltools backend=onnx, 1 worker"), ("h", "musseltools backend=onnx, default"),
                        ("j", "musseltools backend=onnx, 1 worker x 2 threads"),
                        ("i", "ORT model only, one process, pre-decoded")):
            print(f"({k}) {what:<48s} {best[k]:8.1f} images/s   x{best[k] / a:.2f}")
        print(f"onnx_default_vs_ultralytics_onnx={best['h'] / best['f']:.2f}")
    print(f"ratio_vs_ultralytics={best['d'] / a:.2f}")
    return 0


def _dask(folder: Path, args: argparse.Namespace) -> int:
    """(d) process workers, (e) a Dask LocalCluster of worker processes (its nannies start them), (k) the same
    shape as Dask workers inside this process (``worker_class=distributed.Worker``: threads of one interpreter).
    Each is warmed by a first run (workers started, model loaded), then timed interleaved; best of --repeat."""
    import distributed
    from distributed import Client, LocalCluster

    from musseltools.executors import cpu_cores

    n = cpu_cores()
    shape = {"n_workers": n, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    clusters = {"e": LocalCluster(**shape), "k": LocalCluster(**shape, worker_class=distributed.Worker)}
    clients = {k: Client(c) for k, c in clusters.items()}
    how = {"d": {"workers": n}, **{k: {"client": c} for k, c in clients.items()}}
    rates: dict[str, list[float]] = {k: [] for k in how}
    for kw in how.values():  # warm: workers started and models loaded before timing
        bench_musseltools(folder, args.model, args.imgsz, **kw)
    for _ in range(args.repeat):
        for k, kw in how.items():
            rates[k].append(bench_musseltools(folder, args.model, args.imgsz, **kw)[0])
    for k in clients:
        clients[k].close()
        clusters[k].close()
    best = {k: max(v) for k, v in rates.items()}
    print(f"(d) musseltools, {n} worker processes, warm                {best['d']:8.1f} images/s")
    print(f"(e) musseltools on Dask, {n} worker processes x 1 thread    {best['e']:8.1f} images/s   "
          f"x{best['e'] / best['d']:.2f} of (d)")
    print(f"(k) Dask workers inside this process (worker_class=Worker) {best['k']:8.1f} images/s   "
          f"x{best['k'] / best['d']:.2f} of (d)")
    print(f"dask_vs_processes={best['e'] / best['d']:.2f}")
    return 0


def _cold(folder: Path, args: argparse.Namespace) -> int:
    from cold_start import cold, report

    imgsz, iou = args.imgsz or 320, args.iou or 0.4
    print(f"cold start: {len(_images(folder))} images in {folder}, weights {args.model}, imgsz {imgsz}, iou {iou}, "
          f"median of {args.repeat} whole processes each, {os.cpu_count()} CPUs")
    result, n = cold(folder, args.model, imgsz, iou, max(1, args.repeat), args.onnx)
    print(f"ratio_vs_ultralytics={report(result, n):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
