"""Write the committed demo collection ``data/demo/`` with ``musseltools.synth``.

40 synthetic survey photographs, seed 2026: 37 small frames (416x320 to 1280x960)
and, last, 3 large 4000x3000 quadrat photos with hundreds of 20-40 px mussels.
Layout (images, detect/OBB/segment labels, data.yaml files, counts.csv) as
described in :mod:`musseltools.synth`.

Usage::

    python scripts/make_demo_data.py [--out data/demo]

Equivalent to ``musseltools.synth.generate("data/demo", n=40, seed=2026, large=3)``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musseltools import synth  # noqa: E402

N, SEED, LARGE = 40, 2026, 3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "data" / "demo"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    out = Path(args.out)
    if out.exists():  # start clean so that no stale file (or Ultralytics labels.cache) survives
        shutil.rmtree(out)
    counts = synth.generate(out, n=N, seed=SEED, large=LARGE)
    big = counts[counts.image.str.startswith("quadrat_")]
    (out / "README.md").write_text(
        "# Demo collection (synthetic)\n\n"
        f"Made by `python scripts/make_demo_data.py` = `musseltools.synth.generate('data/demo', n={N},"
        f" seed={SEED}, large={LARGE})`.\n"
        "Do not edit by hand; rerun the script (same bytes on the same platform).\n\n"
        f"- {len(counts) - len(big)} survey frames (416x320 to 1280x960) and {len(big)} quadrat photos"
        " (4000x3000, 20-40 px mussels).\n"
        f"- {int(counts.live.sum())} live and {int(counts.dead.sum())} dead mussels in all"
        f" ({int(big.live.sum())} live and {int(big.dead.sum())} dead in the quadrats).\n"
        "- `images/`, `labels/` (detect), `obb/`, `seg/`, `data.yaml` files and `counts.csv`"
        " (`image,live,dead`): see the docstring of `musseltools/synth.py`.\n"
        "- Synthetic pictures: for demos and tests only.\n"
    )
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and not p.is_symlink())
    logging.info(
        "%d images, %d live, %d dead, %.1f MB in %s",
        len(counts),
        counts.live.sum(),
        counts.dead.sum(),
        size / 1e6,
        out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
