"""Synthetic mussel survey generator.

Draws survey-like photographs of live and dead mussels on sand, gravel, rock
and algae with numpy and OpenCV, and writes them with exact labels, so that
the whole toolkit (training, inference, counting, evaluation) can be exercised
without real data.

What is drawn
-------------
* **live** (class 0): closed, dark blue-black elongated shells with a pointed
  umbo end, a sheen along the ridge and concentric growth lines; clustered and
  touching, any orientation, a range of sizes.
* **dead** (class 1): gaping shells (two valves open like a butterfly, showing
  the pale nacre interior), single valves lying interior-up, and broken
  fragments of valves.
* Backgrounds: sand, gravel, rock or algae textures, distractor pebbles,
  algae strands drawn over the shells, cast shadows, lighting gradients and
  vignetting, colour casts, blur, sensor noise and JPEG compression.

Output layout
-------------
::

    OUT/
      images/NAME.jpg        the photographs (JPEG, quality set explicitly)
      labels/NAME.txt        Ultralytics detect labels: ``class cx cy w h``
      data.yaml              detect dataset (train = val = images)
      counts.csv             true counts: ``image,live,dead`` (image = file name)
      obb/images/NAME.jpg    symlinks to ../../images/NAME.jpg
      obb/labels/NAME.txt    Ultralytics OBB labels: ``class x1 y1 x2 y2 x3 y3 x4 y4``
      obb/data.yaml
      seg/images/NAME.jpg    symlinks to ../../images/NAME.jpg
      seg/labels/NAME.txt    Ultralytics segment labels: ``class x1 y1 ... xn yn``
      seg/data.yaml

All coordinates are normalised to ``[0, 1]`` by the image width and height.
The ``obb`` and ``seg`` trees hold *per-file* symlinks inside real folders
because Ultralytics resolves the dataset folder (a folder symlink would send
it back to ``OUT/labels``) and finds labels by replacing ``/images/`` with
``/labels/`` in each image path. The ``data.yaml`` files have no ``path`` key,
so Ultralytics resolves ``images`` next to the yaml file and the dataset can be
moved. Class names are ``0: live`` and ``1: dead``.

Labelling rule
--------------
Every object is drawn into a per-pixel owner map, later objects over earlier
ones. An object is labelled only if at least ``MIN_VISIBLE`` (50 %) of its
pixels stay visible (inside the frame and not covered by later shells); it is
then labelled with its *visible* region: the box is the tight box of the
visible pixels, the polygon is the outline of the largest visible part, and the
oriented box is the minimum-area rectangle of all visible pixels. New shells
are placed so that they cover at most a third of their own area over existing
ones, so few shells fall under the rule. Algae strands drawn over shells are
thin and do not change labels. ``counts.csv`` counts exactly the labelled
objects.

Determinism
-----------
Each image draws from its own ``numpy.random.Generator`` seeded with
``(seed, index)``; nothing else is random, and the JPEG quality is chosen
explicitly, so the same arguments give the same bytes on the same platform.

Examples
--------
>>> import tempfile
>>> from musseltools.synth import generate
>>> counts = generate(tempfile.mkdtemp(), n=2, seed=0, size=(320, 240))
>>> list(counts.columns)
['image', 'live', 'dead']
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

__all__ = [
    "CLASS_NAMES",
    "MIN_VISIBLE",
    "FrameSpec",
    "generate",
    "generate_frames",
    "parse_size",
    "render_frame",
]

logger = logging.getLogger(__name__)

CLASS_NAMES: dict[int, str] = {0: "live", 1: "dead"}
LIVE, DEAD = 0, 1
#: Fraction of an object's pixels that must stay visible for it to be labelled.
MIN_VISIBLE = 0.5
#: A new shell may cover at most this fraction of its own area over earlier shells.
MAX_NEW_OVERLAP = 0.33

_SMALL_SIZES = [
    (416, 320),
    (480, 360),
    (512, 384),
    (640, 480),
    (800, 600),
    (960, 720),
    (1024, 768),
    (1280, 960),
]
_LARGE_SIZE = (4000, 3000)
_BIG = 1_300_000  # pixels; larger frames take faster (slightly different) paths


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """Parse a frame size written ``WxH`` (for example ``"640x480"``).

    Parameters
    ----------
    text : str
        Width and height in pixels separated by ``x`` (case-insensitive), both positive.

    Returns
    -------
    tuple of int
        ``(width, height)``.

    Raises
    ------
    ValueError
        If ``text`` is not of the form ``WxH`` with positive integers.

    Examples
    --------
    >>> parse_size("640x480")
    (640, 480)
    """
    parts = str(text).strip().lower().split("x")
    try:
        if len(parts) != 2:
            raise ValueError
        w, h = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(
            f"invalid size {text!r} — expected WIDTHxHEIGHT with positive integers, e.g. '640x480'"
        ) from None
    if w <= 0 or h <= 0:
        raise ValueError(f"invalid size {text!r} — width and height must be positive, e.g. '640x480'")
    if w < 32 or h < 32:
        raise ValueError(f"invalid size {text!r} — frames must be at least 32x32 pixels")
    return w, h


@dataclass(frozen=True)
class FrameSpec:
    """What one synthetic image should look like.

    Parameters
    ----------
    name : str
        File stem (the image is written as ``NAME.jpg``).
    width, height : int
        Frame size in pixels.
    style : {"survey", "quadrat"}
        ``"survey"``: a close-up frame with mussels of 8-18 % of the short side;
        ``"quadrat"``: a quadrat-scale frame with many small 20-40 px mussels.
    density : float
        Multiplies the number of mussels.
    jpeg_quality : int or None
        JPEG quality; ``None`` draws one from 75-95 per image.
    """

    name: str
    width: int
    height: int
    style: str = "survey"
    density: float = 1.0
    jpeg_quality: int | None = None


@dataclass
class _Object:
    cls: int
    mask: np.ndarray  # bool, patch-sized
    x0: int  # patch origin in the image (may be negative)
    y0: int
    area: int  # full (unclipped) pixel area
    oid: int = 0
    extra: dict = field(default_factory=dict)


def generate(
    out: str | os.PathLike,
    *,
    n: int = 20,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    density: float = 1.0,
    large: int = 0,
) -> pd.DataFrame:
    """Write a synthetic survey (images, labels, data.yaml, counts.csv) to ``out``.

    Parameters
    ----------
    out : path-like
        Output folder (created; existing files of the same names are overwritten).
    n : int
        Number of images.
    seed : int
        Seed; the same seed and arguments give the same bytes.
    size : tuple of int or None
        ``(width, height)`` of every frame; ``None`` draws varied small frame
        sizes from 416x320 to 1280x960.
    density : float
        Scales the number of mussels per image.
    large : int
        The last ``large`` images are 4000x3000 quadrat photos with hundreds of
        small (20-40 px) mussels.

    Returns
    -------
    pandas.DataFrame
        The true counts, columns ``image, live, dead`` (as in ``counts.csv``).

    Examples
    --------
    >>> import tempfile
    >>> counts = generate(tempfile.mkdtemp(), n=3, seed=1, size=(320, 240))
    >>> len(counts)
    3
    """
    if n < 0 or large < 0:
        raise ValueError(f"n and large must be >= 0 — got n={n}, large={large}")
    if large > n:
        raise ValueError(f"large={large} exceeds n={n} — large images are counted in n")
    if density < 0:
        raise ValueError(f"density must be >= 0 — got {density}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF00D]))
    specs: list[FrameSpec] = []
    for i in range(n):
        if i >= n - large:
            w, h = _LARGE_SIZE
            specs.append(FrameSpec(f"quadrat_{i:04d}", w, h, "quadrat", density, jpeg_quality=70))
        else:
            w, h = size if size is not None else _SMALL_SIZES[int(rng.integers(len(_SMALL_SIZES)))]
            specs.append(FrameSpec(f"survey_{i:04d}", int(w), int(h), "survey", density))
    return generate_frames(out, specs, seed=seed)


def generate_frames(out: str | os.PathLike, frames: list[FrameSpec], *, seed: int = 0) -> pd.DataFrame:
    """Write the frames described by ``frames`` as one dataset (layout as in the module docstring).

    Parameters
    ----------
    out : path-like
        Output folder.
    frames : list of FrameSpec
        One spec per image; names must be unique.
    seed : int
        Seed; image ``i`` draws from a generator seeded with ``(seed, i)``.

    Returns
    -------
    pandas.DataFrame
        Columns ``image, live, dead``.

    Examples
    --------
    >>> import tempfile
    >>> specs = [FrameSpec("a", 320, 320, "quadrat"), FrameSpec("b", 416, 320)]
    >>> generate_frames(tempfile.mkdtemp(), specs, seed=3)["image"].tolist()
    ['a.jpg', 'b.jpg']
    """
    out = Path(out)
    names = [f.name for f in frames]
    if len(set(names)) != len(names):
        raise ValueError("frame names must be unique — got duplicates")
    for sub in ("images", "labels", "obb/images", "obb/labels", "seg/images", "seg/labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i, spec in enumerate(frames):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), i]))
        img, labels = render_frame(spec, rng)
        quality = spec.jpeg_quality if spec.jpeg_quality is not None else int(rng.integers(75, 96))
        fname = f"{spec.name}.jpg"
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:  # pragma: no cover - cv2 failure
            raise RuntimeError(f"JPEG encoding failed for {fname}")
        (out / "images" / fname).write_bytes(buf.tobytes())
        _write_labels(out, spec.name, labels, spec.width, spec.height)
        for tree in ("obb", "seg"):
            link = out / tree / "images" / fname
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(os.path.join("..", "..", "images", fname), link)
        live = sum(1 for lab in labels if lab["cls"] == LIVE)
        dead = sum(1 for lab in labels if lab["cls"] == DEAD)
        rows.append({"image": fname, "live": live, "dead": dead})
        logger.debug("%s: %dx%d, %d live, %d dead", fname, spec.width, spec.height, live, dead)
    counts = pd.DataFrame(rows, columns=["image", "live", "dead"])
    counts.to_csv(out / "counts.csv", index=False, lineterminator="\n")
    names_yaml = "names:\n  0: live\n  1: dead\n"
    for ydir in (out, out / "obb", out / "seg"):
        (ydir / "data.yaml").write_text(
            "# synthetic mussel survey (musseltools.synth); paths relative to this file\n"
            f"train: images\nval: images\nnc: 2\n{names_yaml}"
        )
    logger.info("wrote %d synthetic images to %s", len(frames), out)
    return counts


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def render_frame(spec: FrameSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Render one frame.

    Parameters
    ----------
    spec : FrameSpec
        Frame description.
    rng : numpy.random.Generator
        The only source of randomness.

    Returns
    -------
    image : numpy.ndarray
        ``uint8`` BGR image of shape ``(height, width, 3)``.
    labels : list of dict
        One dict per labelled object: ``cls``, ``box`` (x0, y0, x1, y1 in pixels),
        ``obb`` (4x2 pixel corners) and ``poly`` (Nx2 pixel polygon).
    """
    w, h = spec.width, spec.height
    img = _background(rng, w, h, spec.style)
    owner = np.zeros((h, w), dtype=np.int32)

    if spec.style == "quadrat":
        lengths = (20.0, 40.0)
        base = 30.0
        n_total = rng.poisson(600 * spec.density * (w * h) / (4000 * 3000))
        cluster_size = 12
    else:
        base = min(w, h) * rng.uniform(0.08, 0.18)
        lengths = (base * 0.7, base * 1.3)
        coverage = rng.uniform(0.05, 0.2)
        n_total = int(round(spec.density * coverage * w * h / (0.33 * base * base)))
        n_total = int(np.clip(n_total, 1 if spec.density > 0 else 0, 150))
        cluster_size = int(rng.integers(3, 10))
    dead_frac = rng.uniform(0.2, 0.5)
    n_clusters = max(1, int(round(n_total / cluster_size)))
    centers = np.column_stack(
        [rng.uniform(0.05 * w, 0.95 * w, n_clusters), rng.uniform(0.05 * h, 0.95 * h, n_clusters)]
    )
    spreads = base * rng.uniform(0.8, 2.0, n_clusters) * math.sqrt(cluster_size) * 0.6
    angles = rng.uniform(0, math.pi, n_clusters)
    aligned = rng.random(n_clusters) < 0.5

    objects: list[_Object] = []
    light = rng.uniform(0, 2 * math.pi)  # light direction (shadows fall opposite)
    shadow_dx, shadow_dy = -math.cos(light), -math.sin(light)
    for _k in range(int(n_total)):
        cls = DEAD if rng.random() < dead_frac else LIVE
        length = rng.uniform(*lengths)
        for _attempt in range(6):
            if rng.random() < 0.75:
                c = int(rng.integers(n_clusters))
                cx, cy = centers[c] + rng.normal(0, spreads[c], 2)
                ang = angles[c] + rng.normal(0, 0.35) if aligned[c] else rng.uniform(0, 2 * math.pi)
                if rng.random() < 0.5:
                    ang += math.pi
            else:
                cx, cy = rng.uniform(0, w), rng.uniform(0, h)
                ang = rng.uniform(0, 2 * math.pi)
            if not (0 <= cx < w and 0 <= cy < h):
                continue
            obj = _make_object(rng, cls, cx, cy, length, ang)
            ov = _overlap(obj, owner)
            if ov <= MAX_NEW_OVERLAP:
                break
        else:
            continue
        obj.oid = len(objects) + 1
        _draw_shadow(img, obj, base * 0.08 * shadow_dx, base * 0.08 * shadow_dy, rng)
        _paint_object(img, obj, rng, light)
        _stamp(owner, obj)
        objects.append(obj)

    _algae_strands(img, rng, base, n=int(rng.poisson(2 + 0.002 * n_total)) if rng.random() < 0.4 else 0)
    img = _photometric(img, rng, noise_scale=0.4 if spec.style == "quadrat" else 1.0)
    labels = _labels_from_owner(objects, owner)
    return img, labels


