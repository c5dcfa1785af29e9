"""Coverage of the survey intervals: how often a 95% interval holds the true value, over seeded synthetic
surveys with known truth (issue 23's "done when": at least 90% of 50 surveys).

Two parts:

- ``design``: surveys of :func:`musseltools.synth.survey.draw_survey` (4 sites, 2 dates, 5 images per site
  and date; and 4 sites of 3 images), true counts per image. Coverage of the density (live, dead, all)
  and of the dead fraction per group (site and date: 5 images; site: 10; site: 3) against the sites'
  true values, for :func:`musseltools.survey.estimate.group_estimates` with its t interval and with the
  percentile bootstrap; and of the differences between sites (:func:`musseltools.survey.glm.compare_groups`,
  against site S1: total density and dead fraction).
- ``detector``: surveys of 20 generated frames (416x320) inferred with the demo detector
  (data/models/mussel-demo.pt, its card's settings) in one ``musseltools.run``; truth on 5 random frames
  per survey. Coverage of the corrected survey totals (live, dead) and live fraction of
  :func:`musseltools.evaluation.calibration.survey_totals` against the true totals of the 20 frames: the
  t interval without (the default) and with the finite population correction, and the percentile bootstrap
  it replaced. An interval that is not estimable (NaN: the detector exactly right on all 5 frames) counts as
  a miss.

    python benchmarks/survey_coverage.py                 # both parts, 50 surveys each
    python benchmarks/survey_coverage.py --part design --surveys 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = ROOT / "data" / "models" / "mussel-demo.pt"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from musseltools.evaluation.calibration import bootstrap_sums, survey_totals  # noqa: E402
from musseltools.survey.estimate import group_estimates  # noqa: E402
from musseltools.survey.glm import compare_groups  # noqa: E402
from musseltools.synth.survey import draw_survey  # noqa: E402

LEVEL = 0.95
#: (label, sites, dates, images per site and date, group columns)
DESIGNS = [("site x date, 5 images", 4, 2, 5, ["site", "date"]), ("site, 10 images", 4, 2, 5, ["site"]),
           ("site, 3 images", 4, 1, 3, ["site"])]


def design_part(surveys: int, n_boot: int) -> pd.DataFrame:
    """Coverage and median relative width per design, interval and quantity."""
    hits = []
    for label, sites, dates, per, by in DESIGNS:
        for s in range(surveys):
            images, truth = draw_survey(sites, dates, per, seed=10_000 + s)
            images["all"] = images["live"] + images["dead"]
            t = truth.set_index("site")
            true = {"all": t["density_m2"], "live": t["density_m2"] * (1 - t["dead_fraction"]),
                    "dead": t["density_m2"] * t["dead_fraction"]}
            for interval in ("t", "bootstrap"):
                dens = group_estimates(images, by, ["all", "live", "dead"], interval=interval, n_boot=n_boot, seed=s)
                frac = group_estimates(images, by, ["live", "dead"], interval=interval, n_boot=n_boot, seed=s)
                for row in dens.itertuples(index=False):
                    hits.append(_hit(label, interval, f"density {row.category}", true[row.category][row.site],
                                     row.density_low, row.density_high))
                for row in frac[frac["category"] == "dead"].itertuples(index=False):
                    hits.append(_hit(label, interval, "dead fraction", t.at[row.site, "dead_fraction"],
                                     row.fraction_low, row.fraction_high))
                if by == ["site"]:  # differences against site S1 (compare_groups)
                    cmp = compare_groups(images, "site", ["live", "dead"], reference="S1", interval=interval,
                                         n_boot=n_boot, seed=s)
                    truth_of = {"density total": t["density_m2"], "dead fraction": t["dead_fraction"]}
                    for row in cmp.differences.itertuples(index=False):
                        if row.quantity in truth_of:
                            v = truth_of[row.quantity]
                            hits.append(_hit(label, interval, f"difference, {row.quantity}", v[row.site] - v["S1"],
                                             row.low, row.high))
    return _summary(pd.DataFrame(hits))


def _hit(design: str, interval: str, quantity: str, truth: float, low: float, high: float) -> dict:
    return {"design": design, "interval": interval, "quantity": quantity, "covered": bool(low <= truth <= high),
            "estimable": bool(np.isfinite(low) and np.isfinite(high)), "rel_width": (high - low) / abs(truth)}


def _summary(hits: pd.DataFrame) -> pd.DataFrame:
    g = hits.groupby(["design", "quantity", "interval"], sort=False)
    return pd.DataFrame({"intervals": g.size(), "coverage": g["covered"].mean(), "estimable": g["estimable"].mean(),
                         "median_rel_width": g["rel_width"].median()}).reset_index()


def _percentile_corrected(survey: np.ndarray, pred: np.ndarray, true: np.ndarray, n_boot: int, seed: int
                          ) -> np.ndarray:
    """The corrected totals' interval before issue 23: a percentile bootstrap of the validated images
    (live, dead, live fraction), (3, 2)."""
    rng = np.random.default_rng(seed)
    bootstrap_sums(survey, n_boot, rng)  # the same stream as the old code: survey first
    b = bootstrap_sums(np.hstack([pred, true]), n_boot, rng).reshape(n_boot, 2, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = b[:, 1] / b[:, 0] * survey.sum(0)
        frac = corr[:, 0] / corr.sum(1)
    out = [np.nanquantile(v, [(1 - LEVEL) / 2, (1 + LEVEL) / 2]) for v in (corr[:, 0], corr[:, 1], frac)]
    return np.array(out)


def detector_part(surveys: int, n_frames: int, n_validated: int, n_boot: int, workdir: Path) -> pd.DataFrame:
    import musseltools as mt
    from musseltools.synth import generate

    t0 = time.perf_counter()
    truths = {}
    for s in range(surveys):
        truths[s] = generate(workdir / "frames" / f"s{s:03d}", n=n_frames, seed=20_000 + s, size=(416, 320))
    t1 = time.perf_counter()
    run = mt.run(workdir / "frames", model=MODEL, store=workdir / "store", quiet=True)
    per = run.per_image()
    t2 = time.perf_counter()
    print(f"# rendered {surveys * n_frames} frames in {t1 - t0:.0f} s, inferred them in {t2 - t1:.0f} s", flush=True)
    per["survey"] = per["path"].map(lambda p: int(Path(p).parts[-3][1:]))
    per["image"] = per["path"].map(lambda p: Path(p).name)
    hits = []
    for s in range(surveys):
        pred = per[per["survey"] == s].set_index("image").loc[truths[s]["image"], ["live", "dead"]]
        S = pred.to_numpy(np.float64)
        T_all = truths[s][["live", "dead"]].to_numpy(np.float64)
        pick = np.random.default_rng(30_000 + s).choice(n_frames, n_validated, replace=False)
        true_vals = [T_all[:, 0].sum(), T_all[:, 1].sum(), T_all[:, 0].sum() / T_all.sum()]
        for label, fpc in (("t (the default)", False), ("t, fpc=True", True)):
            tot = survey_totals(S, S[pick], T_all[pick], ["live", "dead"], n_boot=200, seed=s, fpc=fpc)
            for q, truth, row in zip(("live total", "dead total", "live fraction"), true_vals,
                                     tot.itertuples(index=False)):
                hits.append(_hit("20 frames, 5 validated", label, q, truth, row.corrected_ci_low,
                                 row.corrected_ci_high))
        old = _percentile_corrected(S, S[pick], T_all[pick], n_boot, s)
        for q, truth, (lo, hi) in zip(("live total", "dead total", "live fraction"), true_vals, old):
            hits.append(_hit("20 frames, 5 validated", "percentile bootstrap (before)", q, truth, lo, hi))
    return _summary(pd.DataFrame(hits))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["design", "detector", "all"], default="all")
    ap.add_argument("--surveys", type=int, default=50)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", metavar="OUT", help="also write the tables as JSON")
    args = ap.parse_args(argv)
    pd.set_option("display.width", 160)
    tables = {}
    t = time.perf_counter()
    if args.part in ("design", "all"):
        tables["design"] = design_part(args.surveys, args.n_boot)
        print(f"## design-based intervals, true counts per image, {args.surveys} surveys "
              f"({time.perf_counter() - t:.0f} s)\n{tables['design'].to_string(index=False)}\n", flush=True)
    if args.part in ("detector", "all"):
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            tables["detector"] = detector_part(args.surveys, 20, 5, args.n_boot, Path(tmp))
        print(f"## corrected survey totals, demo detector, truth on 5 of 20 frames, {args.surveys} surveys "
              f"({time.perf_counter() - t:.0f} s)\n{tables['detector'].to_string(index=False)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({k: v.to_dict("records") for k, v in tables.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
