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
      lengths.csv            true sizes: ``image,label,cls,kind,length_px,width_px,visible``, one row
                             per line of labels/NAME.txt (``label``: the line, from 0), the shell's
                             length and width in pixels as drawn, whatever of it is visible
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

from .frames import CLASS_NAMES, FrameSpec, generate, generate_frames, parse_size, render_frame
from .shells import MIN_VISIBLE

__all__ = [
    "CLASS_NAMES",
    "MIN_VISIBLE",
    "FrameSpec",
    "generate",
    "generate_frames",
    "parse_size",
    "render_frame",
]
