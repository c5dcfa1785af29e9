"""Survey estimates by group (musseltools.survey.estimate): ratio-of-sums densities and fractions, t intervals
from the linearized variance on log/logit scales, corrections by verified images, and the bad cases (one image,
no mussels, no area); the corrected survey totals of the evaluation use the same estimator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from musseltools.evaluation.calibration import survey_totals
from musseltools.survey.estimate import group_estimates
from musseltools.synth.survey import draw_survey


def _images() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e", "f", "g"],
        "site": ["A", "A", "A", "B", "C", "C", "D"],
        "area_m2": [0.2, 0.25, 0.3, 0.25, 0.2, 0.2, 0.25],
        "live": [10, 4, 9, 5, 0, 0, 3],
        "dead": [2, 3, 1, 1, 0, 0, 0],
    })


def _by(est: pd.DataFrame, site: str, category: str) -> pd.Series:
    return est[(est["site"] == site) & (est["category"] == category)].iloc[0]


def test_density_and_fraction_are_ratios_of_sums_with_t_intervals_on_log_and_logit_scales():
    est = group_estimates(_images(), "site", ["live", "dead"])
    assert list(est.columns[:3]) == ["site", "category", "images"]
    row = _by(est, "A", "live")
    y, a, d = np.array([10, 4, 9.0]), np.array([0.2, 0.25, 0.3]), np.array([2, 3, 1.0])
    density = y.sum() / a.sum()
    assert (row["images"], row["count"], row["density"]) == (3, 23.0, pytest.approx(density))
    # by hand: linearized values (y - D a) / mean(a), variance / n, log scale, t with n - 1 = 2 df
    se_log = np.sqrt(np.var((y - density * a) / a.mean(), ddof=1) / 3) / density
    q = stats.t.ppf(0.975, 2)
    assert row["density_low"] == pytest.approx(density * np.exp(-q * se_log))
    assert row["density_high"] == pytest.approx(density * np.exp(q * se_log))
    f = y.sum() / (y + d).sum()
    se_logit = np.sqrt(np.var((y - f * (y + d)) / (y + d).mean(), ddof=1) / 3) / (f * (1 - f))
    logit = np.log(f / (1 - f))
    assert row["fraction"] == pytest.approx(f)
    assert row["fraction_low"] == pytest.approx(1 / (1 + np.exp(-(logit - q * se_logit))))
    assert row["fraction_high"] == pytest.approx(1 / (1 + np.exp(-(logit + q * se_logit))))
    assert _by(est, "A", "dead")["fraction"] == pytest.approx(1 - f)  # mortality: the dead share
    assert not row["corrected"] and "t interval (df 2)" in row["method"] and row["note"] == ""


def test_a_group_of_one_image_has_no_interval_and_says_so():
    for interval in ("t", "bootstrap"):
        est = group_estimates(_images(), ["site"], ["live", "dead"], interval=interval)
        for c in ("live", "dead"):
            row = _by(est, "B", c)
            assert row["images"] == 1 and row["density"] == 20.0 * (c == "live") + 4.0 * (c == "dead")
            assert np.isnan([row["density_low"], row["density_high"], row["fraction_low"],
                             row["fraction_high"]]).all(), (interval, row.to_dict())
            assert "one image: interval not estimable" in row["note"]


def test_a_group_without_mussels_has_no_fraction_and_a_density_bound_that_says_why():
    est = group_estimates(_images(), "site", ["live", "dead"])
    for c in ("live", "dead"):
        row = _by(est, "C", c)
        assert np.isnan(row["fraction"]) and np.isnan(row["fraction_low"]) and np.isnan(row["fraction_high"])
        assert "no mussels counted: fraction not defined" in row["note"]
        # density 0, never a zero-width interval: the exact Poisson bound of a count of 0 over 0.4 m²
        assert row["density"] == 0 and row["density_low"] == 0
        assert row["density_high"] == pytest.approx(-np.log(0.025) / 0.4, rel=1e-6)
        assert "none counted" in row["note"]
    # a fraction of 0 (no dead at site D) has exact binomial bounds on its 3 mussels, not a zero-width interval
    row = _by(est, "D", "dead")
    assert row["fraction"] == 0 and row["fraction_low"] == 0
    assert row["fraction_high"] == pytest.approx(1 - 0.025 ** (1 / 3)) and "exact binomial" in row["note"]


def test_without_an_area_column_density_is_not_defined_and_bad_areas_are_named():
    est = group_estimates(_images().drop(columns="area_m2"), "site", ["live", "dead"])
    assert est["density"].isna().all() and est["note"].str.contains("no area column: density not defined").all()
    assert est["fraction"].notna().sum() == 6  # C has no mussels
    bad = _images().assign(area_m2=[0.2, 0.0, 0.3, 0.25, 0.2, np.nan, 0.25])
    with pytest.raises(ValueError, match=r"positive area for every image .* \['b', 'f'\]"):
        group_estimates(bad, "site", ["live", "dead"])
    with pytest.raises(ValueError, match=r"lacks columns \['treatment'\]"):
        group_estimates(_images(), "treatment", ["live", "dead"])


def test_verified_images_correct_counts_and_add_their_variance():
    verified = pd.DataFrame({"image_id": ["a", "b", "x"], "live": [11, 5, 7], "live_model": [10, 4, 6],
                             "dead": [2, 4, 2], "dead_model": [2, 3, 1]})
    est = group_estimates(_images(), "site", ["live", "dead"], validated=verified)
    r_live, r_dead = 23 / 20, 8 / 6
    row = _by(est, "A", "live")
    assert row["corrected"] and row["validated_images"] == 3 and "3 verified images" in row["method"]
    assert row["count"] == pytest.approx(23 * r_live)
    assert row["density"] == pytest.approx(23 * r_live / 0.75)
    live, dead = 23 * r_live, 6 * r_dead
    assert row["fraction"] == pytest.approx(live / (live + dead))
    # log-scale variances of the group's images and of the verified ratio add; Welch-Satterthwaite df
    y, a = np.array([10, 4, 9.0]), np.array([0.2, 0.25, 0.3])
    v1 = np.var((y - y.sum() / a.sum() * a) / a.mean(), ddof=1) / 3 / (y.sum() / a.sum()) ** 2
    t, m = np.array([11, 5, 7.0]), np.array([10, 4, 6.0])
    v2 = np.var((t - r_live * m) / m.mean(), ddof=1) / 3 / r_live ** 2
    df = (v1 + v2) ** 2 / (v1 ** 2 / 2 + v2 ** 2 / 2)
    half = stats.t.ppf(0.975, df) * np.sqrt(v1 + v2)
    assert row["density_low"] == pytest.approx(row["density"] * np.exp(-half))
    assert row["density_high"] == pytest.approx(row["density"] * np.exp(half))
    with pytest.raises(ValueError, match=r"model counted no \['dead'\] on the 1 verified images"):
        group_estimates(_images(), "site", ["live", "dead"], validated=verified.iloc[[2]].assign(dead_model=0))
    with pytest.raises(ValueError, match=r"lacks columns \['dead_model'\]"):
        group_estimates(_images(), "site", ["live", "dead"], validated=verified.drop(columns="dead_model"))


def test_bootstrap_intervals_are_seeded_and_t_intervals_need_no_seed():
    images, _ = draw_survey(2, 1, 6, seed=3)
    a = group_estimates(images, "site", ["live", "dead"], interval="bootstrap", n_boot=300, seed=7)
    pd.testing.assert_frame_equal(a, group_estimates(images, "site", ["live", "dead"], interval="bootstrap",
                                                     n_boot=300, seed=7))
    b = group_estimates(images, "site", ["live", "dead"], interval="bootstrap", n_boot=300, seed=8)
    assert not np.allclose(a["density_low"], b["density_low"])
    assert "percentile bootstrap" in a["method"][0]
    pd.testing.assert_frame_equal(group_estimates(images, "site", ["live", "dead"], seed=1),
                                  group_estimates(images, "site", ["live", "dead"], seed=2))


def test_t_intervals_hold_their_coverage_with_three_images_where_the_percentile_bootstrap_does_not():
    """The reason for the estimator (benchmarks/survey_coverage.py measures it on 50 surveys per design)."""
    hits = {"t": [], "bootstrap": []}
    for s in range(30):
        images, truth = draw_survey(4, 1, 3, seed=500 + s)
        images["all"] = images["live"] + images["dead"]
        true = truth.set_index("site")["density_m2"]
        for interval in hits:
            est = group_estimates(images, "site", ["all"], interval=interval, n_boot=400, seed=s)
            hits[interval] += ((est["density_low"] <= est["site"].map(true))
                               & (est["site"].map(true) <= est["density_high"])).tolist()
    assert np.mean(hits["t"]) >= 0.9 > np.mean(hits["bootstrap"]), {k: np.mean(v) for k, v in hits.items()}


def test_corrected_survey_totals_use_the_t_interval_with_the_finite_population_correction():
    survey = np.array([[4, 1], [2, 0], [6, 2], [3, 1], [5, 0], [1, 1], [7, 3], [2, 2]], float)
    pred, true = survey[:3], np.array([[5, 1], [3, 1], [6, 3]], float)
    tot = survey_totals(survey, pred, true, ["live", "dead"], n_boot=50, fpc=True).set_index("class")
    r = true[:, 0].sum() / pred[:, 0].sum()
    z = (true[:, 0] - r * pred[:, 0]) / pred[:, 0].mean() / r
    half = stats.t.ppf(0.975, 2) * np.sqrt((1 - 3 / 8) * np.var(z, ddof=1) / 3)
    corrected = r * survey[:, 0].sum()
    assert tot.at["live", "corrected_total"] == pytest.approx(corrected)
    assert tot.at["live", "corrected_ci_low"] == pytest.approx(corrected * np.exp(-half))
    assert tot.at["live", "corrected_ci_high"] == pytest.approx(corrected * np.exp(half))
    lf = tot.loc["live_fraction"]
    assert lf["corrected_ci_low"] < lf["corrected_total"] < lf["corrected_ci_high"]
    # every survey image validated: the corrected total is the true total, known exactly
    full = survey_totals(survey, survey, survey + 1, ["live", "dead"], n_boot=50, fpc=True).set_index("class")
    assert full.at["live", "corrected_ci_low"] == full.at["live", "corrected_ci_high"] == survey[:, 0].sum() + 8
    # by default (validated images seldom drawn at random) no correction: the wider interval
    default = survey_totals(survey, pred, true, ["live", "dead"], n_boot=50).set_index("class")
    assert default.at["live", "corrected_ci_high"] == pytest.approx(corrected * np.exp(half / np.sqrt(1 - 3 / 8)))
