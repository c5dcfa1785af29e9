"""Comparing two runs: YOLO against YOLO (two versions of one model) and YOLO against Faster R-CNN.

Per-image counts of both runs, agreement (mean difference, limits of agreement, Bland-Altman plot),
totals with bootstrap intervals, the images where they disagree most (the head of the review queue),
``musseltools compare [--json]`` and the report's ``--compare-model`` section.
"""

from __future__ import annotations

import html as html_lib
import json
import math
import re
import warnings

import numpy as np
import pandas as pd
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


@pytest.mark.slow
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
    assert c.run_a["inference_key"] != c.run_b["inference_key"] and c.labels == (f"A: tiny-detect-0.pt (run {v1.run_id})",
                                                                                 f"B: frcnn.pt (run {rcnn.run_id})")
    assert len(c.images) == 8
    fig = bland_altman(c)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split(":")[0] for ax in panels] == ["live", "dead"]
    lines = {round(line.get_ydata()[0], 6) for line in panels[0].get_lines()}
    row = c.agreement.loc["live"]
    assert {round(row[k], 6) for k in ("mean_difference", "loa_low", "loa_high")} <= lines
    assert "difference of counts (B − A)" in alt_text(fig) and "mean of the two counts per image" in alt_text(fig)
    assert len(panels[0].collections[0].get_offsets()) == 8  # one point per image
    assert f"count by A: tiny-detect-0.pt (run {v1.run_id})" in alt_text(count_scatter(c))


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
                        "level", "n_boot", "agreement", "totals", "disagreements", "images", "settings_differ"}
    assert doc["difference"] == "b - a" and doc["images_compared"] == len(doc["images"]) == 8
    assert set(doc["run_a"]) == {"run_id", "model", "family", "fingerprint", "inference_key", "thresholds",
                                 "settings"}
    assert set(doc["settings_differ"]) == {"weights"}  # two versions of one model, run alike
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


@pytest.mark.slow
def test_report_compares_a_second_model(runs, model_factory, frcnn, tmp_path):
    root, folder, v1, _, rcnn = runs
    html = mt.report(folder, model=model_factory("detect", 0), compare_model=frcnn, imgsz=IMGSZ, threshold=T,
                     store=root / "store", out=tmp_path / "out", n_samples=1, batch_size=1).read_text()
    text = html_lib.unescape(re.sub(r"<[^>]+>", "", html))
    assert "Comparison with a second model" in text and "Agreement per image" in text
    other = mt.list_runs(store=root / "store").query("run_id not in @known", local_dict={
        "known": {r.run_id for r in runs[2:]}})
    b = mt.open_run(next(i for i in other.run_id if mt.open_run(i, store=root / "store").meta["model"]["family"]
                         == "torchvision"), store=root / "store")
    # B ran with A's settings (the Faster R-CNN has no card): A's NMS IoU, not its family's own 0.5
    assert b.meta["settings"]["iou"] == v1.meta["settings"]["iou"] == 0.7 and b.thresholds == T
    assert rcnn.meta["settings"]["iou"] == 0.5
    assert f"Run A {v1.run_id}" in text and f"run B {b.run_id}" in text
    assert "torchvision" in text and "Images where the two disagree most" in text
    differ = text.index("What differs between the two runs")  # every setting that differs, before any figure
    assert differ < text.index("Agreement per image") and differ < html_lib.unescape(html).index("<img")
    assert re.search(r"<th>family</th>\s*<td>ultralytics</td>\s*<td>torchvision</td>", html)
    assert 'alt="Figure: Agreement per image, 8 images' in html and f"(run {b.run_id})" in html_lib.unescape(html)
    plain = mt.report(folder, model=model_factory("detect", 0), imgsz=IMGSZ, threshold=T, store=root / "store",
                      out=tmp_path / "plain", n_samples=1, batch_size=1).read_text()
    assert "Comparison" not in plain and "second model" not in plain  # no comparison text without one
    assert np.isfinite(mt.compare(v1, rcnn).agreement["mean_difference"]).all()


