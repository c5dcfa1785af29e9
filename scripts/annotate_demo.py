"""Draw the demo detector's detections on one demo image, for the README (docs/demo-annotated.jpg).

    python scripts/annotate_demo.py [--image survey_0001.jpg] [--threshold 0.5]

Runs (or resumes) the demo survey in the default store, so it costs no inference after `make demo`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    import cv2

    import musseltools as mt
    from musseltools.plots import survey as plots

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="survey_0001.jpg")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--out", default=str(ROOT / "docs" / "demo-annotated.jpg"))
    args = ap.parse_args()
    run = mt.run(ROOT / "data" / "demo" / "images", model=ROOT / "data" / "models" / "mussel-demo.pt",
                 threshold=args.threshold, tile="auto", iou=0.5, quiet=True)  # the settings of `make demo`
    dets = run.detections()
    dets = dets[dets["path"].str.endswith("/" + args.image)]
    image, scale = plots.read_image_rgb(ROOT / "data" / "demo" / "images" / args.image, max_side=None)
    colours = plots.class_colours(["live", "dead"])  # the one palette (Okabe-Ito blue and orange)
    drawn = plots.draw_detections(image, dets, colours, scale=scale, thickness=2)
    counts = dets["class_name"].value_counts().to_dict()
    label = f"live {counts.get('live', 0)}   dead {counts.get('dead', 0)}   (threshold {args.threshold})"
    cv2.rectangle(drawn, (0, 0), (12 + 11 * len(label), 30), (255, 255, 255), -1)
    cv2.putText(drawn, label, (8, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (20, 20, 20), 1, cv2.LINE_AA)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    print(f"wrote {args.out}: {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
