"""Comparing two runs: YOLO against YOLO (two versions of one model) and YOLO against Faster R-CNN.

Per-image counts of both runs, agreement (mean difference, limits of agreement, Bland-Altman plot),
totals with bootstrap intervals, the images where they disagree most (the head of the review queue),
``musseltools compare [--json]`` and the report's ``--compare-model`` section.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import IMGSZ, write_images
from tv_models import SMALL, calibrated_net, save_checkpoint, write_sidecar

import musseltools as mt
from musseltools.cli import main
from musseltools.plots.compare import bland_altman, count_scatter
from musseltools.plots.survey import alt_text

T = 0.3


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    monkeypatch.setenv("MUSSELTOOLS_TORCH_THREADS", "1")


@pytest.fixture(scope="module")
def frcnn(tmp_path_factory):
    weights = save_checkpoint(calibrated_net(), tmp_path_factory.mktemp("frcnn") / "frcnn.pt")
    write_sidecar(weights, f"architecture: {SMALL}\n")
    return weights


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_factory, frcnn):
    """One store: two versions of a YOLO model (seeds 0 and 1) and a Faster R-CNN on the same 8 images."""
    root = tmp_path_factory.mktemp("compare")
    folder = root / "images"
    write_images(folder, 8, seed=21)
    kw = {"store": root / "store", "quiet": True, "threshold": T, "batch_size": 1}
    v1 = mt.run(folder, model=model_factory("detect", 0), imgsz=IMGSZ, **kw)
    v2 = mt.run(folder, model=model_factory("detect", 1), imgsz=IMGSZ, **kw)
    rcnn = mt.run(folder, model=frcnn, **kw)
    return root, folder, v1, v2, rcnn


def test_per_image_counts_agreement_and_totals_are_those_of_the_two_runs(runs):
    _, _, v1, v2, _ = runs
    c = mt.compare(v1, v2)
    a, b = v1.per_image().set_index("image_id"), v2.per_image().set_index("image_id")
    assert c.categories == ["live", "dead"] and len(c.images) == 8 and not c.only_a and not c.only_b
    got = c.images.set_index("image_id")
    for cat in c.categories:
        assert (got[f"{cat}_a"] == a.loc[got.index, cat]).all() and (got[f"{cat}_b"] == b.loc[got.index, cat]).all()
        d = (b.loc[got.index, cat] - a.loc[got.index, cat]).to_numpy(float)
        assert (got[f"{cat}_diff"].to_numpy() == d).all()
        row = c.agreement.loc[cat]
        assert row["n"] == 8 and row["mean_difference"] == pytest.approx(d.mean())
        assert row["sd_difference"] == pytest.approx(d.std(ddof=1))
        assert row["loa_low"] == pytest.approx(d.mean() - 1.959964 * d.std(ddof=1), abs=1e-4)
        assert row["loa_high"] == pytest.approx(d.mean() + 1.959964 * d.std(ddof=1), abs=1e-4)
        tot = c.totals.loc[cat]
        assert (tot["a"], tot["b"], tot["difference"]) == (v1.totals[cat], v2.totals[cat], v2.totals[cat] - v1.totals[cat])
        for k in ("a", "b", "difference"):
            assert tot[f"{k}_low"] <= tot[k] <= tot[f"{k}_high"], (cat, k)
    spread = (got[[f"{k}_diff" for k in c.categories]].abs()).sum(axis=1)
    assert (got["disagreement"] == spread).all() and spread.sum() > 0  # the two versions do disagree
    again = mt.compare(v1.run_id, v2.run_id, store=v1.store)  # by id; the bootstrap is seeded
    assert again.totals.equals(c.totals) and again.agreement.equals(c.agreement)
    at = mt.compare(v1, v2, threshold_a=0.6, threshold_b=0.6)
    assert at.run_a["thresholds"] == 0.6 and at.totals.loc["live", "a"] == v1.counts(0.6)["live"]


def test_the_images_that_disagree_most_head_the_review_queue(runs):
    _, _, v1, v2, _ = runs
    c = mt.compare(v1, v2)
    top = c.disagreements(None)
    assert top["disagreement"].is_monotonic_decreasing and (top["disagreement"] > 0).all()
    queue = v1.review_queue(n=None, other=v2)
    assert queue["disagreement"].tolist()[: len(top)] == top["disagreement"].tolist()
    assert set(queue["image_id"].head(len(top))) == set(top["image_id"])  # every disagreeing image, first
    first = top["disagreement"].iloc[0]
    assert set(queue.loc[queue["disagreement"] == first, "image_id"]) == set(top.loc[top["disagreement"] == first,
                                                                                  "image_id"])
    by_id = queue.set_index("image_id")["disagreement"]
    assert (c.images.set_index("image_id")["disagreement"] == by_id.reindex(c.images["image_id"]).to_numpy()).all()
    v1.verify(top["path"].iloc[0])  # checked by hand: out of the queue, still in the comparison
    assert top["image_id"].iloc[0] not in set(v1.review_queue(n=None, other=v2)["image_id"])
    v1.unverify(top["path"].iloc[0])


def test_yolo_against_faster_rcnn_and_figures(runs):
    _, _, v1, _, rcnn = runs
    c = mt.compare(v1, rcnn)
    assert (c.run_a["family"], c.run_b["family"]) == ("ultralytics", "torchvision")
    assert c.run_a["inference_key"] != c.run_b["inference_key"] and c.labels == ("A: tiny-detect-0.pt", "B: frcnn.pt")
    assert len(c.images) == 8
    fig = bland_altman(c)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split(":")[0] for ax in panels] == ["live", "dead"]
    lines = {round(line.get_ydata()[0], 6) for line in panels[0].get_lines()}
    row = c.agreement.loc["live"]
    assert {round(row[k], 6) for k in ("mean_difference", "loa_low", "loa_high")} <= lines
    assert "difference of counts (B − A)" in alt_text(fig) and "mean of the two counts per image" in alt_text(fig)
    assert len(panels[0].collections[0].get_offsets()) == 8  # one point per image
    assert "count by A: tiny-detect-0.pt" in alt_text(count_scatter(c))


def test_runs_without_common_images_or_categories_are_refused(runs, model_factory, tmp_path):
    root, folder, v1, _, _ = runs
    renamed = mt.run(folder, model=model_factory("detect", 0), imgsz=IMGSZ, store=root / "store", quiet=True,
                     class_map={"live": "alive", "dead": "gone"})
    with pytest.raises(mt.MusselToolsError, match=r"share no category .*\(--class-map NAME=CATEGORY\)"):
        mt.compare(v1, renamed)
    elsewhere = tmp_path / "elsewhere"
    write_images(elsewhere, 2, seed=99)
    other = mt.run(elsewhere, model=model_factory("detect", 0), imgsz=IMGSZ, store=root / "store", quiet=True)
    with pytest.raises(mt.MusselToolsError, match="no image with a result in both"):
        mt.compare(v1, other)


def test_compare_command_prints_a_summary_and_one_json_object(runs, capsys, tmp_path):
    root, _, v1, v2, _ = runs
    store = str(root / "store")
    plot = tmp_path / "ba.png"
    assert main(["compare", v1.run_id, v2.run_id, "--store", store, "--top", "3", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert f"run A {v1.run_id} (tiny-detect-0.pt, ultralytics) against run B {v2.run_id}" in out
    assert "8 images with results in both" in out and "differences are B − A" in out
    for heading in ("agreement per image (95% limits of agreement)", "survey totals (95% bootstrap intervals",
                    "images where the two disagree most"):
        assert heading in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["compare", v1.run_id, v2.run_id, "--store", store, "--json", "--top", "3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"run_a", "run_b", "difference", "categories", "images_compared", "only_in_a", "only_in_b",
                        "level", "n_boot", "agreement", "totals", "disagreements", "images"}
    assert doc["difference"] == "b - a" and doc["images_compared"] == len(doc["images"]) == 8
    assert set(doc["run_a"]) == {"run_id", "model", "family", "fingerprint", "inference_key", "thresholds"}
    assert set(doc["agreement"]["live"]) == {"n", "mean_a", "mean_b", "mean_difference", "sd_difference", "loa_low",
                                             "loa_high", "mean_abs_difference"}
    assert doc["agreement"]["live"]["n"] == 8 and isinstance(doc["totals"]["live"]["a"], int)
    assert doc["totals"]["dead"]["b"] == v2.totals["dead"]
    top = doc["disagreements"]
    assert 0 < len(top) <= 3 and [d["disagreement"] for d in top] == sorted((d["disagreement"] for d in top),
                                                                         reverse=True)
    image = top[0]
    assert image["disagreement"] == sum(abs(image["counts_b"][k] - image["counts_a"][k]) for k in doc["categories"])
    assert main(["compare", v1.run_id, "nope", "--store", store]) == 1
    assert "nope" in capsys.readouterr().err


def test_report_compares_a_second_model(runs, model_factory, frcnn, tmp_path):
    root, folder, v1, _, rcnn = runs
    html = mt.report(folder, model=model_factory("detect", 0), compare_model=frcnn, imgsz=IMGSZ, threshold=T,
                     store=root / "store", out=tmp_path / "out", n_samples=1, batch_size=1).read_text()
    text = re.sub(r"<[^>]+>", "", html)
    assert "Comparison with a second model" in text and "Agreement per image" in text
    assert f"Run A {v1.run_id}" in text and f"run B {rcnn.run_id}" in text  # the runs made above: nothing inferred
    assert "torchvision" in text and "Images where the two disagree most" in text
    assert 'alt="Figure: Agreement per image, 8 images' in html
    plain = mt.report(folder, model=model_factory("detect", 0), imgsz=IMGSZ, threshold=T, store=root / "store",
                      out=tmp_path / "plain", n_samples=1, batch_size=1).read_text()
    assert "No second model was given" in plain
    assert np.isfinite(mt.compare(v1, rcnn).agreement["mean_difference"]).all()


def test_total_intervals_are_a_paired_bootstrap_over_images(runs):
    """One run at two thresholds: counts that rise and fall together over images. The interval of B − A is
    that of a paired bootstrap computed here (each image drawn with both its counts), far narrower than
    resampling A's and B's images independently would give."""
    _, _, v1, _, _ = runs
    c = mt.compare(v1, v1, threshold_a=T, threshold_b=0.5, n_boot=20000, seed=3)
    rng = np.random.default_rng(11)
    for cat in c.categories:
        a, b = c.images[f"{cat}_a"].to_numpy(float), c.images[f"{cat}_b"].to_numpy(float)
        n = len(a)
        draw, other = rng.integers(0, n, (20000, n)), rng.integers(0, n, (20000, n))
        paired = np.quantile(b[draw].sum(axis=1) - a[draw].sum(axis=1), [0.025, 0.975])
        unpaired = np.quantile(b[draw].sum(axis=1) - a[other].sum(axis=1), [0.025, 0.975])
        tot = c.totals.loc[cat]
        got = np.array([tot["difference_low"], tot["difference_high"]])
        width = paired[1] - paired[0]
        assert np.abs(got - paired).max() <= 0.1 * width + 1, (cat, got, paired)  # Monte Carlo error only
        assert got[1] - got[0] < 0.6 * (unpaired[1] - unpaired[0]), (cat, got, unpaired)
        for k, x in (("a", a), ("b", b)):
            ref = np.quantile(x[draw].sum(axis=1), [0.025, 0.975])
            assert abs(tot[f"{k}_low"] - ref[0]) <= 0.1 * (ref[1] - ref[0]) + 1, (cat, k)
            assert abs(tot[f"{k}_high"] - ref[1]) <= 0.1 * (ref[1] - ref[0]) + 1, (cat, k)


def test_compare_model_only_leaves_hand_corrections_out(runs, capsys):
    root, _, v1, v2, _ = runs
    store = str(root / "store")
    live = v1.detections().query("class_name == 'live'").iloc[0]
    fix = v1.reclassify(live.detection_id, "dead")
    try:
        assert main(["compare", v1.run_id, v2.run_id, "--store", store, "--json"]) == 0
        corrected = json.loads(capsys.readouterr().out)
        assert main(["compare", v1.run_id, v2.run_id, "--store", store, "--json", "--model-only"]) == 0
        model = json.loads(capsys.readouterr().out)
        models_alone = v1.counts(corrected=False)
        assert corrected["totals"]["live"]["a"] == models_alone["live"] - 1 == v1.counts()["live"]
        assert (model["totals"]["live"]["a"], model["totals"]["dead"]["a"]) == (models_alone["live"],
                                                                                models_alone["dead"])
        changed = [i for i in model["images"] if i["image_id"] == live.image_id]
        assert changed[0]["counts_a"]["live"] == next(
            i for i in corrected["images"] if i["image_id"] == live.image_id)["counts_a"]["live"] + 1
    finally:
        v1.undo(fix)
    assert v1.counts() == v1.counts(corrected=False)


def test_runs_that_overlap_partly_are_compared_on_their_shared_images(model_factory, tmp_path, capsys):
    import shutil

    first, second = tmp_path / "first", tmp_path / "second"
    shared = write_images(first, 4, seed=8)[2:]  # images 2 and 3 are in both folders
    write_images(second, 2, seed=9, start=10)
    for p in shared:
        shutil.copy(p, second / p.name)
    kw = {"model": model_factory("detect", 0), "imgsz": IMGSZ, "store": tmp_path / "store", "quiet": True,
          "threshold": T, "batch_size": 1}
    a, b = mt.run(first, **kw), mt.run(second, **kw)
    ids_a, ids_b = set(a.per_image()["image_id"]), set(b.per_image()["image_id"])
    both = ids_a & ids_b
    assert len(both) == 2 and len(ids_a) == len(ids_b) == 4
    c = mt.compare(a, b)
    assert set(c.images["image_id"]) == both and len(c.images) == 2
    assert c.only_a == sorted(ids_a - both) and c.only_b == sorted(ids_b - both)  # the others, by id
    per_a = a.per_image().set_index("image_id").loc[sorted(both)]
    assert c.totals.loc["live", "a"] == per_a["live"].sum()  # totals over the shared images only
    assert (c.images["live_diff"] == 0).all()  # the same model on the same pictures
    assert main(["compare", a.run_id, b.run_id, "--store", str(tmp_path / "store"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["images_compared"], doc["only_in_a"], doc["only_in_b"]) == (2, 2, 2)
    assert {i["image_id"] for i in doc["images"]} == both
    assert main(["compare", a.run_id, b.run_id, "--store", str(tmp_path / "store")]) == 0
    assert "2 images with results in both (2 only in A, 2 only in B)" in capsys.readouterr().out