def test_the_same_weights_under_another_name_differ_by_zero(model_factory, tmp_path, capsys):
    """`report --compare-model` with a copy of A's weights without its card: B runs with A's settings and
    thresholds (A's came from A's card), so every difference is zero and no setting differs."""
    import shutil

    from musseltools.models.card import read_card, settings_after

    folder = tmp_path / "images"
    write_images(folder, 4, seed=23)
    a_weights = tmp_path / "mussel.pt"
    shutil.copy(model_factory("detect", 0), a_weights)
    a_weights.with_suffix(".yaml").write_text(
        "recommended:\n  threshold: {live: 0.2, dead: 0.4}\n  iou: 0.5\n  tile_overlap: 0.1\n"
        "how:\n  threshold: tuned on held-out frames\n")
    b_weights = tmp_path / "mussel-v2.pt"
    shutil.copy(a_weights, b_weights)  # same bytes, no card
    kw = {"store": tmp_path / "store", "quiet": True, "batch_size": 1}
    a = mt.run(folder, model=a_weights, imgsz=IMGSZ, **kw)
    assert a.meta["settings"]["iou"] == 0.5 and a.thresholds == {"live": 0.2, "dead": 0.4}
    options = settings_after(a.meta["settings"], a.thresholds, read_card(b_weights), same_family=True)
    b = mt.run(folder, model=b_weights, **options, **kw)
    assert b.meta["settings"] == a.meta["settings"] and b.thresholds == a.thresholds
    c = mt.compare(a, b)
    assert c.differences.empty and (c.images[[f"{k}_diff" for k in c.categories]] == 0).all().all()
    assert sum(a.counts().values()) > 0  # zero differences of real counts
    assert main(["compare", a.run_id, b.run_id, "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert "thresholds: A live=0.2, dead=0.4, B live=0.2, dead=0.4" in out and "the same weights, settings" in out
    # a card on B's weights sets B's thresholds and iou: those, and only those, differ, and are shown
    b_weights.with_suffix(".yaml").write_text("recommended:\n  threshold: 0.6\n  iou: 0.7\n")
    options = settings_after(a.meta["settings"], a.thresholds, read_card(b_weights), same_family=True)
    b2 = mt.run(folder, model=b_weights, **options, **kw)
    c2 = mt.compare(a, b2)
    assert c2.differences.to_dict(orient="index") == {"thresholds": {"a": "live=0.2, dead=0.4", "b": "0.6"},
                                                      "iou": {"a": "0.5", "b": "0.7"}}
    assert main(["compare", a.run_id, b2.run_id, "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert out.index("what differs besides the counts") < out.index("agreement per image")
    assert re.search(r"thresholds\s+live=0.2, dead=0.4\s+0.6", out) and re.search(r"iou\s+0.5\s+0.7", out)
    assert f"A {a.run_id}" in out and f"B {b2.run_id}" in out
    heading = alt_text(bland_altman(c2))
    for shown in (f"A: mussel.pt (run {a.run_id})", f"B: mussel-v2.pt (run {b2.run_id})", "thresholds 0.6",
                  "thresholds live=0.2, dead=0.4", "iou: A 0.5, B 0.7"):
        assert shown in heading, shown
    assert "B: mussel-v2.pt minus" not in heading


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


# --------------------------------------------------------- hand-built runs: the comparison's arithmetic
# Runs whose per-image counts are given as tables (no model, no store): the tests that judge
# evaluation/compare.py in mutation testing (`-k hand_built`, docs/testing.md).
class TableRun(mt.Run):
    """A run whose per-image counts are a table; records what compare asked of it."""

    def __init__(self, run_id, rows, categories=("live", "dead"), model="/models/m.pt", family=None):
        self.run_id, self._categories, self.asked = run_id, list(categories), []
        self._rows = pd.DataFrame(rows, columns=["image_id", "path", *categories, "error", "processed_at"])
        self._meta = {"model": {"path": model, "fingerprint": f"fp-{run_id}",
                                "names": {str(i): c for i, c in enumerate(categories)}},
                      "inference_key": f"key-{run_id}", "threshold": 0.5, "settings": {"conf_floor": 0.01}}
        if family:
            self._meta["model"]["family"] = family

    @property
    def meta(self):
        return self._meta

    @property
    def categories(self):
        return self._categories

    def per_image(self, threshold=None, *, corrected=True):
        self.asked.append((threshold, corrected))
        rows = self._rows.copy()
        if not corrected:  # "the model alone" counts one live more everywhere
            rows["live"] += 1
        return rows


def hand_built_pair():
    """A: five images with results (one of them failed in B) and one not processed; B: one more image."""
    t = "2026-12-07T10:00:00Z"
    a = TableRun("ra", [("x3", "/s/c.jpg", 3, 1, None, t), ("x1", "/s/a.jpg", 0, 2, None, t),
                        ("x2", "/s/b.jpg", 5, 0, None, t), ("x4", "/s/d.jpg", 2, 2, None, t),
                        ("x5", "/s/e.jpg", 1, 1, None, t), ("x9", "/s/z.jpg", 0, 0, None, None)])
    b = TableRun("rb", [("x1", "/s/a.jpg", 1, 2, 0, None, t), ("x2", "/s/b.jpg", 2, 1, 0, None, t),
                        ("x3", "/s/c.jpg", 3, 1, 4, None, t), ("x4", "/s/d.jpg", 4, 0, 0, None, t),
                        ("x5", "/s/e.jpg", 0, 0, 0, "decode failed", t), ("x7", "/s/g.jpg", 1, 1, 0, None, t)],
                 categories=("live", "dead", "empty"), model="/models/other.pt", family="torchvision")
    return a, b


def test_hand_built_per_image_differences_agreement_and_paired_totals():
    from musseltools.evaluation.calibration import bootstrap_sums

    a, b = hand_built_pair()
    c = mt.compare(a, b, level=0.9, n_boot=37, seed=3)
    assert c.categories == ["live", "dead"] and (c.only_a, c.only_b) == (["x5"], ["x7"])
    assert list(c.images.columns) == ["image_id", "path", "live_a", "live_b", "live_diff", "dead_a", "dead_b",
                                      "dead_diff", "disagreement"]
    assert (c.images.drop(columns=["image_id", "path"]).dtypes == "int64").all()
    assert c.images["path"].tolist() == ["/s/a.jpg", "/s/b.jpg", "/s/c.jpg", "/s/d.jpg"]  # in path order
    assert c.images["live_diff"].tolist() == [1, -3, 0, 2] and c.images["dead_diff"].tolist() == [0, 1, 0, -2]
    assert c.images["disagreement"].tolist() == [1, 4, 0, 4]
    # agreement at level 0.9: z = 1.6449
    z = 1.6448536269514722
    d = np.array([1, -3, 0, 2], float)
    live = c.agreement.loc["live"]
    assert live["n"] == 4 and live["mean_a"] == 2.5 and live["mean_b"] == 2.5
    assert live["mean_difference"] == 0 and live["sd_difference"] == pytest.approx(d.std(ddof=1))
    assert (live["loa_low"], live["loa_high"]) == pytest.approx((-z * d.std(ddof=1), z * d.std(ddof=1)))
    assert live["mean_abs_difference"] == 1.5 and c.agreement.loc["dead", "mean_difference"] == pytest.approx(-0.25)
    # totals: the paired bootstrap of the four images (A's and B's counts drawn together), 5%-95%
    counts = c.images[["live_a", "dead_a", "live_b", "dead_b"]].to_numpy(np.float64)
    boot = bootstrap_sums(counts, 37, np.random.default_rng(3))
    assert c.totals.loc["live", ["a", "b", "difference"]].tolist() == [10, 10, 0]
    for name, draws in (("a", boot[:, 1]), ("b", boot[:, 3]), ("difference", boot[:, 3] - boot[:, 1])):
        lo, hi = np.quantile(draws, (0.05, 0.95))
        assert (c.totals.at["dead", f"{name}_low"], c.totals.at["dead", f"{name}_high"]) == pytest.approx((lo, hi))
    assert (c.level, c.n_boot) == (0.9, 37)
    # the defaults: level 0.95, 2000 resamples, seed 0
    d95 = mt.compare(a, b)
    boot = bootstrap_sums(counts, 2000, np.random.default_rng(0))
    assert (d95.level, d95.n_boot) == (0.95, 2000)
    assert d95.totals.at["live", "b_low"] == pytest.approx(np.quantile(boot[:, 2], 0.025))
    assert d95.agreement.at["live", "loa_high"] == pytest.approx(1.959963984540054 * d.std(ddof=1))


def test_hand_built_paired_difference_interval_and_one_image():
    # B counts one more live than A on every image: the paired interval of the difference is exactly n
    t = "2026-12-07T10:00:00Z"
    rows = [(f"x{i:02d}", f"/s/{i:02d}.jpg", i % 4, 0, None, t) for i in range(12)]
    a = TableRun("ra", rows)
    b = TableRun("rb", [(i, p, live + 1, dead, e, w) for i, p, live, dead, e, w in rows])
    c = mt.compare(a, b, n_boot=200)
    assert c.totals.loc["live", ["difference", "difference_low", "difference_high"]].tolist() == [12, 12.0, 12.0]
    # every image disagrees: ten of them by default, with the columns of the images table
    assert len(c.disagreements()) == 10 and len(c.to_json()["disagreements"]) == 10
    assert list(c.disagreements().columns) == list(c.images.columns)
    # two images: a spread and limits of agreement
    two = mt.compare(TableRun("ra", rows[:2]), TableRun("rb", b._rows.iloc[:2].values.tolist()))
    assert two.agreement.at["live", "sd_difference"] == 0.0
    assert c.totals.at["live", "a_low"] < c.totals.at["live", "a"] < c.totals.at["live", "a_high"]
    # one image: no spread, so no limits of agreement (None in the JSON), and no numpy warning about it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = mt.compare(TableRun("ra", rows[:1]), TableRun("rb", b._rows.iloc[:1].values.tolist()))
    assert one.agreement.at["live", "n"] == 1 and math.isnan(one.agreement.at["live", "sd_difference"])
    doc = one.to_json()
    assert doc["agreement"]["live"]["sd_difference"] is None and doc["agreement"]["live"]["loa_low"] is None
    assert doc["agreement"]["live"]["mean_difference"] == 1.0


def test_hand_built_disagreements_json_and_what_was_compared():
    a, b = hand_built_pair()
    c = mt.compare(a, b, threshold_a=0.4, threshold_b={"live": 0.6}, n_boot=50)
    assert a.asked == [(0.4, True)] and b.asked == [({"live": 0.6}, True)]
    assert c.labels == ("A: m.pt (run ra)", "B: other.pt (run rb)")
    assert c.run_a == {"run_id": "ra", "model": "/models/m.pt", "family": "ultralytics", "fingerprint": "fp-ra",
                       "inference_key": "key-ra", "thresholds": 0.4, "settings": {"conf_floor": 0.01}}
    assert c.run_b["family"] == "torchvision" and c.run_b["thresholds"] == {"live": 0.6, "dead": 0.5, "empty": 0.5}
    top = c.disagreements()
    assert top["path"].tolist() == ["/s/b.jpg", "/s/d.jpg", "/s/a.jpg"]  # 4, 4 (by path), 1; none of 0
    assert c.disagreements(2)["image_id"].tolist() == ["x2", "x4"] and len(c.disagreements(None)) == 3
    doc = c.to_json(top=1)
    json.dumps(doc, allow_nan=False)
    assert {k: doc[k] for k in ("difference", "categories", "images_compared", "only_in_a", "only_in_b", "level",
                                "n_boot")} == {"difference": "b - a", "categories": ["live", "dead"],
                                               "images_compared": 4, "only_in_a": 1, "only_in_b": 1, "level": 0.95,
                                               "n_boot": 50}
    assert doc["run_a"] == c.run_a and doc["run_b"] == c.run_b
    assert doc["disagreements"] == [{"image_id": "x2", "path": "/s/b.jpg", "counts_a": {"live": 5, "dead": 0},
                                     "counts_b": {"live": 2, "dead": 1}, "disagreement": 4}]
    assert [i["image_id"] for i in doc["images"]] == ["x1", "x2", "x3", "x4"]
    assert doc["agreement"]["live"] == {k: (int(v) if k == "n" else float(v))
                                        for k, v in c.agreement.loc["live"].items()}
    assert doc["totals"]["dead"]["a"] == 5 and type(doc["totals"]["dead"]["a"]) is int
    assert len(doc["disagreements"]) == 1 and len(c.to_json()["disagreements"]) == 3  # top 10 by default
    # the models alone
    c = mt.compare(a, b, corrected=False, n_boot=50)
    assert a.asked[-1] == b.asked[-1] == (None, False) and c.images["live_a"].tolist() == [1, 6, 4, 3]


def test_hand_built_compare_refuses_what_it_cannot_compare():
    a, b = hand_built_pair()
    for level in (0, 1, 1.5):
        with pytest.raises(ValueError, match=rf"level {level!r} is not a coverage — expected a number in \(0, 1\)"):
            mt.compare(a, b, level=level)
    other = TableRun("rc", [("x1", "/s/a.jpg", 1, None, "t")], categories=("mussel",))
    with pytest.raises(mt.MusselToolsError) as e:
        mt.compare(a, other)
    assert ("runs ra and rc share no category (A counts ['live', 'dead'], B counts ['mussel']) — expected at least "
            "one category in common — give one model a class map (--class-map NAME=CATEGORY) onto the other's "
            "categories") == str(e.value)
    apart = TableRun("rd", [("y1", "/t/a.jpg", 1, 1, None, "t")])
    with pytest.raises(mt.MusselToolsError) as e:
        mt.compare(a, apart)
    assert ("runs ra and rd have no image with a result in both (5 and 1 images with results) — expected two runs "
            "over the same images — run the second model on the first run's images") == str(e.value)
