"""Text labels on an image that stay readable: a minimum height in pixels and no two labels overlapping.

:func:`place_labels` puts one label per box next to it (above, below, then inside its top edge), in the
order given, and leaves out a label that would overlap one already placed or leave the image (the caller
says how many it left out, e.g. "zoom in to read them"). :func:`draw_labels` draws them, each on a
plate of its colour, so it reads on any background. Draw the image at the size it is shown: a label drawn 12 px tall on
a picture the browser shrinks to half is 6 px tall on screen.

>>> import numpy as np
>>> placed, hidden = place_labels([(10, 40, 60, 80)], ["0.91"], (100, 120), min_height=10)
>>> len(placed), hidden, placed[0].text_height >= 10
(1, 0, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["Label", "draw_labels", "font_scale_for", "place_labels"]

FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
PAD = 2  # pixels of plate around the text


@dataclass(frozen=True)
class Label:
    """A placed label: its plate ``x0, y0, x1, y1`` (pixels, end exclusive), text, colour and text height."""

    x0: int
    y0: int
    x1: int
    y1: int
    text: str
    colour: tuple[int, int, int]
    text_height: int
    scale: float

    def overlaps(self, other: Label) -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1


@lru_cache(maxsize=32)
def font_scale_for(min_height: int) -> float:
    """The smallest font scale (Hershey simplex) whose digits are at least ``min_height`` pixels tall."""
    import cv2

    (_, h1), _ = cv2.getTextSize("0.00", FONT, 1.0, 1)
    scale = min_height / h1
    while cv2.getTextSize("0.00", FONT, scale, 1)[0][1] < min_height:
        scale += 0.01
    return scale


def place_labels(boxes: Sequence[tuple[float, float, float, float]], texts: Sequence[str],
                 shape: tuple[int, ...], *, min_height: int = 12,
                 colours: Sequence[tuple[int, int, int]] | None = None,
                 avoid: Sequence[tuple[int, int, int, int]] = ()) -> tuple[list[Label], int]:
    """Place ``texts[i]`` next to ``boxes[i]`` (x1, y1, x2, y2 in pixels of an image of ``shape``).

    Tries above the box's top-left corner, below its bottom-left corner, then inside its top edge; a label
    that fits nowhere without overlapping a placed one, a rectangle of ``avoid`` (x0, y0, x1, y1: a
    legend), or leaving the image, is left out. Returns the
    placed labels and how many were left out. Give the boxes in order of importance (e.g. highest
    confidence first): earlier ones win.
    """
    import cv2

    h, w = shape[:2]
    scale = font_scale_for(min_height)
    placed: list[Label] = [Label(*r, "", (0, 0, 0), 0, scale) for r in avoid]
    n_avoid = len(placed)
    hidden = 0
    for i, ((bx1, by1, _bx2, by2), text) in enumerate(zip(boxes, texts)):
        (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
        lw, lh = tw + 2 * PAD, th + base + 2 * PAD
        x = int(min(max(bx1, 0), max(w - lw, 0)))
        colour = colours[i] if colours is not None else (255, 255, 255)
        label = None
        for y in (int(by1) - lh, int(by2) + 1, int(by1) + 1):
            candidate = Label(x, y, x + lw, y + lh, text, colour, th, scale)
            if y >= 0 and y + lh <= h and x + lw <= w and not any(candidate.overlaps(p) for p in placed):
                label = candidate
                break
        if label is None:
            hidden += 1
        else:
            placed.append(label)
    return placed[n_avoid:], hidden


def _luminance(rgb: tuple[int, int, int]) -> float:
    """Relative luminance (WCAG) of an sRGB colour; black text reads better above about 0.18."""
    c = np.asarray(rgb, np.float64) / 255
    lin = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ [0.2126, 0.7152, 0.0722])


def draw_labels(out: np.ndarray, labels: Sequence[Label]) -> np.ndarray:
    """Draw ``labels`` on ``out`` (RGB, in place): each on a plate of its colour, in black or white,
    whichever contrasts more with it. Returns ``out``."""
    import cv2

    for lab in labels:
        cv2.rectangle(out, (lab.x0, lab.y0), (lab.x1 - 1, lab.y1 - 1), lab.colour, -1)
        base = cv2.getTextSize(lab.text, FONT, lab.scale, 1)[1]
        ink = (0, 0, 0) if _luminance(lab.colour) > 0.18 else (255, 255, 255)
        cv2.putText(out, lab.text, (lab.x0 + PAD, lab.y1 - PAD - base), FONT, lab.scale, ink, 1, cv2.LINE_AA)
    return out
