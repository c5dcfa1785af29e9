"""Tiled inference: geometry, mapping back, seam merging, batching, resume, tile="auto"."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import IMGSZ, write_images
from contract import assert_same_detections as assert_same_by_contract

import musseltools as mt
from musseltools.core.detections import Detections
from musseltools.models import InferenceSettings, Prepared, YoloPredictor, load_model, make_predictor
from musseltools.models.tiling import (
    AUTO_TILE_FACTOR,
    Tile,
    TiledPredictor,
    merge_tiles,
    tile_grid,
    tile_origins,
)

NAMES = {0: "live", 1: "dead"}


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    """One torch thread: on a busy 2-core machine two threads per process oversubscribe it badly."""
    monkeypatch.setenv("MUSSELTOOLS_TORCH_THREADS", "1")


# ---------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap"),
    [(1000, 600, 320, 0.2), (4000, 3000, 640, 0.2), (129, 128, 128, 0.5), (700, 90, 128, 0.0), (90, 60, 128, 0.2),
     (333, 257, 64, 0.33)],
)
def test_tiles_cover_the_image_with_the_overlap_and_full_size_edge_tiles(width, height, tile, overlap):
    tiles = tile_grid(width, height, tile, overlap)
    covered = np.zeros((height, width), bool)
    for t in tiles:
        assert 0 <= t.x0 < t.x1 <= width and 0 <= t.y0 < t.y1 <= height
        assert t.width == min(tile, width) and t.height == min(tile, height)  # edge tiles shifted inward
        covered[t.y0 : t.y1, t.x0 : t.x1] = True
    assert covered.all()
    for length in (width, height):
        origins = tile_origins(length, tile, overlap)
        if length <= tile:
            assert origins == [0]
            continue
        assert origins[0] == 0 and origins[-1] == length - tile
        steps = np.diff(origins)
        assert (steps > 0).all()
        assert (tile - steps >= round(tile * overlap)).all()  # neighbours overlap at least as asked
        assert (steps[:-1] == steps[0]).all()  # regular, but for the last (shifted) tile


def test_image_smaller_than_a_tile_is_one_tile():
    assert tile_grid(100, 80, 128, 0.2) == [Tile(0, 0, 100, 80)]
    assert tile_grid(128, 128, 128, 0.2) == [Tile(0, 0, 128, 128)]


def test_bad_geometry_arguments_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        tile_origins(100, 32, 1.0)
    with pytest.raises(ValueError, match="positive"):
        tile_origins(100, 0, 0.2)


# ---------------------------------------------------------------------------------------------- a blob "model"
def draw_mussels(size: tuple[int, int], mussels: list[tuple[int, int, int, int, float, int]]) -> np.ndarray:
    """Mussels as filled ellipses (cx, cy, a, b, angle, class) on a plain background: live dark, dead pale."""
    w, h = size
    img = np.full((h, w, 3), 128, np.uint8)
    for cx, cy, a, b, angle, cls in mussels:
        cv2.ellipse(img, (cx, cy), (a, b), angle, 0, 360, (20, 20, 20) if cls == 0 else (240, 240, 240), -1)
    return img


def blob_detections(image: np.ndarray) -> Detections:
    """What an ideal model sees in an image (a tile): one box and outline per blob, clipped to the image.

    Blobs nearer the middle of the image get a higher confidence, so truncated halves near a tile's
    edge usually rank below the whole mussel, as with a real model.
    """
    h, w = image.shape[:2]
    gray = image[:, :, 0]
    xyxy, conf, cls, polys = [], [], [], []
    for c, mask in ((0, gray < 60), (1, gray > 200)):
        n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        for k in range(1, n):
            x, y, bw, bh, _ = stats[k]
            contours, _ = cv2.findContours((labels == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            xyxy.append([x, y, x + bw, y + bh])
            off = np.hypot((centroids[k][0] - w / 2) / w, (centroids[k][1] - h / 2) / h)
            conf.append(float(np.clip(0.95 - off, 0.05, 0.95)))
            cls.append(c)
            polys.append(max(contours, key=len).reshape(-1, 2).astype(np.float32))
    return Detections(np.array(xyxy, np.float32).reshape(-1, 4), conf, cls, polys, NAMES, (w, h))


class BlobPredictor:
    """A predictor of the protocol whose "model" is the ideal blob detector (no framework at all): tiling
    wraps it as it wraps a YOLO predictor, through the protocol's public methods only."""

    device = "cpu"
    names = NAMES
    task = "detect"

    def __init__(self) -> None:
        self.batch_size: int | None = None
        self.calls: list[int] = []  # inputs per predict call: tiles per forward pass

    def prepare(self, image: np.ndarray) -> Prepared:
        return Prepared(image=image, tensor=image)

    def predict(self, batch) -> list[Detections]:
        self.calls.append(len(batch))
        return [blob_detections(p.image) for p in batch]

    def images_per_call(self, batch_size: int) -> int:
        return batch_size

    def measure_batch_size(self, sample: Prepared) -> int:
        return 1


