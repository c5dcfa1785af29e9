"""The README stays true: its Python example runs on the demo data, and its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.mark.slow
def test_python_example_runs_on_the_demo(tmp_path, monkeypatch):
    import xarray as xr

    import musseltools as mt

    (tmp_path / "data").mkdir()
    for sub in ("demo", "models"):
        (tmp_path / "data" / sub).symlink_to(ROOT / "data" / sub)
    monkeypatch.delenv("MUSSELTOOLS_BATCH_SIZE")
    scope: dict = {}
    for code in blocks("python"):  # every Python example, in order, as a reader would run them
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own examples
    run = scope["run"]
    assert isinstance(run, mt.Run) and run.status == "completed"
    assert run.totals["live"] > 0 and run.totals["dead"] > 0
    assert isinstance(scope["table"], pd.DataFrame) and len(scope["table"]) == 40
    assert isinstance(scope["cube"], xr.Dataset)
    assert len(list((tmp_path / "exports" / "demo").rglob("*.json"))) == 40
    ev = scope["ev"]
    assert set(ev.metrics["class"]) == {"live", "dead"} and ev.metrics["recall"].gt(0.5).all()
    groups = scope["groups"]  # the demo's sheet: 3 sites x 2 dates, live and dead
    assert set(groups["site"]) == {"North", "Narrows", "South"} and len(groups) == 3 * 2 * 2
    assert groups["density_low"].lt(groups["density"]).all() and groups["images"].sum() == 2 * 40
    assert "offset(log(area_m2))" in scope["cmp"].formulas["count_model"]


def test_cli_synopsis_matches_the_parser():
    from musseltools.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for line in blocks("bash")[1].replace("\\\n", " ").splitlines():
        m = re.match(r"musseltools ([a-z-]+)", line.strip())
        if not m:
            continue
        cmd = sub.choices[m.group(1)]
        flags = {s for a in cmd._actions for s in a.option_strings}
        for flag in re.findall(r"--[a-z-]+", line):
            assert flag in flags, f"README names {flag} for `musseltools {m.group(1)}`"


def test_setup_is_exactly_two_commands():
    first = blocks("bash")[0].strip().splitlines()
    assert [c.split("#")[0].strip() for c in first] == ["make demo", "make test"]


def suite_size() -> int:
    """The number of tests in tests/: this session's own count when it collected them all, else a collection."""
    from conftest import SUITE_SIZE

    if "tests" in SUITE_SIZE:
        return SUITE_SIZE["tests"]
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", str(ROOT / "tests")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600).stdout
    return int(re.search(r"(\d+) tests? collected", out).group(1))


@pytest.mark.slow
def test_readme_states_the_suites_test_count():
    stated = re.search(r"the whole suite: (\d+) tests", README)
    assert stated, "the README's Development section no longer says how many tests `make test` runs"
    assert int(stated.group(1)) == suite_size(), (
        f"README says {stated.group(1)} tests, the suite has {suite_size()}: write that number in README.md")
