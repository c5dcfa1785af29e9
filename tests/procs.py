"""Helpers for tests that kill musseltools processes: a pre-imported process server and table checks.

Starting ``python -m musseltools`` costs several seconds of imports (torch, Ultralytics) on this
machine, which would make dozens of kills far too slow. :class:`Zygote` starts one Python process
that imports musseltools, torch and Ultralytics once and then, for each request, ``fork()``s a child
that runs the real command line (``musseltools.cli.main(argv)``) with its own environment and its
own stdout/stderr files. The child is an ordinary process: the test kills it with ``SIGKILL`` by
pid, exactly as the kernel's OOM killer or a power cut would. The zygote never runs a model itself,
so no torch thread pool exists at fork time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_ZYGOTE = r"""
import json, os, sys
os.environ.setdefault("YOLO_OFFLINE", "1")
import musseltools, musseltools.cli, musseltools.runs.engine, musseltools.runs.run  # noqa: E401
import torch, torchvision, ultralytics, xarray, zarr  # noqa: E401,F401  (pre-import what every run needs)
import torchvision.ops  # noqa: F401  (Ultralytics imports it on the first prediction: torch._dynamo, seconds)
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "run":
        pid = os.fork()
        if pid == 0:
            try:
                os.chdir(req["cwd"])
                os.environ.update(req["env"])
                for k in req.get("unset", []):
                    os.environ.pop(k, None)
                fd = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                rc = musseltools.cli.main(req["argv"])
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
            except BaseException:
                import traceback
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(99)
        print(json.dumps({"pid": pid}), flush=True)
    elif req["op"] == "wait":
        _, status = os.waitpid(req["pid"], 0)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        rc = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        print(json.dumps({"signal": sig, "rc": rc}), flush=True)
"""


class Zygote:
    """A process that forks pre-imported musseltools command lines on request.

    Examples
    --------
    >>> z = Zygote()                                          # doctest: +SKIP
    >>> pid = z.start(["run", "imgs", "--model", "m.pt"], cwd=".")   # doctest: +SKIP
    >>> os.kill(pid, signal.SIGKILL); z.wait(pid)             # doctest: +SKIP
    {'signal': 9, 'rc': None}
    """

    def __init__(self) -> None:
        # one torch thread: on 2 shared cores, torch's spinning threads made each tiny inference 50x slower
        env = dict(os.environ, YOLO_OFFLINE="1", MUSSELTOOLS_TORCH_THREADS="1", MUSSELTOOLS_BATCH_SIZE="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"zygote did not start: {line!r}")
        self.n = 0

    def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, argv: list[str], *, cwd: str | os.PathLike, env: dict[str, str] | None = None,
              unset: tuple[str, ...] = ("MUSSELTOOLS_FAILPOINTS",)) -> tuple[int, Path]:
        """Fork a child running ``musseltools <argv>``; returns its pid and its output file."""
        self.n += 1
        out = Path(cwd) / f"zygote-out-{self.n}.txt"
        pid = self._ask({"op": "run", "argv": [str(a) for a in argv], "cwd": str(cwd), "env": env or {},
                         "unset": [k for k in unset if k not in (env or {})], "out": str(out)})["pid"]
        return pid, out

    def wait(self, pid: int) -> dict[str, Any]:
        """Reap the child: ``{"signal": 9 or None, "rc": exit code or None}``."""
        return self._ask({"op": "wait", "pid": pid})

    def run(self, argv: list[str], *, cwd: str | os.PathLike, env: dict[str, str] | None = None) -> dict[str, Any]:
        """Run a child to its end; returns the wait status and its output text."""
        pid, out = self.start(argv, cwd=cwd, env=env)
        status = self.wait(pid)
        status["output"] = out.read_text(errors="replace")
        return status

    def kill_after(self, argv: list[str], delay: float, *, cwd: str | os.PathLike,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
        """Start a child, SIGKILL it after ``delay`` seconds (unless it ended), reap it."""
        pid, out = self.start(argv, cwd=cwd, env=env)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)  # a zombie that already exited keeps its own exit status
        status = self.wait(pid)
        status["output"] = out.read_text(errors="replace")
        return status

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def descendants(pid: int) -> list[Any]:
    """The processes started by ``pid`` and by its children, recursively (``psutil.Process`` objects)."""
    import psutil

    return psutil.Process(pid).children(recursive=True)


def still_alive(procs: list[Any]) -> list[Any]:
    """Those of ``procs`` still running (a zombie has exited; a pid reused by a new process is not ours)."""
    import psutil

    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def wait_gone(procs: list[Any], timeout: float) -> tuple[float, list[Any]]:
    """Poll until every process of ``procs`` has exited or ``timeout`` seconds passed; returns the
    ``time.time()`` at which they were all seen gone, and those still running at the end."""
    deadline = time.monotonic() + timeout
    while (alive := still_alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return time.time(), alive
