"""Crash safety: ``musseltools run`` killed with SIGKILL at random moments and at named failpoints.

After every kill the run is resumed; the final per-image and detections tables must equal those of
an uninterrupted run in another store (nothing lost, nothing duplicated), committed results seen
between kills must already be the final ones, and temporary files left by the killed writer must be
removed or ignored, never read as results.

The random moments come from a seeded ``random.Random`` (``MUSSELTOOLS_CRASH_SEED`` to vary it);
the kill times are seeded, where they land in the program depends on the machine's speed.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import IMGSZ, write_images
from contract import assert_same_results
from procs import Zygote, descendants, still_alive, wait_gone

import musseltools as mt
from musseltools.store.store import IMAGES_SCHEMA, Store

#: starts processes, kernels or models: left out of `make test-fast`
pytestmark = pytest.mark.slow

SEED = int(os.environ.get("MUSSELTOOLS_CRASH_SEED", "20261125"))
MIN_RANDOM_KILLS = 20
KILLS_PER_CHAIN = 5
COMMIT_EVERY = 2


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> Path:
    """14 small images of two sizes and one damaged file (its error must survive kills too)."""
    folder = tmp_path_factory.mktemp("crash") / "survey"
    write_images(folder, 9, seed=11)
    write_images(folder, 4, seed=12, size=(96, 128), start=9)
    (folder / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0 only the start of a jpeg")
    return folder


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


def _argv(survey: Path, model: Path, store: Path) -> list[str]:
    return ["run", str(survey), "--model", str(model), "--imgsz", str(IMGSZ), "--store", str(store),
            "--commit-every", str(COMMIT_EVERY), "--batch-size", "1", "--json"]


@pytest.fixture(scope="module")
def baseline(survey, tiny_model, zygote, tmp_path_factory):
    """An uninterrupted run (a forked command line, like the runs under test), how long it took, and how
    long a run that finds nothing to do takes (start-up, scan, model, cube)."""
    where = tmp_path_factory.mktemp("baseline")
    t0 = time.perf_counter()
    status = zygote.run(_argv(survey, tiny_model, where / "store"), cwd=where)
    seconds = time.perf_counter() - t0
    assert status["rc"] == 0, status["output"]
    t0 = time.perf_counter()
    assert zygote.run(_argv(survey, tiny_model, where / "store"), cwd=where)["rc"] == 0
    idle_seconds = time.perf_counter() - t0
    run = mt.open_run(mt.list_runs(store=where / "store").iloc[0]["run_id"], store=where / "store")
    assert run.status == "completed"
    assert run.meta["failed_count"] == 1 and run.meta["total_images"] == 14
    return run, seconds, idle_seconds


def _check_committed_prefix(store: Path, baseline_run) -> tuple[int, int]:
    """Whatever is committed after a kill is already the final result; returns how many images
    have a committed result, and how many of those a successful one."""
    key = baseline_run.meta["inference_key"]
    images, dets = Store(store).read_results(key)
    ref_images, ref_dets = Store(baseline_run.store.root).read_results(key)
    if images.empty:
        assert dets.empty
        return 0, 0
    cols = [c for c in IMAGES_SCHEMA.names if c not in ("processed_at", "path")]
    got = images[cols].sort_values("image_id").reset_index(drop=True)
    want = ref_images[ref_images["image_id"].isin(images["image_id"])][cols].sort_values("image_id")
    pd.testing.assert_frame_equal(got, want.reset_index(drop=True))
    dcols = ["image_id", "class_id", "confidence", "x1", "y1", "x2", "y2"]
    got_d = dets[dcols].sort_values(dcols).reset_index(drop=True)
    want_d = ref_dets[ref_dets["image_id"].isin(images["image_id"])][dcols].sort_values(dcols)
    pd.testing.assert_frame_equal(got_d, want_d.reset_index(drop=True))
    assert not (store / "results" / key / "quarantine").exists(), "a kill left a damaged part"
    return len(images), int(images["error"].isna().sum())


def _plant_poison_temp(store: Path, key: str, image_id: str) -> Path:
    """A temporary images part as a killed writer leaves it, with a wrong row: it must never be read."""
    folder = store / "results" / key / "images"
    folder.mkdir(parents=True, exist_ok=True)
    poison = pa.table({
        "image_id": [image_id], "path": ["poison"], "width": [1], "height": [1], "n_detections": [0],
        "cap_hit": [False], "error": ["POISON: read from a temporary file"],
        "processed_at": pa.array([pd.Timestamp.now(tz="UTC")], pa.timestamp("us", tz="UTC")),
    }, schema=IMAGES_SCHEMA)
    path = folder / ".part-0000poison.parquet.4194000.1.tmp"
    pq.write_table(poison, path)
    return path


def _temporaries(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if ".tmp" in p.name or p.name.endswith(".old")]


def _final_run(store: Path) -> mt.Run:
    runs = mt.list_runs(store=store)
    assert len(runs) == 1
    return mt.open_run(runs.iloc[0]["run_id"], store=store)


def test_random_sigkills_then_resume_equal_an_uninterrupted_run(survey, tiny_model, zygote, baseline, tmp_path):
    base_run, full_seconds, idle_seconds = baseline
    key = base_run.meta["inference_key"]
    rng = random.Random(SEED)
    kills, chains, committed_seen = 0, 0, set()
    deadline = time.monotonic() + max(240.0, 60 * full_seconds)
    n_images = len(base_run.per_image())
    while kills < MIN_RANDOM_KILLS or not any(0 < n < n_images for n in committed_seen):
        chains += 1
        assert time.monotonic() < deadline, f"only {kills} kills landed in {chains} chains: {committed_seen}"
        # once enough kills landed but none mid-run (the tail of a run, counting and the cube, can be most of
        # it on a busy machine), aim the next chains at the first part of the run
        early = 0.3 if kills >= MIN_RANDOM_KILLS else 1.0
        store = tmp_path / f"store{chains}"
        poisons, left = [], 1.0  # the share of the work still to do
        for _ in range(KILLS_PER_CHAIN):  # kill, resume and kill again, ...
            # a moment within the (shorter and shorter) life of the resumed run
            delay = rng.uniform(0.0, idle_seconds + (full_seconds - idle_seconds) * left * early)
            status = zygote.kill_after(_argv(survey, tiny_model, store), delay, cwd=tmp_path)
            if status["signal"] != signal.SIGKILL:  # it finished first
                assert status["rc"] == 0, status["output"]
                break
            kills += 1
            n = _check_committed_prefix(store, base_run)[0]
            committed_seen.add(n)
            left = 1 - n / n_images
            if rng.random() < 0.5:
                poisons.append(_plant_poison_temp(store, key, base_run.per_image()["image_id"].iloc[0]))
        else:  # ... then let the last resume finish
            status = zygote.run(_argv(survey, tiny_model, store), cwd=tmp_path)
            assert status["rc"] == 0, status["output"]
        final = _final_run(store)
        assert final.status == "completed"
        assert_same_results(final, base_run)
        assert "POISON" not in final.per_image()["error"].astype(str).str.cat()
        assert not any(p.exists() for p in poisons), "a temporary file of a dead writer was not removed"
        assert _temporaries(store) == [], "temporary files left behind"
    # the kills did not all land before the first commit or after the last one
    assert any(0 < n < n_images for n in committed_seen), committed_seen


# Each step of the chain resumes the store the previous one was killed in, and is killed itself at the
# named point (``name@N``: the N-th time this process reaches it); the last step completes the run.
FAILPOINT_CHAIN = ["meta-written@1", "part-written@2", "detections-committed@2", "part-committed@2",
                   "meta-written@3", "cube-writing"]


def test_kill_at_each_failpoint_then_resume(survey, tiny_model, zygote, baseline, tmp_path):
    base_run = baseline[0]
    key = base_run.meta["inference_key"]
    store = tmp_path / "store"
    results = store / "results" / key
    before = 0  # committed parts so far
    for point in FAILPOINT_CHAIN:
        status = zygote.run(_argv(survey, tiny_model, store), cwd=tmp_path, env={"MUSSELTOOLS_FAILPOINTS": point})
        assert status["signal"] == signal.SIGKILL, f"failpoint {point} was not reached: {status}"
        n, _ = _check_committed_prefix(store, base_run)
        name = point.partition("@")[0]
        leftovers = [p.relative_to(store).parts[-2] for p in _temporaries(store)]
        parts = len(list((results / "images").glob("part-*.parquet")))
        new = parts - before
        orphans = 0  # detections parts whose images part never came (the next run removes them)
        if name == "meta-written" and parts == 0:  # killed while creating the run: no run.json yet
            assert n == 0 and not (store / "runs" / base_run.run_id / "run.json").exists()
            assert leftovers == [base_run.run_id]
        elif name == "part-written":  # one unit committed, the next one's images part still temporary
            assert new == 1 and leftovers == ["images"]
            orphans = 1
        elif name == "detections-committed":  # detections part renamed, images part not yet written
            assert new == 1
            orphans = 1
        elif name == "part-committed":  # parts renamed, run.json not yet updated: counts come from the parts
            assert new == 2
            assert mt.open_run(base_run.run_id, store=store).meta["processed_count"] < n
        elif name == "meta-written":
            assert new == 2 and leftovers == [base_run.run_id]
            assert mt.open_run(base_run.run_id, store=store).meta["processed_count"] < n  # old run.json intact
        elif name == "cube-writing":  # every result committed, the cube half-written aside
            assert n == len(base_run.per_image()) and _final_run(store).status == "completed"
            assert any(".cube.zarr." in p.name for p in _temporaries(store))
        # a detections part without its images part is not a commit: it is never read
        assert len(list((results / "detections").glob("part-*.parquet"))) == parts + orphans
        before = parts
    again = zygote.run(_argv(survey, tiny_model, store), cwd=tmp_path)
    assert again["rc"] == 0, again["output"]
    final = _final_run(store)
    assert final.meta["inferred_this_call"] == 0
    assert_same_results(final, base_run)
    assert _temporaries(store) == []
    assert int(final.cube()["count"].sel(threshold=0.5).sum()) == sum(base_run.totals.values())


def test_real_command_line_killed_and_resumed(survey, tiny_model, zygote, baseline, tmp_path):
    """``python -m musseltools run`` itself, killed at a failpoint, then resumed."""
    base_run = baseline[0]
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "musseltools", *_argv(survey, tiny_model, store)]
    env = dict(os.environ, MUSSELTOOLS_FAILPOINTS="part-committed@3", MUSSELTOOLS_TORCH_THREADS="1")
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    n, n_ok = _check_committed_prefix(store, base_run)
    assert n == 3 * COMMIT_EVERY
    done = zygote.run(_argv(survey, tiny_model, store), cwd=tmp_path)  # resumed (a forked command line)
    assert done["rc"] == 0, done["output"]
    final = _final_run(store)
    assert final.meta["inferred_this_call"] == 13 - n_ok
    assert_same_results(final, base_run)


def _committed_parts(store: Path) -> list[Path]:
    return sorted(store.glob("results/*/images/part-*.parquet"))


def _copy_if_still_there(src: str, dst: str) -> None:
    """Copy a file as ``cp -r`` would during a run: one that vanished since it was listed (a temporary file
    renamed or removed by the writer) is skipped."""
    try:
        shutil.copy2(src, dst)
    except FileNotFoundError:
        pass


def test_store_copied_mid_run_by_a_backup_tool_is_still_consistent(survey, tiny_model, zygote, baseline, tmp_path):
    """A copy of the store taken while the writer runs (as ``cp -r`` during a run would) holds only whole
    committed units and resumes to the same results. The writer is never paused: each copy starts when
    the store shows a new committed part (a signal from the store, not a sleep), and races the writer."""
    base_run = baseline[0]
    total = len(base_run.per_image())
    store = tmp_path / "store"
    pid, out = zygote.start(_argv(survey, tiny_model, store), cwd=tmp_path)
    copies, seen, deadline = [], 0, time.monotonic() + 300
    try:
        while len(copies) < 2 and time.monotonic() < deadline:
            parts = len(_committed_parts(store))
            if parts > seen and parts in (1, 3):  # a first unit, then a later one, is on disk: copy now
                copy = tmp_path / f"copy{len(copies)}"
                shutil.copytree(store, copy, symlinks=True, copy_function=_copy_if_still_there)
                copies.append((copy, parts))
            seen = max(seen, parts)
            time.sleep(0.002)
    finally:
        status = zygote.wait(pid)
    assert status["rc"] == 0, out.read_text()
    assert len(copies) == 2, f"the writer finished before the copies: {copies}"
    for copy, parts_at_start in copies:
        n, n_ok = _check_committed_prefix(copy, base_run)  # committed rows are already the final ones
        parts = _committed_parts(copy)
        # the copy was taken mid-run: some but not all units; every unit whole (its images rows and detections)
        assert 0 < n < total, (copy.name, n)
        assert len(parts) >= parts_at_start and n == COMMIT_EVERY * len(parts), (copy.name, n, parts)
        for part in parts:
            assert (part.parent.parent / "detections" / part.name).exists()
        again = zygote.run(_argv(survey, tiny_model, copy), cwd=tmp_path)
        assert again["rc"] == 0, again["output"]
        resumed = _final_run(copy)
        assert resumed.meta["inferred_this_call"] == 13 - n_ok  # only what the copy did not hold
        assert_same_results(resumed, base_run)
        assert _temporaries(copy) == []


@pytest.mark.parametrize("moment", ["started", "first-part", "third-part"])
def test_real_sigint_cancels_and_the_resume_completes_identical(survey, tiny_model, zygote, baseline, tmp_path, moment):
    """Ctrl-C for real: SIGINT sent to a running ``musseltools run`` process (not a ``KeyboardInterrupt``
    raised in a patched model), at moments read from the store: as soon as it holds the lock, after its
    first committed unit, after its third. It exits 130 with a one-line message, the run is marked
    ``cancelled``, whatever is committed is final, and running the same command again completes with
    results identical to an uninterrupted run."""
    base_run = baseline[0]
    store = tmp_path / "store"
    pid, out = zygote.start(_argv(survey, tiny_model, store), cwd=tmp_path)
    want_parts = {"started": 0, "first-part": 1, "third-part": 3}[moment]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        locked = any(store.glob("results/*/.lock.json")) and any(store.glob("runs/*/run.json"))
        if locked and len(_committed_parts(store)) >= want_parts:
            break
        time.sleep(0.002)
    os.kill(pid, signal.SIGINT)
    status = zygote.wait(pid)
    text = out.read_text()
    assert status == {"signal": None, "rc": 130}, text
    assert text.strip().splitlines()[-1].startswith("musseltools: cancelled"), text
    run = _final_run(store)
    assert run.status == "cancelled", (text, run.meta)
    n, n_ok = _check_committed_prefix(store, base_run)
    assert want_parts * COMMIT_EVERY <= n < len(base_run.per_image()), (moment, n)
    assert run.meta["processed_count"] <= n
    again = zygote.run(_argv(survey, tiny_model, store), cwd=tmp_path)
    assert again["rc"] == 0, again["output"]
    final = _final_run(store)
    assert final.status == "completed" and final.meta["inferred_this_call"] == 13 - n_ok
    assert_same_results(final, base_run)
    assert _temporaries(store) == []


def test_worker_processes_die_with_a_killed_run_and_commit_nothing_after_it(tiny_model, zygote, tmp_path):
    """The process of a ``--workers 2`` run SIGKILLed mid-run (the out-of-memory killer, a killed Jupyter
    kernel): its worker processes, their fork server and the resource tracker exit within seconds, none
    commits a part once the run's process is gone, and running again completes with the results of an
    uninterrupted run."""
    frames = tmp_path / "frames"
    write_images(frames, 80, seed=31)
    store = tmp_path / "store"

    def argv(where: Path) -> list[str]:
        return [*_argv(frames, tiny_model, where), "--workers", "2"]

    pid, out = zygote.start(argv(store), cwd=tmp_path)
    deadline = time.monotonic() + 180
    while not _committed_parts(store):  # mid-run: the workers have committed a first unit
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.005)
    family = descendants(pid)
    workers = [p for p in family if p.ppid() != pid]  # forked by the fork server, not by the run's process
    assert len(workers) == 2 and len(family) >= 3, [p.cmdline() for p in family]
    before = set(_committed_parts(store))
    os.kill(pid, signal.SIGKILL)
    try:
        assert zygote.wait(pid)["signal"] == signal.SIGKILL
        dead_at = time.time()  # reaped: every file it held (the pipe its workers watch) is closed
        gone_at, alive = wait_gone(family, timeout=30)
        assert not alive, f"still running 30 s after the run's process was killed: {[p.cmdline() for p in alive]}"
    finally:  # never leave this test's processes behind, whatever failed
        for p in still_alive(family):
            p.kill()
    time.sleep(0.5)  # anything still writing would show now
    parts = _committed_parts(store)
    late = {p.name: round(p.stat().st_ctime - dead_at, 3) for p in parts if p not in before}
    # a part is renamed into place (its ctime) as it is committed: only the units whose commit had begun
    # before the run's process was gone (one per worker at most) may complete, within moments of it
    assert len(late) <= len(workers) and all(s < 0.25 for s in late.values()), late
    assert all(max(p.stat().st_mtime, p.stat().st_ctime) <= gone_at for p in parts)
    assert still_alive(family) == []
    assert len(parts) < 40  # the kill landed mid-run

    done = zygote.run(argv(store), cwd=tmp_path)
    assert done["rc"] == 0, done["output"]
    final = _final_run(store)
    assert final.status == "completed" and final.meta["inferred_this_call"] == 80 - COMMIT_EVERY * len(parts)
    reference = zygote.run(argv(tmp_path / "reference"), cwd=tmp_path)
    assert reference["rc"] == 0, reference["output"]
    assert_same_results(final, _final_run(tmp_path / "reference"))
