"""Mutation testing of the modules whose logic decides numbers (`make mutation`, docs/testing.md).

The modules and the fast tests that judge their mutants are configured in ONE place: the
``[tool.mutmut]`` table of pyproject.toml (``only_mutate``: one line per module;
``pytest_add_cli_args_test_selection``: the fast test files, slow tests deselected). mutmut runs,
for each mutant, only the selected tests that reach the mutated function, and stops at the first
failure.

    python scripts/mutation.py run [MODULE ...]   # mutate all configured modules, or those named
    python scripts/mutation.py report             # the kill-rate table of the last run (Markdown)
    python scripts/mutation.py survivors [MODULE] # the mutants no test killed: `mutmut show NAME`

A MODULE is a part of a configured path (``thresholds``, ``evaluation/metrics``). Run from the
repository root with the project's environment (not installed in CI: mutmut is a dev dependency).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from importlib.metadata import version
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: mutmut installs toml there
    import toml as tomllib

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
LOG = MUTANTS / "mutmut-run.log"

# mutmut's exit codes of a judged mutant (mutmut/stats.py), grouped for the table
KILLED = {1, 3}
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUT = {-24, 24, 152, 255, 36}


def configured_modules() -> list[str]:
    """The module paths of ``[tool.mutmut] only_mutate`` in pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    try:
        return list(config["tool"]["mutmut"]["only_mutate"])
    except KeyError:
        sys.exit("pyproject.toml has no [tool.mutmut] only_mutate list: add the modules to mutate there")


def select(modules: list[str], wanted: list[str]) -> list[str]:
    if not wanted:
        return modules
    chosen = [m for m in modules if any(w in m for w in wanted)]
    unknown = [w for w in wanted if not any(w in m for m in modules)]
    if unknown:
        sys.exit(
            f"no configured module matches {unknown}; configured: {modules}. "
            "Name a part of one of them, or add the module to [tool.mutmut] only_mutate in pyproject.toml"
        )
    return chosen


def mutant_glob(module: str) -> str:
    """mutmut names a mutant ``package.module.x_function__mutmut_N``."""
    return module.removesuffix(".py").replace("/", ".") + ".*"


def run(wanted: list[str]) -> int:
    modules = select(configured_modules(), wanted)
    MUTANTS.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", "2"]
    if wanted:
        cmd += [mutant_glob(m) for m in modules]
    print(f"mutating {len(modules)} modules; mutmut's progress goes to {LOG.relative_to(ROOT)}", flush=True)
    with LOG.open("w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        print(f"mutmut run exited with {rc}: read {LOG} (the clean tests must pass first)", file=sys.stderr)
        return rc
    print(report(modules))
    return 0


def counts(module: str) -> dict[str, int]:
    meta = MUTANTS / (module + ".meta")
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"].values()
    row = {"mutants": 0, "killed": 0, "survived": 0, "no tests": 0, "timeout": 0, "other": 0}
    for code in codes:
        row["mutants"] += 1
        key = next(
            (k for k, group in (("killed", KILLED), ("survived", SURVIVED), ("no tests", NO_TESTS),
                                ("timeout", TIMEOUT)) if code in group),
            "other",
        )
        row[key] += 1
    return row


def report(modules: list[str] | None = None) -> str:
    """Markdown table: a mutant killed by a timeout counts as killed; one without tests as survived."""
    modules = modules or configured_modules()
    lines = [
        f"Measured {date.today().isoformat()} with mutmut {version('mutmut')}.",
        "",
        "| module | mutants | killed | timeout | survived | no tests | kill rate |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for module in modules:
        row = counts(module)
        if not row:
            lines.append(f"| {module} | not run | | | | | |")
            continue
        rate = (row["killed"] + row["timeout"]) / row["mutants"] if row["mutants"] else 0.0
        lines.append(
            f"| {module} | {row['mutants']} | {row['killed']} | {row['timeout']} | {row['survived']} "
            f"| {row['no tests']} | {rate:.0%} |"
        )
    return "\n".join(lines)


def survivors(wanted: list[str]) -> str:
    out = []
    for module in select(configured_modules(), wanted):
        meta = MUTANTS / (module + ".meta")
        if meta.exists():
            codes = json.loads(meta.read_text())["exit_code_by_key"]
            out += [name for name, code in codes.items() if code in SURVIVED | NO_TESTS]
    return "\n".join(sorted(out))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "report", "survivors"}:
        print(__doc__)
        return 2
    if argv[0] == "run":
        return run(argv[1:])
    print(report(select(configured_modules(), argv[1:])) if argv[0] == "report" else survivors(argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
