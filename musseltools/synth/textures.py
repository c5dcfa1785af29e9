"""Textures of synthetic survey frames: backgrounds (sand, gravel, rock, algae), distractors and the
photometric finish (lighting, colour cast, blur, noise). Part of :mod:`musseltools.synth`."""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["background", "algae_strands", "photometric", "BIG"]

#: Pixels; larger frames take faster (slightly different) paths.
BIG = 1_300_000


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
    if w * h <= BIG:
        return rng.standard_normal((h, w), dtype=np.float32) * np.float32(sigma)
    block = rng.standard_normal((503, 509), dtype=np.float32) * np.float32(sigma)
    ry, rx = -(-h // 503), -(-w // 509)
    return np.tile(block, (ry, rx))[:h, :w]


def background(rng: np.random.Generator, w: int, h: int, style: str) -> np.ndarray:
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
    if w * h > BIG:  # large frames: one saturating cv2 pass per channel (rounds instead of truncating)
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
        algae_strands(img, rng, scale * 2, n=int(w * h / (scale * scale) * 0.3), below=True)
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


def algae_strands(
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


def photometric(img: np.ndarray, rng: np.random.Generator, noise_scale: float = 1.0) -> np.ndarray:
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
    if w * h > BIG:  # large frames: add and saturate to uint8 in one cv2 pass
        return cv2.add(out, cv2.merge([g, g, g]), dtype=cv2.CV_8U)
    out = cv2.add(out, cv2.merge([g, g, g]))
    return np.clip(out, 0, 255, out=out).astype(np.uint8)