@pytest.fixture
def blob_predictor():
    """A TiledPredictor around the ideal blob detector (the real tiling, batching and merging run)."""

    def make(tile: int | str = 128, overlap: float = 0.25, **kw) -> TiledPredictor:
        inner = BlobPredictor()
        p = TiledPredictor(inner, InferenceSettings(imgsz=IMGSZ, tile=tile, tile_overlap=overlap), **kw)
        p.calls = inner.calls
        return p

    return make


# mussels placed on the seams of a 224x224 image cut into 128-px tiles overlapping by 32 px (seams at 96/128)
ON_SEAMS = [
    (128, 40, 14, 6, 0, 0),  # centred exactly on tile 0's right edge
    (40, 128, 6, 14, 0, 1),  # centred exactly on tile 0's bottom edge
    (128, 128, 14, 7, 30, 0),  # the corner shared by four tiles
    (112, 190, 9, 5, 80, 1),  # inside the overlap band: both tiles see it whole
    (96, 60, 12, 5, 10, 0),  # on tile 1's left edge
    (112, 10, 35, 5, 0, 1),  # longer than the overlap: every tile sees a part
    (30, 30, 10, 5, 45, 0),  # away from seams
    (190, 180, 11, 6, 120, 1),
    (116, 95, 10, 4, 0, 0),  # two mussels touching each other across the seam band
    (139, 95, 10, 4, 0, 0),
]


def test_a_mussel_on_a_seam_is_counted_once_with_its_whole_outline(blob_predictor):
    img = draw_mussels((224, 224), ON_SEAMS)
    truth = blob_detections(img)
    assert len(truth) == len(ON_SEAMS)
    p = blob_predictor(tile=128, overlap=0.25)
    assert tile_origins(224, 128, 0.25) == [0, 96]
    [det] = p.predict([p.prepare(img)])
    assert det.image_size == (224, 224)
    assert det.counts() == truth.counts()
    # every mussel found once, with its full-image box (mapped back from the tile that saw it whole)
    for box, cls in zip(truth.xyxy, truth.class_id):
        same = det.xyxy[det.class_id == cls]
        assert np.abs(same - box).max(axis=1).min() <= 1.0, box


def test_plain_iou_merging_would_count_seams_twice(blob_predictor):
    """The seam case above is a real test: without intersection-over-smaller matching it miscounts."""
    img = draw_mussels((224, 224), ON_SEAMS)
    p = blob_predictor(tile=128, overlap=0.25)
    tiles = tile_grid(224, 224, 128, 0.25)
    parts, tile_index, cut = [], [], []
    from musseltools.models.tiling import _cut_flags

    for k, t in enumerate(tiles):
        d = blob_detections(np.ascontiguousarray(img[t.y0 : t.y1, t.x0 : t.x1])).shifted(t.x0, t.y0)
        parts.append(d)
        tile_index.append(np.full(len(d), k))
        cut.append(_cut_flags(d.xyxy, t, 224, 224, 2.0))
    all_dets = Detections.concat(parts, NAMES, (224, 224))
    tile_index, cut = np.concatenate(tile_index), np.concatenate(cut)
    iou_only = merge_tiles(all_dets, tile_index, cut, tiles, ios=1.01)  # IoS matching switched off
    assert len(iou_only) > len(ON_SEAMS)
    for method in ("edge", "ios", "nmm"):
        assert len(merge_tiles(all_dets, tile_index, cut, tiles, method=method)) == len(ON_SEAMS), method
    assert p.merge == "edge"


