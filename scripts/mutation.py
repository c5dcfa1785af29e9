"""Mutation testing of the modules whose logic decides numbers (`make mutation`, docs/testing.md).

The modules and the fast tests that judge their mutants are configured in ONE place, pyproject.toml:
``[tool.mutmut] only_mutate`` lists the modules, ``[tool.mutmut.tests_by_module]`` the tests (files or
test ids, and pytest options such as ``--deselect``) that judge each module's mutants.

Each module is run on its own, in ``mutants/<name>/`` (ignored by git): a pyproject.toml made for that
module (mutmut's config with only that module and only its tests; pytest's own config unchanged) and
links to the package, the tests and the data. mutmut's first pass ("stats", which learns which tests
reach which function) then runs only the module's own tests, not the whole fast selection, so a
module costs minutes. For each mutant mutmut runs the module's tests that reach the mutated function,
and stops at the first failure.

    python scripts/mutation.py run [MODULE ...]   # mutate each configured module, or those named
    python scripts/mutation.py report [MODULE ...] # the kill-rate table of the last runs (Markdown)
    python scripts/mutation.py survivors [MODULE] # the mutants no test killed
    python scripts/mutation.py show NAME           # the diff of one mutant (its module's mutmut show)

A MODULE is a part of a configured path (``thresholds``, ``evaluation/metrics``). Run from the
repository root with the project's environment (not installed in CI: mutmut is a dev dependency).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date
from importlib.metadata import version
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: mutmut installs toml there
    import toml as tomllib

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
LINKED = ("musseltools", "tests", "data")  # what a module's folder links to in the repository

# mutmut's exit codes of a judged mutant (mutmut/stats.py), grouped for the table
KILLED = {1, 3}
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUT = {-24, 24, 152, 255, 36}


def load_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def configured_modules(config: dict | None = None) -> list[str]:
    """The module paths of ``[tool.mutmut] only_mutate`` in pyproject.toml."""
    config = config or load_config()
    try:
        return list(config["tool"]["mutmut"]["only_mutate"])
    except KeyError:
        sys.exit("pyproject.toml has no [tool.mutmut] only_mutate list: add the modules to mutate there")


def tests_of(module: str, config: dict | None = None) -> list[str]:
    """The pytest arguments that judge ``module``'s mutants: ``[tool.mutmut.tests_by_module]``."""
    config = config or load_config()
    tests = config["tool"]["mutmut"].get("tests_by_module", {}).get(module)
    if not tests:
        sys.exit(
            f"pyproject.toml names no tests for {module}: add a line "
            f'"{module}" = ["tests/test_x.py", ...] to [tool.mutmut.tests_by_module] '
            "(the fast unit tests of that module; slow tests make every mutant slow)"
        )
    return list(tests)


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


def workdir(module: str) -> Path:
    """``mutants/results-corrected`` for ``musseltools/results/corrected.py``."""
    name = module.removeprefix("musseltools/").removesuffix(".py").replace("/", "-")
    return MUTANTS / name


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) into the module's pyproject.toml")


def module_pyproject(module: str, config: dict) -> str:
    """pytest's config as it is, and mutmut's narrowed to ``module`` and its tests."""
    mutmut = {k: v for k, v in config["tool"]["mutmut"].items() if k != "tests_by_module"}
    mutmut.update(only_mutate=[module], pytest_add_cli_args_test_selection=tests_of(module, config),
                  use_git_change_detection=False)
    tables = {"tool.pytest.ini_options": config["tool"].get("pytest", {}).get("ini_options", {}),
              "tool.mutmut": mutmut}
    lines = [f"# made by scripts/mutation.py for {module}: edit pyproject.toml in the repository root"]
    for table, values in tables.items():
        lines += ["", f"[{table}]"] + [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def prepare(module: str, config: dict) -> Path:
    """The module's folder: its pyproject.toml and links to the package, tests and data."""
    work = workdir(module)
    work.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = work / name
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(ROOT / name, work))
    (work / "pyproject.toml").write_text(module_pyproject(module, config))
    return work


def rejudge_survivors(module: str) -> int:
    """Forget the verdicts of the mutants that survived or had no tests, so that the next run judges
    them again with the tests as they are now (mutmut keeps a verdict until the mutated function
    changes; a new test can only kill a survivor, never revive a killed mutant). Returns how many."""
    meta = meta_of(module)
    if not meta.exists():
        return 0
    data = json.loads(meta.read_text())
    again = [k for k, code in data["exit_code_by_key"].items() if code in SURVIVED | NO_TESTS]
    for key in again:
        data["exit_code_by_key"][key] = None
    meta.write_text(json.dumps(data, indent=4))
    return len(again)


def run(wanted: list[str]) -> int:
    config = load_config()
    modules = select(configured_modules(config), wanted)
    for module in modules:
        tests_of(module, config)  # every module has its tests before the first (long) run starts
    failed = []
    for module in modules:
        work = prepare(module, config)
        log = work / "mutmut-run.log"
        again = rejudge_survivors(module)
        print(f"{module}: mutating ({again} survivors of the last run judged again); mutmut's progress goes "
              f"to {log.relative_to(ROOT)}", flush=True)
        start = time.monotonic()
        with log.open("w") as out:
            rc = subprocess.call([sys.executable, "-m", "mutmut", "run", "--max-children", "2"],
                                 cwd=work, stdout=out, stderr=subprocess.STDOUT)
        print(f"{module}: done in {time.monotonic() - start:.0f} s", flush=True)
        if rc != 0:
            print(f"{module}: mutmut run exited with {rc}: read {log} (the module's tests must pass "
                  "unmutated first)", file=sys.stderr)
            failed.append(module)
    print(report(modules))
    return 1 if failed else 0


def meta_of(module: str) -> Path:
    return workdir(module) / "mutants" / (module + ".meta")


def counts(module: str) -> dict[str, int]:
    meta = meta_of(module)
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
        meta = meta_of(module)
        if meta.exists():
            codes = json.loads(meta.read_text())["exit_code_by_key"]
            out += [name for name, code in codes.items() if code in SURVIVED | NO_TESTS]
    return "\n".join(sorted(out))


def show(names: list[str]) -> int:
    """``mutmut show NAME`` in the folder of the module the mutant belongs to."""
    for name in names:
        module = next((m for m in configured_modules()
                       if name.startswith(m.removesuffix(".py").replace("/", ".") + ".")), None)
        if module is None:
            print(f"{name} is no mutant of a configured module: take a name from `survivors`", file=sys.stderr)
            return 2
        subprocess.call([sys.executable, "-m", "mutmut", "show", name], cwd=workdir(module))
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "report", "survivors", "show"}:
        print(__doc__)
        return 2
    if argv[0] == "run":
        return run(argv[1:])
    if argv[0] == "show":
        return show(argv[1:])
    print(report(select(configured_modules(), argv[1:])) if argv[0] == "report" else survivors(argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
