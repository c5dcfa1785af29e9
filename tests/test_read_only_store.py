"""A store on a read-only mount (a shared survey archive): reading a completed run needs no write.

The store is bind-mounted read-only in a private mount namespace (``unshare --mount``): file permissions
would not stop root (CI runs as root), a read-only mount does. What must write says so in one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import IMGSZ, write_images

import musseltools as mt

#: starts processes, kernels or models: left out of `make test-fast`
pytestmark = pytest.mark.slow


def _read_only(store: Path, code: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run Python ``code`` (argv: store, *args) with ``store`` mounted read-only for that process alone."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot make a private mount namespace here (util-linux unshare as root is needed)")
    script = store.parent / "reader.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount --bind -o ro "$1" "$1" && shift && exec "$@"', "sh", str(store),
         sys.executable, str(script), str(store), *args],
        capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def archived(images, tiny_model, tmp_path):
    """A completed run in a store whose derived cube was never written (as a store copied without it)."""
    store = tmp_path / "archive"
    run = mt.run(images, model=tiny_model, imgsz=IMGSZ, store=store, quiet=True)
    expected = {"counts": run.counts(), "counts_03": run.counts(0.3),
                "cube": run.cube()["count"].sum(dim="image").values.tolist()}
    shutil.rmtree(store / "runs" / run.run_id / "cube.zarr")
    return store, run.run_id, expected


def test_a_completed_run_on_a_read_only_store_is_read_and_resumed_without_writing(archived, images, tiny_model):
    store, run_id, expected = archived
    write_images(Path(f"{images}-more"), 2, seed=7)  # images the archived run has no result for
    proc = _read_only(store, """
        import json, subprocess, sys
        import musseltools as mt
        from musseltools.errors import ReadOnlyStoreError
        store, run_id, images, model, imgsz = sys.argv[1:]
        out = {}
        run = mt.open_run(run_id, store=store)
        out["counts"], out["counts_03"] = run.counts(), run.counts(0.3)
        out["cube"] = run.cube()["count"].sum(dim="image").values.tolist()
        again = mt.run(images, model=model, imgsz=int(imgsz), store=store, quiet=True)
        out["resumed"] = [again.run_id, again.status, again.counts()]
        try:
            run.save_thresholds(0.3)
        except ReadOnlyStoreError as exc:
            out["save"] = str(exc)
        cli = [sys.executable, "-m", "musseltools", "run", images, "--model", model, "--imgsz", imgsz,
               "--store", store, "--json"]
        p = subprocess.run(cli, capture_output=True, text=True)
        out["cli_run"] = [p.returncode, p.stdout, p.stderr]
        p = subprocess.run(cli[:4] + [images + "-more"] + cli[5:], capture_output=True, text=True)
        out["cli_new_images"] = [p.returncode, p.stderr]
        print(json.dumps(out))
    """, run_id, str(images), str(Path(tiny_model)), str(IMGSZ))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["counts"] == expected["counts"] and out["counts_03"] == expected["counts_03"]
    assert out["cube"] == expected["cube"]  # built in memory: the same cube as the one written before
    assert out["resumed"] == [run_id, "completed", expected["counts"]]
    assert "read-only" in out["save"] and "--store" in out["save"] and "\n" not in out["save"]
    code, stdout, stderr = out["cli_run"]
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert (doc["run_id"], doc["status"], doc["inferred_this_call"]) == (run_id, "completed", 0)
    code, stderr = out["cli_new_images"]
    assert code != 0
    error = [line for line in stderr.splitlines() if line.startswith("musseltools: error")]
    assert len(error) == 1 and "read-only" in error[0] and "copy the store" in error[0], stderr
    assert "Traceback" not in stderr
    assert not (store / "runs" / run_id / "cube.zarr").exists()  # nothing was written behind the mount


@pytest.mark.slow
def test_the_report_of_a_completed_run_on_a_read_only_store_is_written_elsewhere(archived, images, tiny_model,
                                                                                 tmp_path):
    store, run_id, expected = archived
    out = tmp_path / "report"
    proc = _read_only(store, """
        import subprocess, sys
        store, images, model, imgsz, out = sys.argv[1:]
        p = subprocess.run([sys.executable, "-m", "musseltools", "report", images, "--model", model, "--imgsz",
                            imgsz, "--store", store, "--out", out], capture_output=True, text=True)
        print(p.stderr, file=sys.stderr)
        sys.exit(p.returncode)
    """, str(images), str(Path(tiny_model)), str(IMGSZ), str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (out / "report.html").read_text()
    assert run_id in html
    assert not (store / "runs" / run_id / "cube.zarr").exists()
