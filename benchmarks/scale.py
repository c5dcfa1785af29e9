"""Scale: a no-op resume, a recount at 100 thresholds and peak memory, at 1k and 10k images.

For each size, N small generated images (64x48 PNG, distinct bytes) are inferred once with the demo
model at ``imgsz=64`` (the default executor: worker processes). Then, each in a fresh process so that
peak memory (RSS) is that call's alone:

- ``noop``: ``mt.run`` again (nothing to infer: must not load the model), seconds inside ``run()``;
- ``cli``: ``musseltools run ...`` again, wall seconds of the whole command (interpreter and imports too);
- ``recount``: ``run.counts(t)`` at 100 thresholds: the first call (loads the results) and the 100;
- ``compact``: ``musseltools compact``, then the no-op resume again on the merged parts (the first one
  after compaction counts and builds the cube once more, as the parts changed; the next is quick);
- Dask: the scheduler's overhead per task, from 500 empty tasks on a LocalCluster (for docs/scaling.md).

    python benchmarks/scale.py                  # 1000 and 10000 images
    python benchmarks/scale.py --sizes 2000     # one size
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "data" / "models" / "mussel-demo.pt"

_CHILD = r"""
import json, resource, sys, time
import musseltools as mt
what, images, store = sys.argv[1:4]
out = {}
t = time.perf_counter()
run = mt.run(images, model=sys.argv[4], imgsz=64, store=store, quiet=True)
out["run_s"] = time.perf_counter() - t
out["inferred"] = run.meta["inferred_this_call"]
out["model_loaded"] = "ultralytics" in sys.modules and "torch" in sys.modules
if what == "recount":
    t = time.perf_counter(); run.counts(0.5); out["first_count_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for k in range(100):
        run.counts(0.01 + k * 0.0098)
    out["counts_100_s"] = time.perf_counter() - t
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def make_images(folder: Path, n: int) -> None:
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    for i in range(n):
        img = base.copy()
        img[i % 48, (i // 48) % 64] = (i % 251, 255 - i % 251, (i // 251) % 256)
        img[(i * 7) % 48, (i * 13) % 64] = ((i * 31) % 256, (i // 3072) % 256, 7)
        cv2.imwrite(str(folder / f"img{i:05d}.png"), img)


def child(what: str, images: Path, store: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, what, str(images), str(store), str(MODEL)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cli_seconds(images: Path, store: Path) -> float:
    exe = Path(sys.executable).with_name("musseltools")
    t = time.perf_counter()
    subprocess.run([str(exe), "run", str(images), "--model", str(MODEL), "--imgsz", "64", "--store", str(store),
                    "--quiet"], check=True, capture_output=True)
    return time.perf_counter() - t


def dask_overhead(n: int = 500) -> float:
    """Seconds of scheduler overhead per task: empty tasks through a 2-worker LocalCluster."""
    import distributed
    from distributed import Client, LocalCluster, as_completed

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      worker_class=distributed.Worker) as cluster, Client(cluster) as client:
        client.submit(int, 0).result()
        t = time.perf_counter()
        futures = [client.submit(int, i, pure=False) for i in range(n)]
        for _ in as_completed(futures):
            pass
        return (time.perf_counter() - t) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mt-scale-"))
    print(f"{os.cpu_count()} CPUs; work folder {work}")
    for n in args.sizes:
        images, store = work / f"images-{n}", work / f"store-{n}"
        make_images(images, n)
        first = child("first", images, store)
        noop = child("noop", images, store)
        cli = min(cli_seconds(images, store) for _ in range(2))
        recount = child("recount", images, store)
        parts = len(list((store / "results").glob("*/images/part-*.parquet")))
        t = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("musseltools")), "compact", "--all", "--store", str(store)],
                       check=True, capture_output=True)
        compact_s = time.perf_counter() - t
        after = child("noop", images, store)  # the results changed: counted and cube built once more
        steady = child("noop", images, store)
        print(f"{n:6d} images: first run {first['run_s']:.1f} s ({first['inferred']} inferred, peak RSS "
              f"{first['peak_rss_mb']:.0f} MB)")
        print(f"        no-op resume: run() {noop['run_s']:.2f} s, whole CLI {cli:.2f} s, model loaded: "
              f"{noop['model_loaded']}, peak RSS {noop['peak_rss_mb']:.0f} MB ({parts} parts)")
        print(f"        recount: first call {recount['first_count_s']:.2f} s, 100 thresholds "
              f"{recount['counts_100_s']:.3f} s, peak RSS {recount['peak_rss_mb']:.0f} MB")
        print(f"        compact {parts} parts: {compact_s:.1f} s; no-op resume after it: run() {after['run_s']:.2f} s "
              f"(recounts once), then {steady['run_s']:.2f} s")
    if not args.no_dask:
        print(f"dask scheduler overhead per task: {dask_overhead() * 1000:.1f} ms (500 empty tasks, LocalCluster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
