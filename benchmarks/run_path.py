"""The run path: each read of the store's results parts in a run of the demo, and who asked for it.

A run's end (its counts in ``run.json`` and the count cube) should read the results once, through the
results view, and the views read after it (counts, per-image table, cube, detections) should re-use that
read rather than cross the store again. This script counts, for each step, the results parts read
(images parts, and detections parts with the columns asked for) and the musseltools function that asked,
the first frame outside ``musseltools/store/``.

    python benchmarks/run_path.py                 # the demo collection and detector, a fresh store
    python benchmarks/run_path.py --images DIR --model WEIGHTS
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import traceback
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

import musseltools as mt  # noqa: E402
from musseltools.store.store import Store  # noqa: E402

READS: list[tuple[str, str, str]] = []  # (kind, columns, asked by)
STORE_DIR = str(ROOT / "musseltools" / "store")


def _asked_by() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "musseltools" in frame.filename and not frame.filename.startswith(STORE_DIR):
            rel = Path(frame.filename).resolve().relative_to(ROOT / "musseltools")
            return f"{rel.with_suffix('').as_posix().replace('/', '.')}.{frame.name}"
    return "(outside musseltools)"


def _counting(read_table):
    def wrapper(self, path, columns=None):
        kind = "detections" if "/detections/" in str(path).replace(os.sep, "/") else "images"
        READS.append((kind, "all" if columns is None else ",".join(columns), _asked_by()))
        return read_table(self, path, columns)
    return wrapper


def _passes(reads: list[tuple[str, str, str]], parts: int) -> str:
    n = collections.Counter(kind for kind, _, _ in reads)
    return (f"{n['images'] / max(1, parts):.1f} passes over the {parts} images parts, "
            f"{n['detections'] / max(1, parts):.1f} over the detections parts")


def step(name: str, parts: int, fn) -> None:
    READS.clear()
    fn()
    by = collections.Counter(READS)
    print(f"\n{name}: {len(READS)} part reads ({_passes(READS, parts)})")
    for (kind, cols, who), n in sorted(by.items(), key=lambda kv: -kv[1]):
        print(f"  {n:4d}  {kind:10s} columns={cols:40s} asked by {who}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=str(ROOT / "data" / "demo" / "images"))
    ap.add_argument("--model", default=str(ROOT / "data" / "models" / "mussel-demo.pt"))
    args = ap.parse_args()
    Store._read_table = _counting(Store._read_table)  # count every parts read, whoever asks
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        holder = {}

        def first_run():
            holder["run"] = mt.run(args.images, model=args.model, store=store, quiet=True)

        READS.clear()
        first_run()
        run = holder["run"]
        parts = len(run.store.part_files(run.meta["inference_key"]))
        by = collections.Counter(READS)
        print(f"run (infers {run.meta['total_images']} images, commits {parts} parts): {len(READS)} part reads "
              f"({_passes(READS, parts)})")
        for (kind, cols, who), n in sorted(by.items(), key=lambda kv: -kv[1]):
            print(f"  {n:4d}  {kind:10s} columns={cols:40s} asked by {who}")
        step("no-op resume (same process)", parts, lambda: mt.run(args.images, model=args.model, store=store,
                                                                  quiet=True))
        step("run.counts() then per_image(), cube(), detections()", parts,
             lambda: (run.counts(), run.per_image(), run.cube(), run.detections()))
        step("run.counts(0.6) at another threshold", parts, lambda: run.counts(0.6))
        d = run.detections().iloc[0]
        run.reclassify(d.detection_id, "dead" if d.class_name != "dead" else "live", note="benchmark")
        step("after one correction: counts(), per_image(), cube()", parts,
             lambda: (run.counts(), run.per_image(), run.cube()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
