"""Frames of a synthetic survey: layout of a scene, rendering, and the dataset written to disk (see
:mod:`musseltools.synth`)."""


from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .shells import (
    DEAD,
    LIVE,
    Shell,
    draw_shadow,
    labels_from_owner,
    make_object,
    overlap,
    paint_object,
    stamp,
)
from .textures import algae_strands, background, photometric

__all__ = [
    "CLASS_NAMES",
    "FrameSpec",
    "generate",
    "generate_frames",
    "parse_size",
    "render_frame",
]

logger = logging.getLogger(__name__)

CLASS_NAMES: dict[int, str] = {0: "live", 1: "dead"}
#: A new shell may cover at most this fraction of its own area over earlier shells.
MAX_NEW_OVERLAP = 0.33
#: Columns of ``lengths.csv``: one row per labelled object, ``label`` its line in ``labels/NAME.txt`` (from 0),
#: ``length_px``/``width_px`` its true size as drawn (a fragment's is its whole valve's; a gaping pair's, one
#: valve's), ``visible`` the fraction of its pixels not hidden.
LENGTHS_COLUMNS = ("image", "label", "cls", "kind", "length_px", "width_px", "visible")

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
    live, dead : int or None
        Exact numbers of live and dead mussels to draw (a survey design's counts,
        :mod:`musseltools.synth.survey`); ``None`` draws them from ``density``. A shell that
        finds no place, or ends less than half visible, is not labelled: ``counts.csv`` says what was.
    """

    name: str
    width: int
    height: int
    style: str = "survey"
    density: float = 1.0
    jpeg_quality: int | None = None
    live: int | None = None
    dead: int | None = None


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
    rows, sizes = [], []
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
        sizes.extend({"image": fname, "label": k, "cls": lab["cls"], "kind": lab["kind"], "length_px": lab["length"],
                      "width_px": lab["width"], "visible": round(lab["visible"], 4)} for k, lab in enumerate(labels))
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
    pd.DataFrame(sizes, columns=list(LENGTHS_COLUMNS)).to_csv(out / "lengths.csv", index=False,
                                                             lineterminator="\n", float_format="%.3f")
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
        One dict per labelled object: ``cls``, ``box`` (x0, y0, x1, y1 in pixels), ``obb`` (4x2 pixel corners),
        ``poly`` (Nx2 pixel polygon), ``visible`` (the fraction not hidden), ``length`` and ``width`` (the
        shell's true size in pixels, as drawn), ``kind`` (``live``, ``gaping``, ``valve`` or ``fragment``).
    """
    w, h = spec.width, spec.height
    img = background(rng, w, h, spec.style)
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
    kinds = _design_kinds(spec, rng)
    n_total = len(kinds) if kinds is not None else n_total
    n_clusters = max(1, int(round(n_total / cluster_size)))
    centers = np.column_stack(
        [rng.uniform(0.05 * w, 0.95 * w, n_clusters), rng.uniform(0.05 * h, 0.95 * h, n_clusters)]
    )
    spreads = base * rng.uniform(0.8, 2.0, n_clusters) * math.sqrt(cluster_size) * 0.6
    angles = rng.uniform(0, math.pi, n_clusters)
    aligned = rng.random(n_clusters) < 0.5

    objects: list[Shell] = []
    light = rng.uniform(0, 2 * math.pi)  # light direction (shadows fall opposite)
    shadow_dx, shadow_dy = -math.cos(light), -math.sin(light)
    for _k in range(int(n_total)):
        cls = int(kinds[_k]) if kinds is not None else DEAD if rng.random() < dead_frac else LIVE
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
            obj = make_object(rng, cls, cx, cy, length, ang)
            ov = overlap(obj, owner)
            if ov <= MAX_NEW_OVERLAP:
                break
        else:
            continue
        obj.oid = len(objects) + 1
        draw_shadow(img, obj, base * 0.08 * shadow_dx, base * 0.08 * shadow_dy, rng)
        paint_object(img, obj, rng, light)
        stamp(owner, obj)
        objects.append(obj)

    algae_strands(img, rng, base, n=int(rng.poisson(2 + 0.002 * n_total)) if rng.random() < 0.4 else 0)
    img = photometric(img, rng, noise_scale=0.4 if spec.style == "quadrat" else 1.0)
    labels = labels_from_owner(objects, owner)
    return img, labels


def _design_kinds(spec: FrameSpec, rng: np.random.Generator) -> np.ndarray | None:
    """The classes of a design's exact counts (``spec.live``, ``spec.dead``) in a random order, else None."""
    if spec.live is None and spec.dead is None:
        return None
    return rng.permutation(np.repeat([LIVE, DEAD], [int(spec.live or 0), int(spec.dead or 0)]))


# ---- shells --------------------------------------------------------------------------------


# ---- labels --------------------------------------------------------------------------------


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