def test_tiles_are_batched_and_streamed(blob_predictor):
    img = draw_mussels((480, 352), ON_SEAMS)
    p = blob_predictor(tile=128, overlap=0.25)
    n_tiles = len(tile_grid(480, 352, 128, 0.25))
    p.batch_size = 4
    p.calls.clear()
    p.predict([p.prepare(img), p.prepare(img[:, ::-1].copy())])
    assert sum(p.calls) == 2 * n_tiles
    assert max(p.calls) == 4 and len(p.calls) == -(-2 * n_tiles // 4)  # one forward pass per 4 tiles


def test_a_cut_detection_kept_first_takes_the_outline_of_the_whole_one():
    tiles = [Tile(0, 0, 100, 100), Tile(80, 0, 180, 100)]
    half = [80, 10, 100, 30]  # cut at tile 0's right edge (x=100), more confident
    whole = [80, 10, 120, 30]
    d = Detections([half, whole], [0.9, 0.6], [0, 0], names=NAMES)
    merged = merge_tiles(d, np.array([0, 1]), np.array([True, False]), tiles)
    assert len(merged) == 1
    assert merged.confidence[0] == pytest.approx(0.9)
    np.testing.assert_allclose(merged.xyxy[0], whole)
    # two halves, neither whole: the union
    d = Detections([[60, 10, 100, 30], [80, 10, 130, 30]], [0.7, 0.8], [1, 1], names=NAMES)
    merged = merge_tiles(d, np.array([0, 1]), np.array([True, True]), tiles)
    np.testing.assert_allclose(merged.xyxy, [[60, 10, 130, 30]])
    # another class is never merged, nor two detections of one tile
    d = Detections([half, whole], [0.9, 0.6], [0, 1], names=NAMES)
    assert len(merge_tiles(d, np.array([0, 1]), np.array([True, False]), tiles)) == 2
    d = Detections([half, whole], [0.9, 0.6], [0, 0], names=NAMES)
    assert len(merge_tiles(d, np.array([0, 0]), np.array([True, False]), tiles)) == 2


@pytest.mark.parametrize("task", ["segment", "obb"])
def test_a_mussel_cut_in_every_tile_gets_one_joined_outline(task):
    tiles = [Tile(0, 0, 100, 100), Tile(80, 0, 180, 100)]
    left = np.array([[60, 10], [100, 12], [100, 28], [60, 30]], np.float32)  # cut at x=100 (tile 0)
    right = np.array([[80, 11], [118, 14], [118, 26], [80, 29]], np.float32)  # cut at x=80 (tile 1)
    d = Detections([[60, 10, 100, 30], [80, 11, 118, 29]], [0.7, 0.8], [0, 0], [left, right], NAMES)
    merged = merge_tiles(d, np.array([0, 1]), np.array([True, True]), tiles, task=task)
    assert len(merged) == 1
    np.testing.assert_allclose(merged.xyxy[0], [60, 10, 118, 30])
    outline = merged.polygons[0]
    if task == "obb":
        assert outline.shape == (4, 2)
    assert outline[:, 0].min() == pytest.approx(60, abs=0.5) and outline[:, 0].max() == pytest.approx(118, abs=0.5)


def test_nmm_also_merges_partial_boxes_within_a_tile_edge_and_ios_do_not():
    tiles = [Tile(0, 0, 100, 100), Tile(80, 0, 180, 100)]
    whole, part = [10, 10, 40, 30], [10, 10, 25, 30]  # the model's own partial box, kept by its NMS
    d = Detections([whole, part], [0.9, 0.6], [0, 0], names=NAMES)
    for method, n in (("edge", 2), ("ios", 2), ("nmm", 1)):
        merged = merge_tiles(d, np.array([0, 0]), np.array([False, False]), tiles, method=method)
        assert len(merged) == n, method
    with pytest.raises(ValueError, match="edge, ios, nmm"):
        merge_tiles(d, np.array([0, 0]), np.array([False, False]), tiles, method="nms")


class ScriptedTiles:
    """A predictor of the protocol that returns set detections per tile, the tile known by its pixels
    (the image's column x holds the value x, so a tile's first pixel is its x0)."""

    device, names, task = "cpu", NAMES, "detect"

    def __init__(self, per_tile: dict[int, list[tuple[list[float], float]]]) -> None:
        self.per_tile, self.batch_size = per_tile, None

    def prepare(self, image: np.ndarray) -> Prepared:
        return Prepared(image=image, tensor=image)

    def predict(self, batch) -> list[Detections]:
        out = []
        for p in batch:
            h, w = p.image.shape[:2]
            boxes = self.per_tile.get(int(p.image[0, 0, 0]), [])
            out.append(Detections(np.array([b for b, _ in boxes], np.float32).reshape(-1, 4), [c for _, c in boxes],
                                  [0] * len(boxes), names=NAMES, image_size=(w, h)))
        return out

    def images_per_call(self, batch_size: int) -> int:
        return batch_size

    def measure_batch_size(self, sample: Prepared) -> int:
        return 1


def test_the_tile_merge_setting_decides_the_merged_boxes():
    """settings.tile_merge is the merge a TiledPredictor applies: three methods, three different results.

    A 180x100 image in two 100-px tiles (x 0-100 and 80-180). Tile 0 holds a whole mussel and the model's
    own partial box of it (only nmm merges within a tile), and a mussel in the overlap band; tile 1 sees
    that mussel smaller (intersection over the smaller box 1, IoU 0.37, neither box cut by a tile edge:
    ios and nmm merge it, edge keeps both).
    """
    assert tile_origins(180, 100, 0.2) == [0, 80]
    whole, part, band, band_small = [10, 10, 40, 30], [10, 10, 25, 30], [82, 40, 97, 60], [83, 42, 90, 58]
    scripted = ScriptedTiles({0: [(whole, 0.9), (part, 0.6), (band, 0.8)],
                              80: [([band_small[0] - 80, band_small[1], band_small[2] - 80, band_small[3]], 0.7)]})
    img = np.repeat(np.repeat(np.arange(180, dtype=np.uint8)[None, :, None], 100, axis=0), 3, axis=2)
    expected = {"edge": [whole, band, band_small, part], "ios": [whole, band, part], "nmm": [whole, band]}
    for method, boxes in expected.items():
        p = TiledPredictor(scripted, InferenceSettings(imgsz=IMGSZ, tile=100, tile_overlap=0.2, tile_merge=method))
        [det] = p.predict([p.prepare(img)])
        order = np.argsort(-det.confidence, kind="stable")
        np.testing.assert_allclose(det.xyxy[order], np.array(boxes, np.float32), err_msg=method)


@pytest.mark.parametrize("method", ["edge", "ios", "nmm"])
def test_merging_is_exact_at_every_threshold(method):
    """Merged at the floor then filtered at T == merged from the detections at or above T."""
    rng = np.random.default_rng(5)
    tiles = tile_grid(300, 200, 128, 0.3)
    for _ in range(20):
        n = 60
        k = rng.integers(0, len(tiles), n)
        xy = []
        for t in k:
            t = tiles[t]
            x1, y1 = rng.uniform(t.x0, t.x1 - 5), rng.uniform(t.y0, t.y1 - 5)
            xy.append([x1, y1, min(t.x1, x1 + rng.uniform(5, 40)), min(t.y1, y1 + rng.uniform(5, 40))])
        xy = np.array(xy, np.float32)
        det = Detections(xy, rng.uniform(0.01, 1, n), rng.integers(0, 2, n), names=NAMES, image_size=(300, 200))
        cut = np.zeros(n, bool)
        for i, t in enumerate(k):
            from musseltools.models.tiling import _cut_flags

            cut[i] = _cut_flags(xy[i : i + 1], tiles[t], 300, 200, 2.0)[0]
        full = merge_tiles(det, k, cut, tiles, method=method)
        for thr in (0.2, 0.5, 0.8):
            sel = det.confidence >= thr
            direct = merge_tiles(det[sel], k[sel], cut[sel], tiles, method=method)
            viewed = full.above(thr)
            assert viewed.counts() == direct.counts()
            np.testing.assert_array_equal(np.sort(viewed.confidence), np.sort(direct.confidence))


# ---------------------------------------------------------------------------------------------- real models
@pytest.mark.slow
@pytest.mark.parametrize("task", ["detect", "segment", "obb"])
def test_tile_detections_are_mapped_back_to_the_image(model_factory, task):
    """Without overlap nothing merges: the output is each tile's own detections moved by its offset."""
    rng = np.random.default_rng(1)
    img = (rng.random((128, 256, 3)) * 60 + 100).astype(np.uint8)
    for _ in range(12):
        c = (int(rng.integers(0, 256)), int(rng.integers(0, 128)))
        cv2.ellipse(img, c, (int(rng.integers(6, 20)), int(rng.integers(3, 8))), float(rng.uniform(0, 180)), 0, 360,
                    (25, 25, 25), -1)
    model = load_model(model_factory(task))
    settings = InferenceSettings(imgsz=IMGSZ, tile=128, tile_overlap=0.0, max_det=300)
    tiled = make_predictor(model, settings)
    assert isinstance(tiled, TiledPredictor)
    tiled.batch_size = 2
    [det] = tiled.predict([tiled.prepare(img)])
    whole = make_predictor(model, dataclasses.replace(settings, tile=None))
    assert isinstance(whole, YoloPredictor)
    expected = Detections.concat(
        [whole.predict([whole.prepare(np.ascontiguousarray(img[:, x : x + 128]))])[0].shifted(x, 0)
         for x in (0, 128)], image_size=(256, 128))
    assert len(det) == len(expected) > 0
    # tiles ran two to a batch, the expected ones alone: within the contract's tolerance, not bit-identical
    assert_same_by_contract(det, expected, exact=False)
    for pa_, box in zip(det.polygons, det.xyxy):
        assert (pa_[:, 0] >= box[0] - 2).all() and (pa_[:, 0] <= box[2] + 2).all()  # outline moved with its box
    centre = (det.xyxy[:, 0] + det.xyxy[:, 2]) / 2
    assert (centre > 128).any() and (centre < 128).any()  # both tiles contributed


def test_tiles_run_on_several_model_copies_at_once_with_the_results_of_one(model_factory):
    """Streams (one model copy each) run tile batches at once; detections are added in tile order, so the
    merged result is exactly that of one stream."""
    from musseltools.models import tile_streams

    rng = np.random.default_rng(3)
    img = (rng.random((300, 420, 3)) * 60 + 100).astype(np.uint8)
    for _ in range(30):
        c = (int(rng.integers(0, 420)), int(rng.integers(0, 300)))
        cv2.ellipse(img, c, (int(rng.integers(6, 20)), int(rng.integers(3, 8))), float(rng.uniform(0, 180)), 0, 360,
                    (25, 25, 25), -1)
    path = model_factory("detect")
    settings = InferenceSettings(imgsz=IMGSZ, tile=128, tile_overlap=0.2, conf_floor=0.001)
    one = make_predictor(load_model(path), dataclasses.replace(settings, tile=None), threads=1)
    extra = [make_predictor(load_model(path), dataclasses.replace(settings, tile=None), threads=1) for _ in range(2)]
    single, streams = TiledPredictor(one, settings), TiledPredictor(one, settings, replicas=extra)
    single.batch_size = streams.batch_size = 2
    [a] = single.predict([single.prepare(img)])
    [b] = streams.predict([streams.prepare(img)])
    assert len(a) == len(b) > 0 and len(streams.streams) == 3
    np.testing.assert_array_equal(a.confidence, b.confidence)
    np.testing.assert_array_equal(a.xyxy, b.xyxy)
    # in this process on a CPU, one torch thread leaves cores idle: a stream per core this process may use
    assert tile_streams("cpu", 2) == 2 and tile_streams("cpu", 1) == 1 and tile_streams("cuda:0", None) == 1


KW = {"imgsz": IMGSZ, "quiet": True}


@pytest.fixture
def large_images(tmp_path):
    folder = tmp_path / "large"
    write_images(folder, 4, seed=21, size=(300, 200))
    return folder


def assert_same_detections(da: pd.DataFrame, db: pd.DataFrame) -> None:
    """Equal within float noise: per image and class, the same sorted confidences, and every box of one
    run overlapping a box of the other (duplicates from two tiles have near-equal confidences, so which
    of them is kept may flip with the noise of batched convolutions)."""
    assert len(da) == len(db) > 0
    for key, ga in da.groupby(["image_id", "class_id"]):
        gb = db[(db.image_id == key[0]) & (db.class_id == key[1])]
        np.testing.assert_allclose(np.sort(ga.confidence), np.sort(gb.confidence), atol=1e-3)
        from musseltools.models.tiling import _pair_metrics

        iou, _ = _pair_metrics(ga[["x1", "y1", "x2", "y2"]].to_numpy(), gb[["x1", "y1", "x2", "y2"]].to_numpy())
        assert (iou.max(axis=1) >= 0.5).all() and (iou.max(axis=0) >= 0.5).all()


def _dets(run):
    cols = ["image_id", "class_id", "confidence", "x1", "y1", "x2", "y2"]
    return run.detections(0.01)[cols].sort_values(cols).reset_index(drop=True)


@pytest.mark.slow
def test_tiled_results_do_not_depend_on_the_model_batch_size(tmp_path, large_images, tiny_model, monkeypatch):
    sizes: list[int] = []
    orig = YoloPredictor.predict

    def spy(self, batch):
        sizes.append(len(batch))  # tiles of one shape per call: one forward pass
        return orig(self, batch)

    monkeypatch.setattr(YoloPredictor, "predict", spy)
    a = mt.run(large_images, model=tiny_model, tile=128, batch_size=1, store=tmp_path / "a", **KW)
    assert set(sizes) == {1}
    sizes.clear()
    b = mt.run(large_images, model=tiny_model, tile=128, batch_size=4, store=tmp_path / "b", **KW)
    assert max(sizes) == 4  # 4 tiles per forward pass
    assert a.meta["settings"]["tile"] == 128 and a.meta["settings"]["tile_overlap"] == 0.2
    assert_same_detections(_dets(a), _dets(b))
    for t in (0.02, 0.1, 0.3):
        assert a.counts(t) == b.counts(t)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_tiled_run_resumes_like_any_other(tmp_path, large_images, tiny_model, monkeypatch, backend):
    orig = TiledPredictor.predict
    n = {"calls": 0}

    def interrupted(self, batch):
        n["calls"] += 1
        if n["calls"] == 3:
            raise KeyboardInterrupt
        return orig(self, batch)

    monkeypatch.setattr(TiledPredictor, "predict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mt.run(large_images, model=tiny_model, tile=128, commit_every=1, store="store",
               backend=backend, **KW)
    run_id = mt.list_runs(store="store").iloc[0]["run_id"]
    r = mt.open_run(run_id, store="store")
    assert r.status == "cancelled" and r.meta["processed_count"] == 2
    monkeypatch.setattr(TiledPredictor, "predict", orig)
    resumed = mt.run(large_images, model=tiny_model, tile=128, commit_every=1, store="store",
               backend=backend, **KW)
    assert resumed.run_id == run_id
    assert resumed.status == "completed" and resumed.meta["inferred_this_call"] == 2
    straight = mt.run(large_images, model=tiny_model, tile=128, commit_every=1, store=tmp_path / "other",
                      backend=backend, **KW)
    pd.testing.assert_frame_equal(_dets(resumed), _dets(straight))
    assert resumed.counts(0.3) == straight.counts(0.3)
    runtime = {"torch": "torch", "onnx": "onnxruntime"}[backend]  # every tile stream ran it, as planned
    assert all(f" {runtime} threads" in w for w in resumed.meta["inferred_with"] + straight.meta["inferred_with"])


def test_auto_tiles_only_large_images(tmp_path, tiny_model):
    folder = tmp_path / "mixed"
    write_images(folder, 2, seed=4, size=(200, 150))  # longest side 200 <= 2 x 128: whole
    write_images(folder, 1, seed=5, size=(300, 200), start=10)  # 300 > 256: tiled
    assert AUTO_TILE_FACTOR * IMGSZ == 256
    p = make_predictor(load_model(tiny_model), InferenceSettings(imgsz=IMGSZ, tile="auto"))
    assert p.prepare(np.zeros((150, 200, 3), np.uint8)).tensor is not None
    assert p.prepare(np.zeros((200, 300, 3), np.uint8)).tensor is None
    assert len(p.tiles_for(300, 200)) == len(tile_grid(300, 200, IMGSZ, 0.2)) > 1
    auto = mt.run(folder, model=tiny_model, tile="auto", store=tmp_path / "a", **KW)
    plain = mt.run(folder, model=tiny_model, store=tmp_path / "b", **KW)
    assert auto.meta["inference_key"] != plain.meta["inference_key"]
    da, dp = _dets(auto), _dets(plain)
    small = auto.per_image().query("width == 200")["image_id"]
    pd.testing.assert_frame_equal(
        da[da.image_id.isin(small)].reset_index(drop=True), dp[dp.image_id.isin(small)].reset_index(drop=True)
    )


def test_cli_tile_flags_are_recorded_on_the_run(capsys, tiny_model, large_images):
    import json

    from musseltools.cli import main

    code = main(["run", str(large_images), "--model", str(tiny_model), "--imgsz", str(IMGSZ), "--store", "store",
                 "--tile", "auto", "--tile-overlap", "0.3", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    run = mt.open_run(json.loads(out)["run_id"], store="store")
    assert run.meta["settings"]["tile"] == "auto" and run.meta["settings"]["tile_overlap"] == 0.3
    assert run.per_image()["width"].tolist() == [300] * 4
    other = mt.run(large_images, model=tiny_model, tile="auto", tile_overlap=0.2, store="store", **KW)
    assert other.meta["inference_key"] != run.meta["inference_key"]  # the overlap keys the cached results


@pytest.mark.slow
def test_demo_model_counts_mussels_on_seams_once(tmp_path):
    """The real demo detector, tiled, on a 960x704 cut-out of a demo quadrat (95 labelled mussels, 28 of
    them cut by a tile edge: 320-px tiles overlapping by 20%), with the settings of its card. Every
    labelled mussel on a seam is counted at most once and almost all are found; the tiled count is within
    15% of the labels. Detections are matched one to one to the labels (IoU >= 0.5, by confidence); a
    seam mussel is counted twice when a detection left unmatched lies mostly (>= 70% of its box) on
    it. (Centres are no test on this dense bed: a neighbour's box centre often falls inside a mussel's
    box.) Measured: 93 detections at 0.5 for 95 labels, no seam mussel twice; 18 twice with merging
    turned off."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    stem, x0, y0, w, h = "quadrat_0037", 1750, 2250, 960, 704
    image = cv2.imread(str(root / "data" / "demo" / "images" / f"{stem}.jpg"))
    H, W = image.shape[:2]
    c, cx, cy, bw, bh = np.loadtxt(root / "data" / "demo" / "labels" / f"{stem}.txt", ndmin=2).T
    boxes = np.stack([(cx - bw / 2) * W, (cy - bh / 2) * H, (cx + bw / 2) * W, (cy + bh / 2) * H], 1)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = (centre[:, 0] >= x0) & (centre[:, 0] < x0 + w) & (centre[:, 1] >= y0) & (centre[:, 1] < y0 + h)
    truth = np.clip(boxes[inside] - [x0, y0, x0, y0], 0, [w, h, w, h])
    cv2.imwrite(str(tmp_path / "cutout.png"), image[y0:y0 + h, x0:x0 + w])
    tiles = tile_grid(w, h, 320, 0.2)

    def on_seam(b) -> bool:  # partly inside some tile: that tile cuts it
        return any(not (b[2] <= t.x0 or b[0] >= t.x1 or b[3] <= t.y0 or b[1] >= t.y1)
                   and not (t.x0 <= b[0] and b[2] <= t.x1 and t.y0 <= b[1] and b[3] <= t.y1) for t in tiles)

    seam = np.array([on_seam(b) for b in truth])
    assert len(truth) == 95 and seam.sum() >= 20, (len(truth), seam.sum())
    run = mt.run([tmp_path / "cutout.png"], model=root / "data" / "models" / "mussel-demo.pt", tile=320,
                 threshold=0.5, store=tmp_path / "store", quiet=True)
    assert run.meta["settings"]["tile"] == 320
    dets = run.detections(0.5).sort_values("confidence", ascending=False)
    d = dets[["x1", "y1", "x2", "y2"]].to_numpy()
    x1, y1 = np.maximum(d[:, None, 0], truth[None, :, 0]), np.maximum(d[:, None, 1], truth[None, :, 1])
    x2, y2 = np.minimum(d[:, None, 2], truth[None, :, 2]), np.minimum(d[:, None, 3], truth[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_d = ((d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1]))[:, None]
    area_t = ((truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1]))[None, :]
    iou, on_label = inter / (area_d + area_t - inter), inter / area_d
    matched: set[int] = set()
    unmatched = []
    for i in range(len(d)):
        free = [j for j in np.argsort(-iou[i]) if iou[i, j] >= 0.5 and j not in matched]
        matched.add(free[0]) if free else unmatched.append(i)
    twice = {int(np.argmax(on_label[i])) for i in unmatched if on_label[i].max() >= 0.7}
    twice = {j for j in twice if j in matched and seam[j]}
    assert not twice, f"mussels on seams counted twice: {sorted(twice)}"
    assert np.mean([j in matched for j in np.flatnonzero(seam)]) >= 0.8
    assert abs(len(dets) - len(truth)) <= 0.15 * len(truth), (len(dets), len(truth))
    assert sum(run.counts(0.5).values()) == len(dets)


# ------------------------------------------------------- seam merging by hand: edges pinned by mutation testing
def test_a_box_is_cut_only_at_inner_tile_edges_within_the_margin():
    from musseltools.models.tiling import _cut_flags

    inner = Tile(100, 100, 200, 200)  # in a 300x300 image: every edge inner
    boxes = np.array([[102, 140, 150, 160],  # left edge + margin 2: cut
                      [150, 140, 198, 160],  # right edge - margin: cut
                      [140, 102, 160, 150],  # top: cut
                      [140, 150, 160, 198],  # bottom: cut
                      [103, 103, 197, 197],  # inside the margin: whole
                      [100, 140, 120, 160]], np.float32)  # on the left edge only: cut
    assert _cut_flags(boxes, inner, 300, 300, 2.0).tolist() == [True, True, True, True, False, True]
    # edges on the image border never cut: the tile at the bottom right of a 200x200 image, and at the top left
    assert not _cut_flags(np.array([[150, 150, 200, 200]], np.float32), inner, 200, 200, 2.0).any()
    assert not _cut_flags(np.array([[0, 0, 50, 50]], np.float32), Tile(0, 0, 100, 100), 300, 300, 2.0).any()
    # a tile starting one pixel in has inner left and top edges
    assert _cut_flags(np.array([[1, 40, 50, 60], [40, 1, 60, 50]], np.float32), Tile(1, 1, 101, 101), 300, 300,
                      2.0).tolist() == [True, True]


def test_only_tiles_whose_areas_overlap_are_compared_and_only_boxes_reaching_the_shared_area():
    from musseltools.models.tiling import _overlapping_pairs, _reaching_into

    tiles = [Tile(0, 0, 100, 100), Tile(100, 0, 200, 100), Tile(0, 100, 100, 200), Tile(80, 80, 180, 180),
             Tile(300, 0, 400, 100), Tile(0, 300, 100, 400)]
    # edges that touch (0-1, 0-2) or tiles apart in one direction only (0-4, 0-5) are no pairs
    assert _overlapping_pairs(tiles) == [(0, 3), (1, 3), (2, 3)]
    assert _overlapping_pairs([Tile(100, 0, 200, 100), Tile(0, 0, 100, 100), Tile(100, 100, 200, 200)]) == []
    assert _overlapping_pairs([Tile(0, 100, 100, 200), Tile(0, 0, 100, 100)]) == []
    shared = Tile(80, 80, 100, 100)
    xyxy = np.array([[10, 85, 80, 95],  # ends on the shared area's left edge, in its rows
                     [85, 10, 95, 80],  # ends on its top edge, in its columns
                     [100, 85, 120, 95],  # starts on its right edge
                     [85, 100, 95, 120],  # starts on its bottom edge
                     [85, 85, 95, 95],  # inside
                     [120, 85, 150, 95],  # beside it, in its rows
                     [85, 10, 95, 50]], np.float32)  # above it, in its columns
    assert _reaching_into(xyxy, np.arange(7), shared).tolist() == [4]


@pytest.mark.parametrize("method", ["edge", "ios", "nmm"])
def test_small_mussels_side_by_side_are_not_merged(method):
    # 2x2 boxes one pixel apart (beside and above each other): no intersection, never one mussel
    tiles = [Tile(0, 0, 100, 100), Tile(80, 0, 180, 100)]
    d = Detections([[85, 10, 87, 12], [88, 10, 90, 12], [85, 13, 87, 15]], [0.9, 0.8, 0.7], [0, 0, 0], names=NAMES)
    merged = merge_tiles(d, np.array([0, 1, 1]), np.array([True, False, False]), tiles, method=method)
    assert len(merged) == 3


def test_a_pair_exactly_at_the_merge_thresholds_is_merged():
    tiles = [Tile(0, 0, 100, 100), Tile(80, 0, 180, 100)]
    # intersection over the smaller box exactly 0.5 (IoU 1/3), neither cut: ios and nmm merge, edge does not
    d = Detections([[82, 10, 92, 20], [87, 10, 97, 20]], [0.9, 0.8], [0, 0], names=NAMES)
    for method, n in (("ios", 1), ("nmm", 1), ("edge", 2)):
        assert len(merge_tiles(d, np.array([0, 1]), np.array([False, False]), tiles, method=method)) == n, method
    # IoU exactly 0.5, neither cut: edge merges
    d = Detections([[82, 10, 92, 20], [82, 10, 92, 15]], [0.9, 0.8], [0, 0], names=NAMES)
    assert len(merge_tiles(d, np.array([0, 1]), np.array([False, False]), tiles, method="edge")) == 1


def test_a_cut_box_takes_the_most_confident_whole_box_seen_next_door():
    # one mussel (x 85-110) cut in tile 0, seen whole in three other tiles; the cut box is the most confident
    tiles = [Tile(0, 0, 100, 100), Tile(80, 0, 180, 100), Tile(70, 0, 170, 100), Tile(60, 0, 160, 100)]
    cut_box = [85, 40, 100, 60]
    wholes = [[85, 40, 110, 60], [86, 40, 111, 61], [84, 39, 109, 60]]
    tile_index, cut = np.array([0, 1, 2, 3]), np.array([True, False, False, False])
    d = Detections([cut_box, *wholes], [0.9, 0.7, 0.8, 0.6], [0, 0, 0, 0], names=NAMES)
    merged = merge_tiles(d, tile_index, cut, tiles)
    assert len(merged) == 1 and merged.confidence[0] == pytest.approx(0.9)
    np.testing.assert_allclose(merged.xyxy[0], wholes[1])  # the 0.8 one
    # two equally confident whole boxes: the first given
    d = Detections([cut_box, *wholes], [0.9, 0.7, 0.7, 0.6], [0, 0, 0, 0], names=NAMES)
    np.testing.assert_allclose(merge_tiles(d, tile_index, cut, tiles).xyxy[0], wholes[0])
    # the whole box, not the union of the cut one with it (the cut one reaches further left)
    d = Detections([[70, 10, 100, 30], [82, 10, 120, 30]], [0.9, 0.6], [0, 0], names=NAMES)
    merged = merge_tiles(d, np.array([0, 1]), np.array([True, False]), tiles[:2])
    np.testing.assert_allclose(merged.xyxy, [[82, 10, 120, 30]])


def test_of_equally_confident_duplicates_the_first_given_is_kept():
    # ten mussels in the overlap band, each seen by both tiles with one confidence (three values in all);
    # tile 0's boxes come first and are kept, tile 1's (shifted by one pixel) are merged into them
    tiles = [Tile(0, 0, 100, 100), Tile(80, 0, 180, 100)]
    left = [[82, 9 * k, 96, 9 * k + 8] for k in range(10)]
    right = [[83, 9 * k, 97, 9 * k + 8] for k in range(10)]
    conf = [0.5 + (k % 3) / 10 for k in range(10)] * 2
    d = Detections(left + right, conf, [0] * 20, names=NAMES)
    merged = merge_tiles(d, np.array([0] * 10 + [1] * 10), np.zeros(20, bool), tiles)
    assert len(merged) == 10
    assert sorted(merged.xyxy[:, 0].tolist()) == [82] * 10


def test_merged_outlines_are_the_box_corners_the_hull_or_the_models_own():
    tiles = [Tile(0, 0, 100, 100), Tile(80, 0, 180, 100)]
    halves = [[60, 10, 100, 30], [80, 10, 130, 30]]  # both cut: the union
    d = Detections(halves, [0.7, 0.8], [0, 0], names=NAMES)
    merged = merge_tiles(d, np.array([0, 1]), np.array([True, True]), tiles)  # task "detect" by default
    np.testing.assert_allclose(merged.polygons[0], [[60, 10], [130, 10], [130, 30], [60, 30]])
    rects = [np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32) for x1, y1, x2, y2 in halves]
    d = Detections(halves, [0.7, 0.8], [0, 0], rects, NAMES)
    hull = merge_tiles(d, np.array([0, 1]), np.array([True, True]), tiles, task="segment").polygons[0]
    assert hull.shape == (4, 2) and sorted(map(tuple, hull.tolist())) == [(60, 10), (60, 30), (130, 10), (130, 30)]
    # a detection without duplicates keeps its own outline (a triangle here), not its box
    triangle = np.array([[10, 10], [40, 10], [25, 30]], np.float32)
    d = Detections([[10, 10, 40, 30]], [0.9], [0], [triangle], NAMES)
    out = merge_tiles(d, np.array([0]), np.array([False]), tiles, task="segment")
    np.testing.assert_allclose(out.polygons[0], triangle)