def _fractal(rng: np.random.Generator, w: int, h: int, octaves: int = 5, scale: float = 256.0) -> np.ndarray:
    """Smooth noise in [0, 1] (float32) made of upsampled random grids."""
    finest = max(2.0, scale / 2 ** (octaves - 1))
    f = max(1, int(finest / 4))  # work at reduced resolution, upsample once
    sw, sh = max(2, w // f), max(2, h // f)
    acc = np.zeros((sh, sw), np.float32)
    amp, tot = 1.0, 0.0
    s = scale / f
    for _ in range(octaves):
        gh, gw = max(2, int(sh / s) + 2), max(2, int(sw / s) + 2)
        grid = rng.random((gh, gw), dtype=np.float32)
        acc += amp * cv2.resize(grid, (sw, sh), interpolation=cv2.INTER_CUBIC)
        tot += amp
        amp *= 0.5
        s = max(2.0, s / 2.0)
    acc /= tot
    if (sw, sh) != (w, h):
        acc = cv2.resize(acc, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(acc, 0, 1)


def _grain(rng: np.random.Generator, w: int, h: int, sigma: float) -> np.ndarray:
    """Per-pixel Gaussian noise; frames above 1 Mpx tile a random 509x503 block (fast)."""
    if w * h <= _BIG:
        return rng.standard_normal((h, w), dtype=np.float32) * np.float32(sigma)
    block = rng.standard_normal((503, 509), dtype=np.float32) * np.float32(sigma)
    ry, rx = -(-h // 503), -(-w // 509)
    return np.tile(block, (ry, rx))[:h, :w]


def _background(rng: np.random.Generator, w: int, h: int, style: str) -> np.ndarray:
    kind = ["sand", "gravel", "rock", "algae"][int(rng.integers(4))]
    short = min(w, h)
    big = max(64.0, short / rng.uniform(2.0, 4.0)) if style == "survey" else 400.0
    f = _fractal(rng, w, h, octaves=5, scale=big)
    f = (f - f.mean()) * 2.0
    if kind == "sand":
        base = np.array([rng.uniform(110, 160), rng.uniform(150, 190), rng.uniform(175, 215)], np.float32)
        var, grain = 45.0, rng.uniform(6, 14)
    elif kind == "gravel":
        base = np.array([rng.uniform(95, 130), rng.uniform(110, 140), rng.uniform(120, 150)], np.float32)
        var, grain = 40.0, rng.uniform(6, 12)
    elif kind == "rock":
        g = rng.uniform(90, 140)
        base = np.array([g + rng.uniform(-5, 10), g, g - rng.uniform(0, 10)], np.float32)
        var, grain = 60.0, rng.uniform(4, 10)
    else:  # algae
        base = np.array([rng.uniform(40, 70), rng.uniform(85, 120), rng.uniform(70, 105)], np.float32)
        var, grain = 40.0, rng.uniform(4, 10)
    if (
        style == "quadrat"
    ):  # large photos: finer-scale, gentler grain (keeps the JPEGs of 12 Mpx frames small)
        grain *= 0.35
    lum = f * np.float32(var) + _grain(rng, w, h, grain)
    tint = _fractal(rng, w, h, octaves=2, scale=big * 2) - 0.5
    tw = rng.uniform(-25, 25, 3)
    if w * h > _BIG:  # large frames: one saturating cv2 pass per channel (rounds instead of truncating)
        chans = [
            cv2.add(cv2.scaleAdd(tint, float(tw[ch]), lum), float(base[ch]), dtype=cv2.CV_8U)
            for ch in range(3)
        ]
    else:
        chans = [
            np.clip(lum + tint * np.float32(tw[ch]) + np.float32(base[ch]), 0, 255).astype(np.uint8)
            for ch in range(3)
        ]
    img = cv2.merge(chans)

    scale = 30.0 if style == "quadrat" else max(8.0, short * rng.uniform(0.02, 0.06))
    if kind == "gravel":
        _pebbles(img, rng, int(w * h / (scale * scale) * rng.uniform(0.6, 1.2)), scale * 0.6, (60, 200))
    elif kind == "sand":
        _pebbles(img, rng, int(w * h / (scale * scale) * rng.uniform(0.01, 0.05)), scale * 0.4, (80, 200))
    elif kind == "rock":
        _cracks(
            img, rng, int(rng.integers(3, 9) * (w * h) / (640 * 480)) if style == "survey" else 200, short
        )
        _pebbles(
            img, rng, int(w * h / (scale * scale) * 0.05), scale * 0.3, (150, 220)
        )  # barnacle-like spots
    else:
        _algae_strands(img, rng, scale * 2, n=int(w * h / (scale * scale) * 0.3), below=True)
    return img


def _pebbles(img: np.ndarray, rng: np.random.Generator, n: int, size: float, gray: tuple[int, int]) -> None:
    h, w = img.shape[:2]
    if n <= 0:
        return
    cx = rng.uniform(0, w, n)
    cy = rng.uniform(0, h, n)
    a = size * rng.uniform(0.4, 1.1, n)
    b = a * rng.uniform(0.6, 1.0, n)
    ang = rng.uniform(0, 180, n)
    g = rng.uniform(gray[0], gray[1], n)
    tints = rng.uniform(-18, 18, (n, 3))
    for i in range(n):
        col = tuple(float(np.clip(g[i] + tints[i, c], 0, 255)) for c in range(3))
        center = (int(cx[i]), int(cy[i]))
        axes = (max(1, int(a[i])), max(1, int(b[i])))
        cv2.ellipse(img, center, axes, float(ang[i]), 0, 360, col, -1, cv2.LINE_AA)
        if axes[0] > 3:  # dim highlight
            hl = tuple(min(255.0, c + 25) for c in col)
            cv2.ellipse(
                img,
                (center[0] - axes[0] // 4, center[1] - axes[1] // 4),
                (axes[0] // 3, axes[1] // 3),
                float(ang[i]),
                0,
                360,
                hl,
                -1,
                cv2.LINE_AA,
            )


def _cracks(img: np.ndarray, rng: np.random.Generator, n: int, short: int) -> None:
    h, w = img.shape[:2]
    for _ in range(n):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        ang = rng.uniform(0, 2 * math.pi)
        pts = [(x, y)]
        for _ in range(int(rng.integers(4, 12))):
            ang += rng.normal(0, 0.5)
            step = short * rng.uniform(0.02, 0.08)
            x, y = x + step * math.cos(ang), y + step * math.sin(ang)
            pts.append((x, y))
        col = tuple(float(v) for v in rng.uniform(30, 60, 3))
        cv2.polylines(img, [np.int32(pts)], False, col, int(rng.integers(1, 3)), cv2.LINE_AA)


def _algae_strands(
    img: np.ndarray, rng: np.random.Generator, length: float, n: int, below: bool = False
) -> None:
    h, w = img.shape[:2]
    if n <= 0:
        return
    start = np.column_stack([rng.uniform(0, w, n), rng.uniform(0, h, n)])
    turns = np.cumsum(rng.normal(0, 0.4, (n, 8)), axis=1) + rng.uniform(0, 2 * math.pi, (n, 1))
    steps = length * rng.uniform(0.1, 0.3, (n, 8))
    dx = np.cumsum(steps * np.cos(turns), axis=1)
    dy = np.cumsum(steps * np.sin(turns), axis=1)
    pts = np.concatenate([start[:, None, :], start[:, None, :] + np.stack([dx, dy], axis=2)], axis=1)
    green = rng.random(n) < 0.7
    cols = np.where(
        green[:, None],
        np.column_stack([rng.uniform(20, 60, n), rng.uniform(90, 150, n), rng.uniform(50, 100, n)]),
        np.column_stack([rng.uniform(30, 60, n), rng.uniform(70, 100, n), rng.uniform(100, 140, n)]),
    )
    thick = rng.integers(1, 3 if not below else 5, n)
    ipts = pts.astype(np.int32)
    for i in range(n):
        cv2.polylines(
            img,
            [ipts[i]],
            False,
            (float(cols[i, 0]), float(cols[i, 1]), float(cols[i, 2])),
            int(thick[i]),
            cv2.LINE_AA,
        )


# ---- shells --------------------------------------------------------------------------------


def _outline(length: float, width: float, bend: float, n: int = 40) -> np.ndarray:
    """Mussel outline in object coordinates: x along the shell (umbo at -L/2), y across."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    taper = 0.45 + 0.55 * ((1 + c) / 2) ** 0.7
    x = 0.5 * length * c
    y = 0.5 * width * s * taper
    y += bend * width * ((c + 1) / 2) ** 2 * 0.5  # curved ventral/dorsal margins
    return np.column_stack([x, y])


def _transform(pts: np.ndarray, ang: float, cx: float, cy: float) -> np.ndarray:
    ca, sa = math.cos(ang), math.sin(ang)
    rot = np.array([[ca, -sa], [sa, ca]])
    return pts @ rot.T + np.array([cx, cy])


def _rotate_about(pts: np.ndarray, pivot: np.ndarray, ang: float) -> np.ndarray:
    ca, sa = math.cos(ang), math.sin(ang)
    rot = np.array([[ca, -sa], [sa, ca]])
    return (pts - pivot) @ rot.T + pivot


def _make_object(
    rng: np.random.Generator, cls: int, cx: float, cy: float, length: float, ang: float
) -> _Object:
    """Build an object's geometry (polygons in image coordinates) and its hard mask."""
    width = length * rng.uniform(0.38, 0.52)
    bend = rng.uniform(-0.25, 0.25)
    base = _outline(length, width, bend)
    parts: list[tuple[str, np.ndarray]] = []  # (kind, polygon in image coords)
    extra: dict = {"length": length, "width": width, "angle": ang}
    if cls == LIVE:
        poly = _transform(base, ang, cx, cy)
        parts.append(("live", poly))
        extra["umbo"] = _transform(np.array([[-0.5 * length, 0.0]]), ang, cx, cy)[0]
    else:
        kind = ["gaping", "gaping", "valve", "fragment"][int(rng.integers(4))]
        extra["kind"] = kind
        umbo_local = np.array([-0.5 * length, 0.0])
        if kind == "gaping":
            gap = rng.uniform(0.35, 0.9)
            half = width * 0.5
            valve = _outline(length, half * 2 * 0.95, bend * 0.5)
            v1 = _rotate_about(valve, umbo_local, gap / 2)
            v2 = _rotate_about(valve, umbo_local, -gap / 2)
            # shift so the pair is centred near (cx, cy)
            shift = -0.5 * (v1.mean(0) + v2.mean(0))
            parts.append(("valve", _transform(v1 + shift, ang, cx, cy)))
            parts.append(("valve", _transform(v2 + shift, ang, cx, cy)))
        elif kind == "valve":
            parts.append(("valve", _transform(base, ang, cx, cy)))
        else:
            # broken valve: keep the part on one side of a jagged cut across the shell
            cut = rng.uniform(-0.2, 0.3) * length
            keep_umbo = rng.random() < 0.5
            ys = np.linspace(-width, width, 7)
            xs = cut + rng.uniform(-0.12, 0.12, 7) * length
            far = 2 * length if not keep_umbo else -2 * length
            knife = np.vstack([np.column_stack([xs, ys]), [[far, width], [far, -width]]])
            extra["knife"] = _transform(knife, ang, cx, cy)
            parts.append(("valve", _transform(base, ang, cx, cy)))
    allpts = np.vstack([p for _, p in parts] + ([extra["knife"]] if "knife" in extra else []))
    x0 = int(math.floor(allpts[:, 0].min())) - 3
    y0 = int(math.floor(allpts[:, 1].min())) - 3
    x1 = int(math.ceil(allpts[:, 0].max())) + 4
    y1 = int(math.ceil(allpts[:, 1].max())) + 4
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for _, p in parts:
        cv2.fillPoly(mask, [_fixed(p, x0, y0)], 1, cv2.LINE_8, shift=4)
    if "knife" in extra:
        cv2.fillPoly(mask, [_fixed(extra["knife"], x0, y0)], 0, cv2.LINE_8, shift=4)
        # the knife polygon is convex-ish only roughly; keep the largest piece
        nlab, lab, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if nlab > 2:
            keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            mask = (lab == keep).astype(np.uint8)
    obj = _Object(cls=cls, mask=mask.astype(bool), x0=x0, y0=y0, area=int(mask.sum()), extra=extra)
    obj.extra["parts"] = parts
    return obj


def _fixed(poly: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Polygon to cv2 fixed-point (4 fractional bits) patch coordinates."""
    return np.round((poly - np.array([x0, y0])) * 16).astype(np.int32)


def _clip(obj: _Object, h: int, w: int) -> tuple[slice, slice, slice, slice] | None:
    mh, mw = obj.mask.shape
    ix0, iy0 = max(0, obj.x0), max(0, obj.y0)
    ix1, iy1 = min(w, obj.x0 + mw), min(h, obj.y0 + mh)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    return (
        slice(iy0, iy1),
        slice(ix0, ix1),
        slice(iy0 - obj.y0, iy1 - obj.y0),
        slice(ix0 - obj.x0, ix1 - obj.x0),
    )


def _overlap(obj: _Object, owner: np.ndarray) -> float:
    sl = _clip(obj, *owner.shape)
    if sl is None or obj.area == 0:
        return 1.0
    iy, ix, my, mx = sl
    m = obj.mask[my, mx]
    return float(np.count_nonzero(owner[iy, ix][m])) / obj.area


def _stamp(owner: np.ndarray, obj: _Object) -> None:
    sl = _clip(obj, *owner.shape)
    if sl is None:
        return
    iy, ix, my, mx = sl
    region = owner[iy, ix]
    region[obj.mask[my, mx]] = obj.oid


def _draw_shadow(img: np.ndarray, obj: _Object, dx: float, dy: float, rng: np.random.Generator) -> None:
    h, w = img.shape[:2]
    pad = int(abs(dx) + abs(dy)) + 6
    mh, mw = obj.mask.shape
    m = np.zeros((mh + 2 * pad, mw + 2 * pad), np.float32)
    ox, oy = pad + int(round(dx)), pad + int(round(dy))
    m[oy : oy + mh, ox : ox + mw] = obj.mask
    k = max(3, int(pad) | 1)
    m = cv2.GaussianBlur(m, (k, k), 0) * rng.uniform(0.3, 0.55)
    tmp = _Object(obj.cls, m > -1, obj.x0 - pad, obj.y0 - pad, 0)
    sl = _clip(tmp, h, w)
    if sl is None:
        return
    iy, ix, my, mx = sl
    region = img[iy, ix].astype(np.float32)
    region *= (1.0 - m[my, mx])[..., None]
    img[iy, ix] = region.astype(np.uint8)


def _paint_object(img: np.ndarray, obj: _Object, rng: np.random.Generator, light: float) -> None:
    """Paint the object's colours into ``img`` (soft edges; labels use the hard mask)."""
    h, w = img.shape[:2]
    mh, mw = obj.mask.shape
    patch = np.zeros((mh, mw, 3), np.float32)
    alpha = np.zeros((mh, mw), np.float32)
    yy, xx = np.mgrid[0:mh, 0:mw].astype(np.float32)
    xx += obj.x0
    yy += obj.y0
    e = obj.extra
    length, width = e["length"], e["width"]
    lx, ly = math.cos(light), math.sin(light)
    for kind, poly in e["parts"]:
        pm = np.zeros((mh, mw), np.uint8)
        cv2.fillPoly(pm, [_fixed(poly, obj.x0, obj.y0)], 1, cv2.LINE_AA, shift=4)
        pm_f = pm.astype(np.float32)
        # local coordinates of the part: u along, v across (normalised)
        c = poly.mean(0)
        d = poly - c
        _, _, vt = np.linalg.svd(d - d.mean(0), full_matrices=False)
        ax = vt[0]
        du = (xx - c[0]) * ax[0] + (yy - c[1]) * ax[1]
        dv = -(xx - c[0]) * ax[1] + (yy - c[1]) * ax[0]
        u = du / (0.5 * length)
        v = dv / (0.5 * max(width, 1.0))
        if kind == "live":
            hue = rng.random()
            if hue < 0.8:  # blue-black
                col = np.array([rng.uniform(30, 55), rng.uniform(20, 34), rng.uniform(14, 28)], np.float32)
            else:  # brownish-black periostracum
                col = np.array([rng.uniform(16, 28), rng.uniform(24, 36), rng.uniform(30, 45)], np.float32)
            shade = 0.7 + 0.5 * np.clip(1 - np.abs(v), 0, 1)
            # sheen: a highlight band along the ridge, offset towards the light
            side = lx * -ax[1] + ly * ax[0]
            sheen = np.exp(-((v - 0.3 * side) ** 2) / 0.03 - (u - 0.1) ** 2 / 0.2) * rng.uniform(25, 60)
            # growth lines: concentric arcs around the umbo
            um = e.get("umbo", c)
            r = np.hypot(xx - um[0], yy - um[1]) / length
            freq = rng.uniform(14, 28)
            wobble = 0.04 * np.sin(u * rng.uniform(4, 9) + v * 3)
            lines = (np.sin((r + wobble) * freq * math.pi) > 0.8).astype(np.float32) * rng.uniform(5, 12)
            colr = col[None, None, :] * shade[..., None] + (sheen + lines)[..., None] * np.array(
                [1.0, 0.95, 0.9]
            )
            # dark rim
            rim = cv2.erode(pm, np.ones((3, 3), np.uint8)) if min(mh, mw) > 8 else pm
            edge = (pm.astype(np.int16) - rim) > 0
            colr[edge] *= 0.55
        else:
            # valve seen from inside: pale iridescent nacre with a dark exterior rim and a blue-purple margin
            nacre = np.array(
                [rng.uniform(200, 235), rng.uniform(195, 225), rng.uniform(185, 220)], np.float32
            )
            irid = np.sin(u * rng.uniform(3, 7) + v * 4 + rng.uniform(0, 6))[..., None] * np.array(
                [8, 2, -4], np.float32
            )
            depth = (0.8 + 0.25 * (1 - np.clip(u * u + v * v, 0, 1)))[..., None]
            colr = nacre[None, None, :] * depth + irid
            k1 = max(1, int(round(width * 0.07)))
            inner = cv2.erode(pm, np.ones((2 * k1 + 1, 2 * k1 + 1), np.uint8))
            k2 = max(1, int(round(width * 0.05)))
            inner2 = cv2.erode(inner, np.ones((2 * k2 + 1, 2 * k2 + 1), np.uint8))
            margin = (inner > 0) & (inner2 == 0)
            rim = (pm > 0) & (inner == 0)
            colr[margin] = np.array(
                [rng.uniform(120, 170), rng.uniform(90, 120), rng.uniform(100, 140)], np.float32
            )
            colr[rim] = np.array([rng.uniform(35, 60), rng.uniform(25, 40), rng.uniform(18, 30)], np.float32)
            # muscle scars / dirt
            colr *= (1 - 0.15 * np.exp(-((u + 0.3) ** 2 + v**2) / 0.05))[..., None]
        a = pm_f
        patch = patch * (1 - a[..., None]) + colr * a[..., None]
        alpha = np.maximum(alpha, a)
    # respect the fragment cut / hard mask (soft 1 px edge)
    hard = obj.mask.astype(np.float32)
    soft = cv2.GaussianBlur(hard, (3, 3), 0)
    alpha = np.minimum(alpha, np.maximum(soft, hard * 0.9))
    tmp = _Object(obj.cls, obj.mask, obj.x0, obj.y0, 0)
    sl = _clip(tmp, h, w)
    if sl is None:
        return
    iy, ix, my, mx = sl
    region = img[iy, ix].astype(np.float32)
    al = alpha[my, mx][..., None]
    region = region * (1 - al) + patch[my, mx] * al
    img[iy, ix] = np.clip(region, 0, 255).astype(np.uint8)


def _photometric(img: np.ndarray, rng: np.random.Generator, noise_scale: float = 1.0) -> np.ndarray:
    h, w = img.shape[:2]
    # lighting gradient + vignette, computed small and upsampled (fast for large frames)
    sh, sw = 48, 64
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    xx = xx / (sw - 1) - 0.5
    yy = yy / (sh - 1) - 0.5
    g = rng.uniform(-0.5, 0.5, 2)
    gain = 1.0 + g[0] * xx + g[1] * yy
    gain *= 1.0 - rng.uniform(0.0, 0.6) * (xx * xx + yy * yy)
    gain *= rng.uniform(0.8, 1.15)
    cast = (1.0 + rng.uniform(-0.08, 0.08, 3)).astype(np.float32)
    gain3 = cv2.resize(
        (gain[..., None] * cast[None, None, :]).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR
    )
    out = cv2.multiply(img, gain3, dtype=cv2.CV_32F)
    # blur: none, gaussian, or slight motion blur
    r = rng.random()
    if r < 0.35:
        s = rng.uniform(0.5, 1.3)
        out = cv2.GaussianBlur(out, (0, 0), s)
    elif r < 0.45:
        k = int(rng.integers(3, 6))
        kern = np.zeros((k, k), np.float32)
        kern[k // 2, :] = 1.0 / k
        m = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kern = cv2.warpAffine(kern, m, (k, k))
        kern /= max(kern.sum(), 1e-6)
        out = cv2.filter2D(out, -1, kern)
    noise = rng.uniform(1.0, 5.0) * noise_scale
    g = _grain(rng, w, h, noise)
    if w * h > _BIG:  # large frames: add and saturate to uint8 in one cv2 pass
        return cv2.add(out, cv2.merge([g, g, g]), dtype=cv2.CV_8U)
    out = cv2.add(out, cv2.merge([g, g, g]))
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


# ---- labels --------------------------------------------------------------------------------


def _labels_from_owner(objects: list[_Object], owner: np.ndarray) -> list[dict]:
    h, w = owner.shape
    labels: list[dict] = []
    for obj in objects:
        sl = _clip(obj, h, w)
        if sl is None or obj.area == 0:
            continue
        iy, ix, _, _ = sl
        vis = owner[iy, ix] == obj.oid
        nvis = int(np.count_nonzero(vis))
        if nvis < MIN_VISIBLE * obj.area:
            continue
        ys, xs = np.nonzero(vis)
        ox, oy = ix.start, iy.start
        x0, x1 = xs.min() + ox, xs.max() + ox + 1
        y0, y1 = ys.min() + oy, ys.max() + oy + 1
        contours, _ = cv2.findContours(vis.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cnt = max(contours, key=cv2.contourArea)
        eps = 0.004 * cv2.arcLength(cnt, True)
        approx = cv2.approxPolyDP(cnt, eps, True).reshape(-1, 2).astype(np.float64)
        if len(approx) < 3:
            approx = cnt.reshape(-1, 2).astype(np.float64)
        poly = approx + np.array([ox + 0.5, oy + 0.5])  # pixel centres
        pts = np.column_stack([xs + ox + 0.5, ys + oy + 0.5]).astype(np.float32)
        rect = cv2.minAreaRect(pts)
        (rcx, rcy), (rw, rh), rang = rect
        corners = cv2.boxPoints(((rcx, rcy), (rw + 1.0, rh + 1.0), rang))  # grow by half a pixel each side
        labels.append(
            {
                "cls": obj.cls,
                "box": (float(x0), float(y0), float(x1), float(y1)),
                "obb": corners.astype(np.float64),
                "poly": poly,
                "visible": nvis / obj.area,
            }
        )
    return labels


def _write_labels(out: Path, stem: str, labels: list[dict], w: int, h: int) -> None:
    det, obb, seg = [], [], []
    scale = np.array([w, h], np.float64)
    for lab in labels:
        x0, y0, x1, y1 = lab["box"]
        det.append(
            f"{lab['cls']} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
        )
        c = np.clip(lab["obb"] / scale, 0.0, 1.0)
        obb.append(f"{lab['cls']} " + " ".join(f"{v:.6f}" for v in c.reshape(-1)))
        p = np.clip(lab["poly"] / scale, 0.0, 1.0)
        seg.append(f"{lab['cls']} " + " ".join(f"{v:.6f}" for v in p.reshape(-1)))
    for sub, lines in (("labels", det), ("obb/labels", obb), ("seg/labels", seg)):
        (out / sub / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
