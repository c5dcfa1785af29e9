"""The determinism contract of docs/what-survives-what.md ("Determinism"), as the one way tests compare the
results of two runs (or two sets of detections).

Exact where the contract promises bit-identical results: both runs inferred on CPU, each with one and the
same torch threads per forward pass and batch 1 (``run.meta["inferred_with"]``). Anywhere else, within the
contract's tolerance: confidences within :data:`CONF_TOL`, box corners within :data:`BOX_TOL` px, every
vertex of a mask outline within :data:`VERTEX_TOL` px of the other outline; a detection within
:data:`CONF_TOL` of the confidence floor may be in one run only, and counts may differ only by detections
within :data:`CONF_TOL` of the threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: The contract's tolerance where results are not promised bit-identical (docs/what-survives-what.md).
CONF_TOL = 1e-3
BOX_TOL = 0.05
VERTEX_TOL = 1.0


def comparable(run: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's per-image table and detections table at the floor, sorted, without ``processed_at``.

    Polygons become tuples of rounded points so that frames compare with ``assert_frame_equal``.
    """
    floor = run.conf_floor
    table = run.per_image(threshold=floor).drop(columns=["processed_at"])
    table = table.sort_values(["image_id", "path"]).reset_index(drop=True)
    dets = run.detections(threshold=floor).copy()
    dets["polygon"] = dets["polygon"].map(lambda p: tuple(tuple(round(float(v), 3) for v in pt) for pt in p))
    cols = ["image_id", "class_id", "confidence", "x1", "y1", "x2", "y2"]
    dets = dets.sort_values(cols).reset_index(drop=True)
    return table, dets


def promised_exact(a: Any, b: Any) -> bool:
    """Whether the contract promises these two runs bit-identical results (see the module docstring)."""
    wa, wb = a.meta.get("inferred_with") or [], b.meta.get("inferred_with") or []
    return (len(wa) == 1 and wa == wb and wa[0].startswith("cpu") and "unknown" not in wa[0]
            and wa[0].endswith(", batch 1"))


def assert_same_results(got: Any, expected: Any, *, by_name: bool = False) -> None:
    """The two runs have the same results by the contract: nothing lost, nothing counted twice, and the
    same detections, exactly where promised, else within the tolerance.

    ``by_name``: compare image paths by file name only (a store of the same images elsewhere, e.g. on S3).
    """
    gt, gd = comparable(got)
    et, ed = comparable(expected)
    if by_name:
        for t in (gt, gd, et, ed):
            t["path"] = t["path"].map(lambda p: p.rsplit("/", 1)[-1])
    assert (got.meta["processed_count"], got.meta["failed_count"]) == (
        expected.meta["processed_count"], expected.meta["failed_count"])
    if promised_exact(got, expected):
        pd.testing.assert_frame_equal(gt, et)
        pd.testing.assert_frame_equal(gd, ed)
        assert got.meta["counts"] == expected.meta["counts"]
        return
    counted = ["n_detections", *got.categories]  # at the floor: a detection there may be in one run only
    pd.testing.assert_frame_equal(gt.drop(columns=counted), et.drop(columns=counted))
    floor = got.conf_floor
    for image_id in sorted(set(gd["image_id"]) | set(ed["image_id"])):
        assert_same_detections(_arrays(gd[gd["image_id"] == image_id]), _arrays(ed[ed["image_id"] == image_id]),
                               exact=False, floor=floor, what=f"image {image_id[:12]}")
    threshold = float(got.meta["threshold"])
    near = int(((gd["confidence"] - threshold).abs() <= CONF_TOL).sum() +
               ((ed["confidence"] - threshold).abs() <= CONF_TOL).sum())
    for cat in set(got.meta["counts"]) | set(expected.meta["counts"]):  # away from the threshold: equal
        assert abs(got.meta["counts"].get(cat, 0) - expected.meta["counts"].get(cat, 0)) <= near, (cat, near)


