"""Cold start: a run whose worker processes infer leaves torch out of the process that started it.

Importing torch costs the parent 1-2 s at start and as much again at exit (its teardown), for nothing when
the network runs in worker processes. The model's card (class names, task, training size) comes from the
machine's cache by the weights' SHA-256, so a run into a new store need not build the model here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import musseltools as mt
from musseltools.models import fingerprint
from musseltools.store.store import Store

ROOT = Path(__file__).resolve().parents[1]

# units committed as failed by a stand-in for the process executor: the engine's whole path in the parent
# (plan, start, commit, finish, cube), without starting worker processes
CHILD = textwrap.dedent("""
    import json, sys
    import musseltools as mt
    from musseltools.executors import ProcessExecutor

    class NoWorkers(ProcessExecutor):
        def process(self, task, units, *, cancel, on_progress=lambda n: None):
            for unit in units:
                yield task.commit_failed(unit, "not inferred: a test stand-in for the worker processes")

    images, model, store = sys.argv[1:4]
    run = mt.run(images, model=model, store=store, quiet=True, executor=NoWorkers(2), device=None)
    print(json.dumps({"torch": "torch" in sys.modules, "ultralytics": "ultralytics" in sys.modules,
                      "processed": run.meta["processed_count"], "names": sorted(run.meta["model"]["names"].values())}))
""")


def _child(images: Path, model: Path, store: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CHILD, str(images), str(model), str(store)], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_new_store_on_a_machine_that_knows_the_weights_does_not_import_torch_in_the_parent(
        tiny_model, images, tmp_path):
    mt.run(images, model=tiny_model, store=tmp_path / "first", quiet=True, workers=1)  # the machine learns the card
    got = _child(images, tiny_model, tmp_path / "second")
    assert got == {"torch": False, "ultralytics": False, "processed": 6, "names": ["dead", "live"]}
    # the new store keeps the card too (its next run reads it from there)
    assert list(Store(tmp_path / "second").read_json_cache("models.json")) == [fingerprint(tiny_model)]


def test_a_damaged_machine_card_cache_is_ignored_and_rewritten(tiny_model, images, tmp_path):
    cache = Path(os.environ["MUSSELTOOLS_CACHE"])
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "models.json").write_text("{not json")
    run = mt.run(images, model=tiny_model, store=tmp_path / "s", quiet=True, workers=1)
    assert run.meta["processed_count"] == 6
    assert len(json.loads((cache / "models.json").read_text())) == 1


EXITING = textwrap.dedent("""
    import atexit, sys
    from musseltools.cli import main
    atexit.register(lambda: print("an exit handler ran", file=sys.stderr))
    sys.argv = ["musseltools", *sys.argv[1:]]
    main()  # the command line of this process: main ends the process itself
    print("main returned", file=sys.stderr)
""")


def test_the_command_ends_its_process_with_its_status_its_whole_output_and_the_exit_handlers_run(
        tiny_model, images, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    store = tmp_path / "store"
    run = mt.run(images, model=tiny_model, store=store, quiet=True, workers=1)
    ok = subprocess.run([sys.executable, "-c", EXITING, "status", run.run_id, "--store", str(store), "--json"],
                        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)["processed_count"] == 6  # written whole before the process ended
    assert "an exit handler ran" in ok.stderr and "main returned" not in ok.stderr
    missing = subprocess.run([sys.executable, "-c", EXITING, "status", "nosuchrun", "--store", str(store)], env=env,
                             capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode == 1 and "nosuchrun" in missing.stderr and "an exit handler ran" in missing.stderr


# A fork server preloading a module whose object says, when the interpreter's tear-down collects it, that it
# was torn down: with musseltools' exit module preloaded first, the server's end skips that tear-down (it
# took ~1.2 s of CPU with torch imported, while holding the command's output pipe open).
SERVER = textwrap.dedent("""
    import multiprocessing as mp, sys
    from multiprocessing import forkserver
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(sys.argv[1:])
    p = ctx.Process(target=print, args=("a worker ran",))
    p.start()
    p.join()
    print(forkserver._forkserver._forkserver_pid, flush=True)
""")
TORN_DOWN = textwrap.dedent("""
    import os, sys
    class Marker:
        def __init__(self, path):
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        def __del__(self):
            os.write(self.fd, b"torn down")
    MARKER = Marker(os.path.join(os.path.dirname(__file__), "torn-down.txt"))
""")


def _server_tear_down(tmp_path: Path, preload: list[str]) -> str:
    import time

    tmp_path.mkdir()
    (tmp_path / "marked.py").write_text(TORN_DOWN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", SERVER, *preload], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0 and "a worker ran" in out.stdout, out.stderr[-2000:]
    pid = int(out.stdout.strip().splitlines()[-1])
    for _ in range(600):  # the server exits once its client is gone
        if not Path(f"/proc/{pid}").exists() or " Z " in Path(f"/proc/{pid}/stat").read_text():
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the fork server {pid} did not exit after its client")
    marker = tmp_path / "torn-down.txt"
    return marker.read_text() if marker.exists() else ""


def test_the_workers_fork_server_ends_without_tearing_down_what_it_imported(tmp_path):
    assert _server_tear_down(tmp_path / "plain", ["marked"]) == "torn down"  # the tear-down this saves
    assert _server_tear_down(tmp_path / "quick", ["musseltools.executors.serverexit", "marked"]) == ""


def test_the_exit_module_changes_nothing_outside_the_fork_server():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", "import atexit, sys; import musseltools.executors.serverexit; "
                          "atexit.register(print, 'exit handlers ran'); sys.exit(3)"],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 3 and "exit handlers ran" in out.stdout


IMPORTS = textwrap.dedent("""
    import json, sys
    from musseltools.executors.warmup import CUBE_MODULES, import_in_background
    before = [m in sys.modules for m in CUBE_MODULES]
    thread = import_in_background()
    thread.join()
    print(json.dumps({"before": before, "after": [m in sys.modules for m in CUBE_MODULES],
                      "again": import_in_background() is None,
                      "missing": import_in_background(["no_such_module_here"]) is None}))
""")


def test_the_cube_modules_are_imported_in_the_background_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", IMPORTS], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == {"before": [False] * 3, "after": [True] * 3, "again": True, "missing": True}


EARLY = textwrap.dedent("""
    import json, sys
    import musseltools.executors.server as server
    seen = []
    real = server.start_server
    def watched(lean=False):
        seen.append({"pandas": "pandas" in sys.modules, "torch": "torch" in sys.modules})
        return real(lean)
    server.start_server = watched
    from musseltools.cli import main
    code = main(["run", *sys.argv[1:], "--quiet"])
    print(json.dumps({"code": code, "first": seen[0] if seen else None}))
""")


def test_the_command_starts_the_workers_server_before_it_imports_pandas(tiny_model, images, tmp_path):
    """The server's imports (torch: seconds) overlap the command's own (pandas, pyarrow, the models) only
    when it is started before them."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", EARLY, str(images), "--model", str(tiny_model), "--workers", "2",
                          "--store", str(tmp_path / "s")], env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"code": 0, "first": {"pandas": False, "torch": False}}


def test_importing_musseltools_is_quick_and_its_public_names_all_resolve():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = ("import json, sys; import musseltools as mt; heavy = sorted(m for m in ('pandas', 'torch', 'xarray') "
            "if m in sys.modules); names = [n for n in mt.__all__ if getattr(mt, n, None) is None]; "
            "print(json.dumps([heavy, names, sorted(set(mt.__all__) - set(dir(mt)))]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == [[], [], []]
