"""A test that blocks fails instead of hanging CI: pytest-timeout is configured for every test."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

#: starts processes, kernels or models: left out of `make test-fast`
pytestmark = pytest.mark.slow


def test_a_default_timeout_is_configured(pytestconfig):
    timeout = pytestconfig.getini("timeout")
    assert timeout not in (None, "", "0"), "no default per-test timeout (pyproject: [tool.pytest.ini_options] timeout)"
    assert 0 < float(timeout) <= 900  # one test may take minutes on 2 cores, never a whole CI job


def test_a_blocked_test_fails_at_its_timeout_instead_of_hanging(tmp_path):
    """A test stuck opening a FIFO that nobody writes (a blocking regression) is stopped by the timeout."""
    (tmp_path / "test_blocks.py").write_text(textwrap.dedent("""
        import os

        def test_opens_a_fifo_nobody_writes(tmp_path):
            fifo = tmp_path / "fifo"
            os.mkfifo(fifo)
            open(fifo).read()  # blocks for ever
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "2",
                           "--rootdir", str(tmp_path), "test_blocks.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - t0
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Timeout" in done.stdout + done.stderr and "1 failed" in done.stdout, done.stdout
    assert seconds < 60, seconds