def _arrays(d: pd.DataFrame) -> dict[str, Any]:
    return {"class_id": d["class_id"].to_numpy(), "confidence": d["confidence"].to_numpy(),
            "xyxy": d[["x1", "y1", "x2", "y2"]].to_numpy(float),
            "polygons": [np.asarray(p, float).reshape(-1, 2) for p in d["polygon"]]}


def _as_arrays(d: Any) -> dict[str, Any]:
    if isinstance(d, dict):
        return d
    return {"class_id": np.asarray(d.class_id), "confidence": np.asarray(d.confidence), "xyxy": np.asarray(d.xyxy),
            "polygons": [np.asarray(p, float) for p in d.polygons]}


def assert_same_detections(a: Any, b: Any, *, exact: bool, floor: float = 0.0, what: str = "") -> None:
    """Two sets of detections of one image (:class:`~musseltools.detections.Detections`, or the arrays of
    :func:`_arrays`) are the same by the contract: identical when ``exact``, else each detection of one
    above ``floor + CONF_TOL`` matches one of the other within the tolerance (both ways)."""
    a, b = _as_arrays(a), _as_arrays(b)
    if exact:
        assert len(a["confidence"]) == len(b["confidence"]), what
        oa = np.lexsort((a["xyxy"][:, 0], -a["confidence"]))
        ob = np.lexsort((b["xyxy"][:, 0], -b["confidence"]))
        for k in ("class_id", "confidence", "xyxy"):
            np.testing.assert_array_equal(a[k][oa], b[k][ob], err_msg=f"{what} {k}")
        for i, j in zip(oa, ob):
            np.testing.assert_array_equal(a["polygons"][i], b["polygons"][j], err_msg=f"{what} polygon")
        return
    _match_one_way(a, b, floor, what)
    _match_one_way(b, a, floor, what)


def _match_one_way(a: dict[str, Any], b: dict[str, Any], floor: float, what: str) -> None:
    used: set[int] = set()
    for i in np.argsort(-a["confidence"], kind="stable"):
        if a["confidence"][i] < floor + CONF_TOL:
            continue  # at the floor: it may be kept in one run only
        same_class = np.flatnonzero(b["class_id"] == a["class_id"][i])
        free = [j for j in same_class if j not in used]
        assert free, f"{what}: detection {a['xyxy'][i]} ({a['confidence'][i]:.6f}) has no counterpart"
        dist = np.array([float(np.abs(b["xyxy"][j] - a["xyxy"][i]).max()) for j in free])
        near = np.flatnonzero(dist <= BOX_TOL)
        assert len(near), (f"{what}: box {a['xyxy'][i]} has none within {BOX_TOL} px in the other run "
                           f"(nearest {b['xyxy'][free[int(np.argmin(dist))]]})")
        # boxes at one place (an untrained model stacks them): the counterpart is the one of closest confidence
        conf_gap = np.abs(b["confidence"][[free[k] for k in near]] - a["confidence"][i])
        j = free[int(near[int(np.argmin(conf_gap))])]
        used.add(j)
        diff = abs(float(a["confidence"][i]) - float(b["confidence"][j]))
        assert diff <= CONF_TOL, f"{what}: confidence {a['confidence'][i]} against {b['confidence'][j]}"
        gap = _outline_gap(a["polygons"][i], b["polygons"][j])
        assert gap <= VERTEX_TOL, f"{what}: a mask vertex is {gap:.2f} px from the other outline (tolerance 1 px)"


def _outline_gap(p: np.ndarray, q: np.ndarray) -> float:
    """The largest distance from a vertex of either outline to the other outline (closed polygons)."""
    def one_way(p: np.ndarray, q: np.ndarray) -> float:
        if len(p) == 0 or len(q) == 0:
            return 0.0 if len(p) == len(q) else float("inf")
        s, e = q, np.roll(q, -1, axis=0)
        d = e - s
        t = np.clip(((p[:, None, :] - s[None]) * d[None]).sum(-1) / np.maximum((d * d).sum(-1), 1e-12)[None], 0, 1)
        nearest = s[None] + t[..., None] * d[None]
        return float(np.sqrt(((p[:, None, :] - nearest) ** 2).sum(-1)).min(axis=1).max())

    return max(one_way(p, q), one_way(q, p))
