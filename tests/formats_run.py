"""A hand-built run for the annotation-format tests: three small real images (so that datasets and the
third-party readers find them), boxes, a rotated box and a polygon, classes mussel/gaping/shell counted
as live/dead, threshold 0.5."""

from __future__ import annotations

import numpy as np
import pandas as pd

SIZE = (128, 96)


def rotated(cx, cy, w, h, deg):
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    local = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    return np.stack([cx + local[:, 0] * c - local[:, 1] * s, cy + local[:, 0] * s + local[:, 1] * c], 1)


#: (image, class_id, class_name, confidence, polygon or box (x1, y1, x2, y2))
ROWS = [
    ("img0000", 0, "mussel", 0.9, (10, 10, 40, 30)),
    ("img0000", 1, "gaping", 0.8, (50, 20, 80, 50)),
    ("img0000", 2, "shell", 0.3, (90, 60, 110, 80)),  # below the threshold: not exported
    ("img0001", 0, "mussel", 0.7, rotated(60, 48, 30, 12, 30)),
    ("img0001", 2, "shell", 0.6, np.array([[20, 60], [35, 55], [45, 70], [30, 85], [18, 75]], float)),
]


def build(tmp_path):
    """``(store, run, image folder)``: run ``r1`` of images img0000..img0002 (img0002 has no detection)."""
    from conftest import write_images
    from hand_built_store import commit, images_part, write_run

    import musseltools as mt
    from musseltools.store.store import Store

    folder = tmp_path / "survey"
    paths = write_images(folder, 3, size=SIZE)
    ids = [p.stem for p in paths]
    store = Store(tmp_path / "store")
    meta = write_run(store, "r1", "k1", pd.DataFrame({"image_id": ids, "path": [str(p) for p in paths]}))
    store.write_run({**meta, "collection": {"n_images": 3, "source": {"root": str(folder)}}})
    rows = []
    for image, cid, name, conf, shape in ROWS:
        poly = np.asarray(shape, float)
        if poly.ndim == 1:
            x1, y1, x2, y2 = poly
            poly = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
        (x1, y1), (x2, y2) = poly.min(0), poly.max(0)
        rows.append({"image_id": image, "path": str(folder / f"{image}.jpg"), "class_id": cid, "class_name": name,
                     "confidence": conf, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "polygon": poly.tolist()})
    dets = pd.DataFrame(rows).astype({"class_id": np.int16, "confidence": np.float32, "x1": np.float32,
                                      "y1": np.float32, "x2": np.float32, "y2": np.float32})
    imgs = images_part(ids, sizes=SIZE, n=[3, 2, 0])
    imgs["path"] = [str(p) for p in paths]
    commit(store, "k1", "u1", imgs, dets)
    return store, mt.open_run("r1", store=store.root), folder
