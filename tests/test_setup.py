"""The set-up files agree: environment.yml asks for what pyproject.toml asks for, with the same bounds."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch", "opencv-python": "opencv"}  # PyPI name -> conda-forge name
CONDA_EXTRAS = {("dask", "distributed"): "distributed"}  # a PyPI extra that is its own conda package


def _wanted(requirements: list[str]) -> dict[str, str]:
    """conda-forge name -> version specifier, for pyproject requirements."""
    out: dict[str, str] = {}
    for line in requirements:
        req = Requirement(line)
        name = req.name.lower()
        out[CONDA_NAMES.get(name, name)] = str(req.specifier)
        for extra in req.extras:
            out[CONDA_EXTRAS[(name, extra)]] = str(req.specifier)
    return out


def _environment() -> dict[str, str]:
    """name -> version specifier of every package environment.yml installs (conda and pip)."""
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    out = {}
    for line in [d for d in deps if isinstance(d, str)] + [p for p in pip if not p.startswith("-e")]:
        req = Requirement(line)
        out[req.name.lower()] = str(req.specifier)
    return out


def test_environment_yml_installs_what_pyproject_requires_with_the_same_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _wanted(project["dependencies"] + project["optional-dependencies"]["lab"])
    env = _environment()
    missing = {k: v for k, v in wanted.items() if k not in env}
    assert not missing, f"environment.yml lacks {missing} that pyproject.toml requires — add them there"
    extra = sorted(set(env) - set(wanted) - {"python", "pip"})
    assert not extra, f"environment.yml installs {extra}, which pyproject.toml does not require — add or remove"
    differ = {k: (env[k], wanted[k]) for k in wanted if env[k] != wanted[k]}
    assert not differ, f"bounds differ (environment.yml, pyproject.toml): {differ}"
    assert Requirement("python" + env["python"]).specifier.contains("3.10")
