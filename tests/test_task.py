"""The unit task: picklable, loads its model lazily where it runs, commits what an in-process run commits."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import pandas as pd
import pytest
from conftest import IMGSZ

import musseltools as mt
from musseltools.executors.planning import ImageRef, make_units
from musseltools.executors.task import RunTask
from musseltools.images.collection import scan
from musseltools.models import InferenceSettings, load_model
from musseltools.store.store import Store


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    monkeypatch.setenv("MUSSELTOOLS_TORCH_THREADS", "1")


def _unit_of(images, key):
    coll = scan(images)
    todo = coll.images.sort_values("image_id", kind="stable")
    refs = [ImageRef(r.image_id, r.path, r.fspath, None) for r in todo.itertuples(index=False)]
    [unit] = make_units(refs, key, 100)  # one unit: the same images and key as the engine's below
    return unit


def _task(run, store, model, **kw):
    meta = run.meta
    settings = InferenceSettings(**meta["settings"])
    return RunTask(store=store, model=model, settings=settings, inference_key=meta["inference_key"],
                   thresholds=kw.pop("thresholds", 0.5), threshold=0.5, batch_size=1, **kw)


def _part(store: Store, key: str, unit_key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    base = store.results_dir(key)
    images = pd.read_parquet(base / "images" / f"part-{unit_key}.parquet").drop(columns="processed_at")
    dets = pd.read_parquet(base / "detections" / f"part-{unit_key}.parquet")
    dets["polygon"] = dets["polygon"].map(lambda p: [list(xy) for xy in p])
    return images, dets


@pytest.mark.slow
def test_a_pickled_task_runs_a_unit_in_a_spawned_process_like_an_in_process_run(tmp_path, images, tiny_model):
    run = mt.run(images, model=tiny_model, imgsz=IMGSZ, commit_every=100, store=tmp_path / "a", quiet=True)
    key = run.meta["inference_key"]
    unit = _unit_of(images, key)

    task = _task(run, Store(tmp_path / "b"), load_model(tiny_model))
    task.predictor  # noqa: B018 - built here: neither it nor the model may travel
    state = task.__getstate__()
    assert not any(k.startswith("_") for k in state), "runtime state (lock, model, predictor) is not pickled"
    data = pickle.dumps(task)
    assert len(data) < 20_000  # plain settings, no weights
    clone = pickle.loads(data)
    assert clone.info == task.info and clone.settings == task.settings and clone.batch_size == 1

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        summary = pool.submit(clone, unit).result(timeout=600)

    assert summary.key == unit.key and summary.n_images == 6 and summary.n_failed == 0
    assert summary.counts == run.counts(0.5)
    images_a, dets_a = _part(run.store, key, unit.key)
    images_b, dets_b = _part(Store(tmp_path / "b"), key, unit.key)
    pd.testing.assert_frame_equal(images_a, images_b)
    pd.testing.assert_frame_equal(dets_a, dets_b, check_exact=False, atol=1e-4)


def test_a_task_loads_its_model_lazily_and_only_from_the_recorded_bytes(tmp_path, images, model_factory):
    weights = tmp_path / "model.pt"
    weights.write_bytes(model_factory("detect", 0).read_bytes())
    run = mt.run(images, model=weights, imgsz=IMGSZ, store=tmp_path / "a", quiet=True)
    task = pickle.loads(pickle.dumps(_task(run, tmp_path / "b", load_model(weights).info)))
    weights.write_bytes(model_factory("detect", 1).read_bytes())  # swapped after the run recorded its SHA-256
    from musseltools.executors.task import PREDICTORS

    PREDICTORS.clear()  # as in a worker process that has not built this model yet
    with pytest.raises(mt.ModelChangedError, match="changed"):
        task(_unit_of(images, run.meta["inference_key"]))


def test_committed_counts_follow_the_thresholds_rule(tmp_path, images, tiny_model):
    """A class the thresholds leave out keeps the run's threshold, as in every view."""
    run = mt.run(images, model=tiny_model, imgsz=IMGSZ, commit_every=100, store=tmp_path / "a", quiet=True)
    task = _task(run, tmp_path / "b", load_model(tiny_model), thresholds={"live": 0.3})
    summary = task(_unit_of(images, run.meta["inference_key"]))
    assert summary.counts == run.counts({"live": 0.3}) == {"live": run.counts(0.3)["live"],
                                                            "dead": run.counts(0.5)["dead"]}


# ---------------------------------------------------------------- planning (mutation testing, docs/testing.md)
def test_units_cut_images_in_order_with_keys_from_their_ids_only():
    from musseltools.executors.planning import sub_unit, unit_key

    refs = [ImageRef(f"id{i}", f"{i}.jpg", f"/d/{i}.jpg") for i in range(5)]
    units = make_units(refs, "k", 2)
    assert [[r.image_id for r in u.images] for u in units] == [["id0", "id1"], ["id2", "id3"], ["id4"]]
    assert [u.size for u in units] == [2, 2, 1]
    assert [u.key for u in units] == [unit_key("k", ["id0", "id1"]), unit_key("k", ["id2", "id3"]),
                                      unit_key("k", ["id4"])]
    # the key a redone unit writes its part under: documented formula, any order of ids
    assert unit_key("k", ["b", "a"]) == unit_key("k", ["a", "b"])
    assert make_units([ImageRef("a", "a.jpg", "a.jpg")], "k", 32)[0].key == "571bc511d13998aa4301"
    assert unit_key("k2", ["a"]) != unit_key("k", ["a"]) != unit_key("k", ["a", "b"])
    part = sub_unit(units[0], ["id1", "zz"], "k")
    assert [r.image_id for r in part.images] == ["id1"] and part.key == unit_key("k", ["id1"])
    assert make_units([], "k", 2) == []


def test_run_ids_follow_what_the_researcher_asks_and_stay_those_of_existing_runs():
    from musseltools.executors.planning import make_run_id

    s = InferenceSettings()
    base = make_run_id("coll", "m.pt", 0.5, s)
    assert base == "f4b4cae5dc0f"  # ids of existing runs must not change: they resume
    assert make_run_id("coll", "m.pt", 0.5 + 1e-9, s) == base  # rounded to 6 decimals
    assert make_run_id("coll", "m.pt", 0.5, s, family="ultralytics") == base
    assert make_run_id("coll", "m.pt", 0.5, s, class_map={}) == base
    others = [make_run_id("coll2", "m.pt", 0.5, s), make_run_id("coll", "n.pt", 0.5, s),
              make_run_id("coll", "m.pt", 0.51, s), make_run_id("coll", "m.pt", 0.5, InferenceSettings(iou=0.5)),
              make_run_id("coll", "m.pt", 0.5, s, {"live": "m"}), make_run_id("coll", "m.pt", 0.5, s, family="tv"),
              make_run_id("coll", "m.pt", {"live": 0.5}, s), make_run_id("coll", "m.pt", 0.5001, s),
              make_run_id("coll", "m.pt", {"live": 0.5001}, s)]
    assert len({base, *others}) == 1 + len(others)
    per_class = make_run_id("coll", "m.pt", {"live": 0.5, "dead": 0.6}, s, {"live": "m", "dead": "s"}, "torchvision")
    assert per_class == "8dc152fdad46"
    assert make_run_id("coll", "m.pt", {"dead": 0.6, "live": 0.5000000001}, s, {"dead": "s", "live": "m"},
                       "torchvision") == per_class  # any order of keys
