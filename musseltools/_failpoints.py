"""Failpoints for crash-safety tests: kill the process at a named moment.

Enabled only by the environment variable ``MUSSELTOOLS_FAILPOINTS`` (tests set it; users never
need to). Its value is a comma-separated list of ``name`` or ``name@N`` (fire on the N-th time the
point is reached, counting from 1). When a failpoint fires, the process kills itself with SIGKILL,
exactly as an out-of-memory killer or a power cut would stop it.

Named points: ``part-written`` (a part's temporary file is written but not renamed),
``part-committed`` (a part is renamed but run metadata is not updated), ``meta-written`` (run
metadata's temporary file is written but not renamed), ``cube-writing`` (in the middle of a Zarr
cube update), ``detections-committed`` (detections part renamed, images part not yet written),
``correction-written`` (a corrections file's temporary is written but not renamed), ``image-read`` (a
worker process has read an image of its unit; counted per process), ``compaction-merged`` (a
compaction's merged parts are committed, no old part removed yet), ``compaction-removed`` (a
compaction removed an old part's images part, not yet its detections part; counted per old part).

Points that change behaviour instead of killing (:func:`armed`): ``onnx-perturb`` (the ONNX Runtime graph's
boxes come out 2 px off, so its check against torch fails), ``onnx-export-fails`` (exporting a graph raises).

``MUSSELTOOLS_FAILPOINTS_LOG``, a file path: before a failpoint kills its process, it appends one line,
``name pid detail`` (the detail: the image path for ``image-read``), so a test can count the kills and
check that each of those processes is gone, without reading any message of the code under test.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def failpoint(name: str, detail: str = "") -> None:
    """Kill this process with SIGKILL if ``name`` is enabled in ``MUSSELTOOLS_FAILPOINTS`` (logged first
    when ``MUSSELTOOLS_FAILPOINTS_LOG`` names a file)."""
    spec = os.environ.get("MUSSELTOOLS_FAILPOINTS")
    if not spec:
        return
    _counts[name] = _counts.get(name, 0) + 1
    for item in spec.split(","):
        point, _, nth = item.strip().partition("@")
        if point == name and (not nth or int(nth) == _counts[name]):
            log = os.environ.get("MUSSELTOOLS_FAILPOINTS_LOG")
            if log:  # one append of one line: whole, whatever else writes there at the same moment
                fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, f"{name} {os.getpid()} {detail}\n".encode())
                finally:
                    os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)


def armed(name: str) -> bool:
    """Whether the behaviour-changing point ``name`` is listed in ``MUSSELTOOLS_FAILPOINTS`` (it never kills)."""
    spec = os.environ.get("MUSSELTOOLS_FAILPOINTS") or ""
    return name in (item.strip().partition("@")[0] for item in spec.split(","))
