"""Tests for musseltools.synth: determinism, label correctness, layout, parse_size."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from musseltools import synth

TOL = 2e-6  # labels are written with 6 decimals


# ---- tiny helpers --------------------------------------------------------------------------


def _tree_bytes(root: Path) -> dict[str, bytes]:
    """Every regular file under root (symlinks as their target text) -> bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = os.readlink(p).encode()
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


def _read(path: Path) -> list[list[float]]:
    return [[float(v) for v in line.split()] for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("synth") / "survey"
    counts = synth.generate(out, n=4, seed=7, density=1.5)
    return out, counts


# ---- determinism ---------------------------------------------------------------------------


def test_same_seed_same_bytes(tmp_path):
    a = synth.generate(tmp_path / "a", n=3, seed=3, size=(320, 256))
    b = synth.generate(tmp_path / "b", n=3, seed=3, size=(320, 256))
    pd.testing.assert_frame_equal(a, b)
    ta, tb = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert ta.keys() == tb.keys()
    assert len([k for k in ta if k.startswith("images/")]) == 3
    for k in ta:
        assert ta[k] == tb[k], k


def test_different_seed_differs(tmp_path):
    synth.generate(tmp_path / "a", n=2, seed=3, size=(320, 256))
    synth.generate(tmp_path / "b", n=2, seed=4, size=(320, 256))
    for name in ("survey_0000", "survey_0001"):
        assert (tmp_path / "a/images" / f"{name}.jpg").read_bytes() != (
            tmp_path / "b/images" / f"{name}.jpg"
        ).read_bytes()
        assert (tmp_path / "a/labels" / f"{name}.txt").read_text() != (
            tmp_path / "b/labels" / f"{name}.txt"
        ).read_text()


# ---- layout --------------------------------------------------------------------------------


def test_layout_and_yaml(small_set):
    out, counts = small_set
    assert list(counts.columns) == ["image", "live", "dead"]
    csv = pd.read_csv(out / "counts.csv")
    pd.testing.assert_frame_equal(csv, counts)
    images = sorted(p.name for p in (out / "images").glob("*.jpg"))
    assert images == sorted(counts["image"])
    for tree in ("obb", "seg"):
        for name in images:
            link = out / tree / "images" / name
            assert link.is_symlink()
            assert link.resolve() == (out / "images" / name).resolve()
            assert (out / tree / "labels" / name.replace(".jpg", ".txt")).is_file()
    import yaml

    for y in (out / "data.yaml", out / "obb/data.yaml", out / "seg/data.yaml"):
        data = yaml.safe_load(y.read_text())
        assert data["names"] == {0: "live", 1: "dead"}
        assert data["train"] == "images" and "path" not in data


def test_ultralytics_finds_tree_labels(small_set):
    """Ultralytics maps OUT/obb/images/x.jpg to OUT/obb/labels/x.txt (not the detect labels)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.data.utils import check_det_dataset, img2label_paths

    out, _ = small_set
    for tree in ("obb", "seg"):
        data = check_det_dataset(str(out / tree / "data.yaml"))
        img_dir = Path(data["train"])
        files = sorted(str(p) for p in img_dir.glob("*.jpg"))
        assert files
        for lab in img2label_paths(files):
            assert Path(lab).parent == (out / tree / "labels").resolve(), lab


def test_image_sizes(tmp_path):
    counts = synth.generate(tmp_path, n=3, seed=0, size=(352, 288))
    for name in counts["image"]:
        img = cv2.imread(str(tmp_path / "images" / name))
        assert img.shape == (288, 352, 3)
    varied = synth.generate(tmp_path / "v", n=6, seed=0)
    shapes = {cv2.imread(str(tmp_path / "v/images" / n)).shape[:2] for n in varied["image"]}
    assert len(shapes) > 1
    for h, w in shapes:
        assert 416 <= w <= 1280 and 320 <= h <= 960


# ---- label correctness ---------------------------------------------------------------------


def test_labels_consistent(small_set):
    out, counts = small_set
    total = tight = 0
    for rec in counts.itertuples():
        stem = rec.image[:-4]
        det = _read(out / "labels" / f"{stem}.txt")
        obb = _read(out / "obb/labels" / f"{stem}.txt")
        seg = _read(out / "seg/labels" / f"{stem}.txt")
        assert len(det) == len(obb) == len(seg)
        cls = [int(r[0]) for r in det]
        assert [int(r[0]) for r in obb] == cls == [int(r[0]) for r in seg]
        assert cls.count(0) == rec.live and cls.count(1) == rec.dead
        h, w = cv2.imread(str(out / "images" / rec.image)).shape[:2]
        for d, o, s in zip(det, obb, seg, strict=True):
            total += 1
            _, cx, cy, bw, bh = d
            assert len(d) == 5 and 0 < bw <= 1 and 0 < bh <= 1
            x0, x1, y0, y1 = cx - bw / 2, cx + bw / 2, cy - bh / 2, cy + bh / 2
            assert -TOL <= x0 and x1 <= 1 + TOL and -TOL <= y0 and y1 <= 1 + TOL
            poly = np.array(s[1:]).reshape(-1, 2)
            assert len(poly) >= 3
            # the box encloses the polygon
            assert poly[:, 0].min() >= x0 - TOL and poly[:, 0].max() <= x1 + TOL
            assert poly[:, 1].min() >= y0 - TOL and poly[:, 1].max() <= y1 + TOL
            # ... and is tight around it (within a pixel each side) unless occlusion split the shell
            # (the box covers every visible piece, the polygon outlines the largest)
            tight += poly[:, 0].min() - x0 <= 1.0 / w + TOL and x1 - poly[:, 0].max() <= 1.0 / w + TOL
            # OBB: 4 corners; its axis-aligned hull covers the box (corners clipped to the frame)
            corners = np.array(o[1:]).reshape(4, 2)
            assert corners.min() >= 0 and corners.max() <= 1
            assert corners[:, 0].min() <= x0 + TOL and corners[:, 0].max() >= x1 - TOL
            assert corners[:, 1].min() <= y0 + TOL and corners[:, 1].max() >= y1 - TOL
            # the polygon lies inside the OBB (in pixels, half a pixel of slack) unless the frame clipped it
            if corners.min() > 0 and corners.max() < 1:
                px = (corners * [w, h]).astype(np.float32)
                for pt in poly * [w, h]:
                    assert cv2.pointPolygonTest(px, (float(pt[0]), float(pt[1])), True) >= -0.6
    assert total > 10
    assert tight >= 0.9 * total


def test_boxes_cover_dark_and_pale_shells(tmp_path):
    """Labelled boxes sit on the drawn shells: live boxes are darker than dead boxes on average."""
    counts = synth.generate(tmp_path, n=3, seed=11, size=(480, 360))
    live_l, dead_l = [], []
    for name in counts["image"]:
        img = cv2.cvtColor(cv2.imread(str(tmp_path / "images" / name)), cv2.COLOR_BGR2GRAY).astype(float)
        h, w = img.shape
        for c, cx, cy, _bw, _bh in _read(tmp_path / "labels" / name.replace(".jpg", ".txt")):
            x, y = int(cx * w), int(cy * h)
            (live_l if c == 0 else dead_l).append(img[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].mean())
    assert live_l and dead_l
    assert np.median(live_l) + 40 < np.median(dead_l)


def test_large_quadrat(tmp_path):
    counts = synth.generate(tmp_path, n=2, seed=5, size=(320, 240), large=1)
    assert counts["image"].tolist()[0].startswith("survey_")
    big = counts.iloc[-1]
    img = cv2.imread(str(tmp_path / "images" / big["image"]))
    assert img.shape == (3000, 4000, 3)
    assert big["live"] + big["dead"] >= 300
    boxes = np.array(_read(tmp_path / "labels" / big["image"].replace(".jpg", ".txt")))
    lengths = np.maximum(boxes[:, 3] * 4000, boxes[:, 4] * 3000)
    assert np.median(lengths) < 45


def test_density_scales_counts(tmp_path):
    lo = synth.generate(tmp_path / "lo", n=4, seed=2, size=(480, 360), density=0.3)
    hi = synth.generate(tmp_path / "hi", n=4, seed=2, size=(480, 360), density=2.0)
    assert (lo.live + lo.dead).sum() < (hi.live + hi.dead).sum()
    empty = synth.generate(tmp_path / "none", n=1, seed=2, size=(320, 240), density=0.0)
    assert int(empty.live.sum() + empty.dead.sum()) == 0


# ---- arguments -----------------------------------------------------------------------------


def test_parse_size():
    assert synth.parse_size("640x480") == (640, 480)
    assert synth.parse_size(" 4000X3000 ") == (4000, 3000)


@pytest.mark.parametrize("bad", ["640", "640x", "x480", "axb", "640x480x3", "0x480", "-640x480", "16x16", ""])
def test_parse_size_errors(bad):
    with pytest.raises(ValueError) as err:
        synth.parse_size(bad)
    assert repr(bad) in str(err.value)


def test_generate_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="large"):
        synth.generate(tmp_path, n=1, large=2)
    with pytest.raises(ValueError, match="density"):
        synth.generate(tmp_path, n=1, density=-1)


def test_lengths_table_gives_each_labelled_shells_true_size_which_its_oriented_box_finds(small_set):
    out, counts = small_set
    sizes = pd.read_csv(out / "lengths.csv")
    assert list(sizes.columns) == list(synth.frames.LENGTHS_COLUMNS)
    whole = []
    for rec in counts.itertuples():
        stem, rows = rec.image[:-4], sizes[sizes["image"] == rec.image]
        obb = _read(out / "obb/labels" / f"{stem}.txt")
        assert rows["label"].tolist() == list(range(len(obb)))  # one row per label line, in order
        assert rows["cls"].tolist() == [int(r[0]) for r in obb]
        h, w = cv2.imread(str(out / "images" / rec.image)).shape[:2]
        for o, r in zip(obb, rows.itertuples(), strict=True):
            if r.kind == "live" and r.visible >= 0.99:  # whole: its oriented box is the shell's size
                c = np.array(o[1:]).reshape(4, 2) * [w, h]
                sides = np.hypot(*np.diff(np.vstack([c, c[:1]]), axis=0).T)
                whole.append((sides.max(), r.length_px))
    assert len(whole) >= 5
    got, true = np.array(whole).T
    # the oriented box grows by a pixel over the drawn outline, rasterised: within 3 px of the true length
    assert np.abs(got - true).max() <= 3.0 and (true > 5).all()
