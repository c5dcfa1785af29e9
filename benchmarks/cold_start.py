"""Cold start: whole new processes, timed from a shell's point of view (start to exit), as a new user would.

``benchmarks/throughput.py --cold`` runs this. Each pass starts, in turn (interleaved, so machine noise hits
all alike):

(a) a plain Ultralytics script: ``YOLO(w).predict(source=dir, stream=True)`` over the frames;
(d) ``musseltools run DIR --model W --imgsz S --iou I --tile none`` into a fresh store (default workers);
(h) the same with ``--backend onnx`` (its graph exported and checked once before timing, and copied into
    each fresh store, as a store keeps it).

Each figure is the median of ``--repeat`` passes of the whole process (interpreter start, imports, scan and
hashing, worker start, model load, inference, commits, tear-down and exit). The fixed cost of each is
estimated from the same pass: the process's time less the frames over its steady rate, the rate between its
first and last result (Ultralytics' script prints when each result comes; musseltools' progress bar is read
from its stderr as it is written).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ULTRALYTICS_SCRIPT = """
import sys, time
from ultralytics import YOLO
folder, weights, imgsz, iou = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
n = 0
for _ in YOLO(weights).predict(source=folder, stream=True, verbose=False, imgsz=imgsz, iou=iou):
    n += 1
    print(time.time(), n, flush=True)
"""

_BAR = re.compile(rb"\|\s*(\d+)/(\d+) \[")


class Timed:
    """One process run to its exit: wall time, and (time, images done) marks as it reported them."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.marks: list[tuple[float, int]] = []
        self.t0 = time.time()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
        readers = [threading.Thread(target=self._stdout, args=(proc.stdout,)),
                   threading.Thread(target=self._stderr, args=(proc.stderr,))]
        for r in readers:
            r.start()
        self.rc = proc.wait()
        self.wall = time.time() - self.t0  # the process's exit, as a shell sees it
        for r in readers:
            r.join()
        self.marks.sort()

    def _stdout(self, stream) -> None:  # Ultralytics' script: "epoch-time n" per result
        for line in stream:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():  # musseltools' summary has lines of two words too
                with contextlib.suppress(ValueError):
                    self.marks.append((float(parts[0]), int(parts[1])))

    def _stderr(self, stream) -> None:  # musseltools' progress bar: "| n/N [" as it is written
        self.err = b""
        while chunk := stream.read1(65536):
            now = time.time()
            self.err += chunk
            for m in _BAR.finditer(chunk):
                if int(m.group(1)):
                    self.marks.append((now, int(m.group(1))))

    def fixed_cost(self, n: int) -> float:
        """Seconds not explained by inferring ``n`` frames at the steady rate (first to last result)."""
        if len(self.marks) < 2:
            return float("nan")
        (t1, n1), (t2, n2) = self.marks[0], self.marks[-1]
        rate = (n2 - n1) / (t2 - t1) if t2 > t1 else float("inf")
        return self.wall - n / rate

    def first_result(self) -> float:
        """Seconds from the process's start to its first result."""
        return self.marks[0][0] - self.t0 if self.marks else float("nan")


def cold(folder: Path, weights: str, imgsz: int, iou: float, repeat: int, onnx: bool) -> tuple[dict[str, list[Timed]], int]:
    """Interleaved passes of each contender; returns each contender's timed processes, and the frames."""
    n = sum(1 for p in folder.iterdir() if p.is_file())
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    graphs = _graphs(folder, weights, imgsz, iou, env) if onnx else None
    mt_args = [sys.executable, "-m", "musseltools", "run", str(folder), "--model", weights, "--imgsz", str(imgsz),
               "--iou", str(iou), "--tile", "none"]
    out: dict[str, list[Timed]] = {"a": [], "d": [], "h": []}
    for _ in range(repeat):
        out["a"].append(Timed([sys.executable, "-c", ULTRALYTICS_SCRIPT, str(folder), weights, str(imgsz), str(iou)], env))
        with tempfile.TemporaryDirectory() as store:
            out["d"].append(Timed([*mt_args, "--store", store], env))
        if graphs is not None:
            with tempfile.TemporaryDirectory() as store:
                shutil.copytree(graphs, Path(store) / "cache" / "onnx")
                out["h"].append(Timed([*mt_args, "--backend", "onnx", "--store", store], env))
    for k, runs in out.items():
        for r in runs:
            if r.rc != 0:
                raise SystemExit(f"contender ({k}) failed with exit status {r.rc}: {r.err[-2000:].decode(errors='replace')}")
    return {k: v for k, v in out.items() if v}, n


def _graphs(folder: Path, weights: str, imgsz: int, iou: float, env: dict[str, str]) -> Path:
    """musseltools' ONNX graph, exported and checked once by a run (not timed): its store's graph cache."""
    store = Path(tempfile.mkdtemp(prefix="mt-cold-graphs-"))
    subprocess.run([sys.executable, "-m", "musseltools", "run", str(folder), "--model", weights, "--imgsz", str(imgsz),
                    "--iou", str(iou), "--tile", "none", "--backend", "onnx", "--store", str(store), "--quiet"],
                   env=env, cwd=ROOT, check=True)
    return store / "cache" / "onnx"


def report(result: dict[str, list[Timed]], n: int) -> float:
    """Print each contender's median process time, fixed cost and ratio; returns (d)'s ratio to (a)."""
    names = {"a": "ultralytics predict script", "d": "musseltools run (default workers)",
             "h": "musseltools run --backend onnx"}
    med = {k: statistics.median(r.wall for r in result[k]) for k in names if k in result}
    a = med["a"]
    for k, what in names.items():
        if k not in med:
            continue
        runs = result[k]
        fixed = statistics.median(r.fixed_cost(n) for r in runs)
        first = statistics.median(r.first_result() for r in runs)
        print(f"({k}) {what:<36s} {med[k]:6.2f} s  ({n / med[k]:5.1f} images/s)  x{a / med[k]:.2f}   "
              f"fixed ~{fixed:4.2f} s, first result at {first:4.2f} s   "
              f"[{', '.join(f'{r.wall:.2f}' for r in runs)}]")
    if "h" in med:
        print(f"cold_onnx_ratio_vs_ultralytics={a / med['h']:.2f}")
    return a / med["d"]
