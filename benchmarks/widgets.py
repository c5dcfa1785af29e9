"""Interactive speed and memory figures, moved out of the unit tests (which keep only generous guards).

Prints, on the demo survey (40 images, three 4000x3000 quadrats) with the demo detector and its labels:

- ``ThresholdTuner`` build time, slider-update median and maximum, image-pick maximum (README: about
  25 ms per move; the unit test only guards against a 10x slowdown);
- the slider update while zoomed 4x with confidences shown (moved out of tests/test_notebook_experience.py);
- ``Evaluation.at`` per call (a slider needs it well under 50 ms);
- the peak memory (RSS) a run over a decompression bomb and a few normal images adds, measured in a
  fresh process (a test measuring ``ru_maxrss`` inside the test session sees the session's peak, not
  the run's).

    python benchmarks/widgets.py                 # the demo survey (runs it once into a temporary store)
    python benchmarks/widgets.py --store DIR     # reuse a store that already holds the demo run
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
DEMO_IMAGES = ROOT / "data" / "demo" / "images"
DEMO_LABELS = ROOT / "data" / "demo" / "labels"
DEMO_MODEL = ROOT / "data" / "models" / "mussel-demo.pt"

_BOMB = textwrap.dedent(r"""
    import os, resource, struct, sys, zlib
    from pathlib import Path
    import numpy as np, cv2
    import musseltools as mt
    folder = Path(sys.argv[1]); folder.mkdir(parents=True, exist_ok=True)
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(folder / f"ok{i}.jpg"), (rng.random((96, 128, 3)) * 255).astype(np.uint8))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = mt.run(folder, model=sys.argv[2], imgsz=128, store=folder.parent / "store", quiet=True, batch_size=1)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) / 1024, run.meta["failed_count"])
""")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, help="a store holding the demo run (default: a new temporary one)")
    args = ap.parse_args(argv)

    import musseltools as mt
    from musseltools.jupyter.widgets import ThresholdTuner

    tmp = Path(tempfile.mkdtemp(prefix="mt-bench-widgets-"))
    store = args.store or tmp / "store"
    t0 = time.perf_counter()
    run = mt.run(DEMO_IMAGES, model=DEMO_MODEL, threshold=0.5, tile="auto", iou=0.5, store=store, quiet=True)
    print(f"demo run: {time.perf_counter() - t0:.1f} s, {run.meta['inferred_this_call']} images inferred")

    t0 = time.perf_counter()
    tuner = ThresholdTuner(run, truth=DEMO_LABELS)
    build = time.perf_counter() - t0
    slider, picker = [], []
    large = [i for i, p in enumerate(tuner.table["path"]) if "quadrat" in p]
    for i in [0, *large]:
        tuner.picker.value = i
        picker.append(tuner.last_update_s)
        for t in (0.3, 0.45, 0.6, 0.75):
            tuner.sliders["live"].value = t
            slider.append(tuner.last_update_s)
    print(f"ThresholdTuner: build {build:.2f} s; slider update median {statistics.median(slider) * 1000:.0f} ms, "
          f"max {max(slider) * 1000:.0f} ms ({len(slider)} moves, incl. 4000x3000 quadrats); "
          f"image pick max {max(picker) * 1000:.0f} ms")

    tuner.picker.value = large[0] if large else 0
    tuner.nav.zoom.value = 4
    tuner.nav.confidences.value = True
    zoomed = []
    for t in (0.1, 0.4, 0.8):
        tuner.sliders["live"].value = t
        zoomed.append(tuner.last_update_s)
    print(f"ThresholdTuner zoomed 4x with confidences shown: slider update max {max(zoomed) * 1000:.0f} ms")

    ev = mt.evaluate(run, DEMO_LABELS)
    n = 50
    t0 = time.perf_counter()
    for k in range(n):
        t = 0.05 + 0.9 * k / (n - 1)
        ev.at({"live": t, "dead": 1 - t})
    print(f"Evaluation.at: {(time.perf_counter() - t0) / n * 1000:.2f} ms per call ({n} calls)")

    tiny = _tiny_model(tmp)
    out = subprocess.run([sys.executable, "-c", _BOMB, str(tmp / "bomb"), str(tiny)], capture_output=True, text=True,
                         check=True)
    grew, failed = out.stdout.split()[-2:]
    print(f"run over a decompression bomb + 4 images: peak RSS grew by {float(grew):.0f} MB in a fresh process "
          f"({failed} image refused)")
    return 0


def _tiny_model(tmp: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_model

    return build_tiny_model(tmp / "tiny.pt")


if __name__ == "__main__":
    sys.exit(main())
