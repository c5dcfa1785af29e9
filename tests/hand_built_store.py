"""A store written by hand (no model): a run's metadata, its collection and results parts of chosen rows.

For fast tests of what reads a store (the results view, compaction) with rows known to the test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from musseltools.core.detections import DETECTIONS_SCHEMA
from musseltools.store.store import IMAGES_SCHEMA, Store


def images_part(ids, *, sizes=(64, 48), n=None, error=None, at="2026-01-01"):
    """Images rows of a part: one per id, processed at ``at`` (None: not processed)."""
    k = len(ids)
    return pd.DataFrame({
        "image_id": list(ids), "path": [f"old/{i}.jpg" for i in ids], "width": [sizes[0]] * k, "height": [sizes[1]] * k,
        "n_detections": n if n is not None else [0] * k, "cap_hit": [False] * k, "error": error or [None] * k,
        "processed_at": pd.to_datetime([at] * k, utc=True)})


def detections_part(rows):
    """Detection rows of a part from (image_id, class_id, class_name, confidence, x1) tuples."""
    out = pd.DataFrame(rows, columns=["image_id", "class_id", "class_name", "confidence", "x1"])
    out["path"] = "old/" + out["image_id"] + ".jpg"
    out["y1"], out["x2"], out["y2"] = 1.0, out["x1"] + 5, 6.0
    out["polygon"] = pd.Series([None] * len(out), dtype=object)
    return out.astype({"class_id": np.int16, "confidence": np.float32, "x1": np.float32, "y1": np.float32,
                       "x2": np.float32, "y2": np.float32})


def commit(store: Store, key: str, unit: str, images: pd.DataFrame, dets: pd.DataFrame):
    """Commit one results part the way a run does (detections first, images part last)."""
    def table(frame, schema):
        return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)

    return store.commit_part(key, unit, table(images, IMAGES_SCHEMA), table(dets, DETECTIONS_SCHEMA))


def write_run(store: Store, run_id: str, key: str, collection: pd.DataFrame, *, status="completed", **meta):
    """A run's metadata (model classes mussel, gaping and shell; threshold 0.5, floor 0.05) and its collection."""
    base = {"run_id": run_id, "status": status, "threshold": 0.5, "settings": {"conf_floor": 0.05},
            "model": {"names": {"0": "mussel", "1": "gaping", "2": "shell"}, "fingerprint": "f0",
                      "class_map": {"mussel": "live", "gaping": "dead", "shell": "dead"}},
            "inference_key": key, "collection": {"n_images": len(collection)}, "created_at": "2026-01-01T00:00:00"}
    base.update(meta)
    store.write_run(base)
    store.write_collection(run_id, collection)
    return base
