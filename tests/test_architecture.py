"""The module rules of docs/architecture.md, checked on the source.

- no module of ``musseltools/`` is over 600 lines;
- no function is over 80 lines unless its docstring says why, in a paragraph starting ``Length:``;
- no private name (``_x``) of one musseltools module is used by another;
- the import layers hold (``import-linter``, configured in ``pyproject.toml``).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "musseltools"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.is_file() and "notebooks" not in p.parts)
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def test_no_module_is_over_600_lines():
    long = {_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long} — split them by concern"


def test_long_functions_say_why():
    offenders = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if n > MAX_FUNCTION_LINES and "Length:" not in doc:
                    offenders.append(f"{_name(path)}:{node.lineno} {node.name} ({n} lines)")
    assert not offenders, ("functions over 80 lines without a 'Length:' paragraph in their docstring saying why: "
                           + ", ".join(offenders))


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(current: str, is_package: bool, level: int, module: str | None) -> str:
    base = current.split(".")
    if level:
        base = base[: len(base) - level + (1 if is_package else 0)]
    return ".".join(base + ([module] if module else []))


def test_no_private_name_is_used_across_modules():
    own = {_module_of(p) for p in MODULES}
    offenders = []
    for path in MODULES:
        me = _module_of(path)
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}  # local name -> musseltools module it names
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(me, path.name == "__init__.py", node.level, node.module)
                if not target.startswith("musseltools"):
                    continue
                for a in node.names:
                    full = f"{target}.{a.name}"
                    if full in own:
                        aliases[a.asname or a.name] = full
                    elif a.name.startswith("_") and not a.name.startswith("__") and target != me:
                        offenders.append(f"{_name(path)}:{node.lineno} imports {a.name} from {target}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                offenders.append(f"{_name(path)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not offenders, "private names used across modules: " + "; ".join(offenders)


def test_import_layers_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.fail("import-linter is not installed: run `make dev`")
    proc = subprocess.run([lint, str(PACKAGE.parent / "pyproject.toml")], cwd=PACKAGE.parent,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Contracts: " in proc.stdout and " broken" in proc.stdout


@pytest.fixture(scope="module")
def _where_module_fixtures_run():
    import os

    return Path.cwd(), os.environ.get("MUSSELTOOLS_CACHE"), os.environ.get("MUSSELTOOLS_STORE")


def test_module_scoped_fixtures_are_isolated(_where_module_fixtures_run, tmp_path_factory):
    cwd, cache, store = _where_module_fixtures_run
    base = tmp_path_factory.getbasetemp()
    assert cwd.is_relative_to(base), f"a module fixture ran in {cwd}, outside the test's temporary folders"
    assert cache and Path(cache).is_relative_to(base), f"a module fixture saw MUSSELTOOLS_CACHE={cache!r}"
    assert store is None


@pytest.mark.parametrize("old, new", [
    ("widgets", "jupyter.widgets"), ("editor", "jupyter.editor"), ("review", "corrections.review"),
    ("detections", "core.detections"), ("collection", "images.collection"), ("compare_plots", "plots.compare"),
])
def test_old_import_paths_shown_in_the_docs_work_with_a_deprecation_warning(old, new):
    code = (f"import warnings, importlib; warnings.simplefilter('error', DeprecationWarning)\n"
            f"try:\n    import musseltools.{old}\nexcept DeprecationWarning as w:\n    print('warned:', w)\n"
            f"warnings.simplefilter('ignore')\nimport musseltools.{old} as o, musseltools.{new} as n\n"
            f"print('same' if o is n else 'different')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "YOLO_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"warned: musseltools.{old} moved to musseltools.{new}" in out.stdout, out.stdout
    assert out.stdout.strip().endswith("same"), out.stdout
