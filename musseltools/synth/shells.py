"""Shells of synthetic survey frames: their geometry, placement, painting and labels (live: closed dark
shells; dead: gaping pairs, single valves and fragments). Part of :mod:`musseltools.synth`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["Shell", "make_object", "overlap", "stamp", "draw_shadow", "paint_object", "labels_from_owner",
           "LIVE", "DEAD", "MIN_VISIBLE"]

LIVE, DEAD = 0, 1
#: Fraction of an object's pixels that must stay visible for it to be labelled.
MIN_VISIBLE = 0.5


@dataclass
class Shell:
    cls: int
    mask: np.ndarray  # bool, patch-sized
    x0: int  # patch origin in the image (may be negative)
    y0: int
    area: int  # full (unclipped) pixel area
    oid: int = 0
    extra: dict = field(default_factory=dict)


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


def make_object(
    rng: np.random.Generator, cls: int, cx: float, cy: float, length: float, ang: float
) -> Shell:
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
    obj = Shell(cls=cls, mask=mask.astype(bool), x0=x0, y0=y0, area=int(mask.sum()), extra=extra)
    obj.extra["parts"] = parts
    return obj


def _fixed(poly: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Polygon to cv2 fixed-point (4 fractional bits) patch coordinates."""
    return np.round((poly - np.array([x0, y0])) * 16).astype(np.int32)


def _clip(obj: Shell, h: int, w: int) -> tuple[slice, slice, slice, slice] | None:
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


def overlap(obj: Shell, owner: np.ndarray) -> float:
    sl = _clip(obj, *owner.shape)
    if sl is None or obj.area == 0:
        return 1.0
    iy, ix, my, mx = sl
    m = obj.mask[my, mx]
    return float(np.count_nonzero(owner[iy, ix][m])) / obj.area


def stamp(owner: np.ndarray, obj: Shell) -> None:
    sl = _clip(obj, *owner.shape)
    if sl is None:
        return
    iy, ix, my, mx = sl
    region = owner[iy, ix]
    region[obj.mask[my, mx]] = obj.oid


def draw_shadow(img: np.ndarray, obj: Shell, dx: float, dy: float, rng: np.random.Generator) -> None:
    h, w = img.shape[:2]
    pad = int(abs(dx) + abs(dy)) + 6
    mh, mw = obj.mask.shape
    m = np.zeros((mh + 2 * pad, mw + 2 * pad), np.float32)
    ox, oy = pad + int(round(dx)), pad + int(round(dy))
    m[oy : oy + mh, ox : ox + mw] = obj.mask
    k = max(3, int(pad) | 1)
    m = cv2.GaussianBlur(m, (k, k), 0) * rng.uniform(0.3, 0.55)
    tmp = Shell(obj.cls, m > -1, obj.x0 - pad, obj.y0 - pad, 0)
    sl = _clip(tmp, h, w)
    if sl is None:
        return
    iy, ix, my, mx = sl
    region = img[iy, ix].astype(np.float32)
    region *= (1.0 - m[my, mx])[..., None]
    img[iy, ix] = region.astype(np.uint8)


def paint_object(img: np.ndarray, obj: Shell, rng: np.random.Generator, light: float) -> None:
    """Paint the object's colours into ``img`` (soft edges; labels use the hard mask).

    Length: one recipe per kind of shell (live, gaping, single valve, fragment) sharing the same patch
    coordinates and draws from ``rng`` in a fixed order; splitting it would change the order of draws,
    and so every synthetic image, including the committed demo data.
    """
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
    tmp = Shell(obj.cls, obj.mask, obj.x0, obj.y0, 0)
    sl = _clip(tmp, h, w)
    if sl is None:
        return
    iy, ix, my, mx = sl
    region = img[iy, ix].astype(np.float32)
    al = alpha[my, mx][..., None]
    region = region * (1 - al) + patch[my, mx] * al
    img[iy, ix] = np.clip(region, 0, 255).astype(np.uint8)


def labels_from_owner(objects: list[Shell], owner: np.ndarray) -> list[dict]:
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
                # the shell's true size as drawn (the outline's extent along and across its axis, in px),
                # whatever of it stays visible: what a length measured on the image should find
                "length": float(obj.extra["length"]),
                "width": float(obj.extra["width"]),
                "kind": str(obj.extra.get("kind", "live")),
            }
        )
    return labels
