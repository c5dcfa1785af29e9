"""Group comparisons (musseltools.survey.glm.compare_groups): the GLMs agree with a direct statsmodels fit
on the exported per-image table, the dispersion check picks the family, R formulas, and the differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf

from musseltools.survey.glm import compare_groups
from musseltools.synth.survey import draw_survey


def _exported(images: pd.DataFrame, tmp_path) -> pd.DataFrame:
    """The per-image table as a researcher reads it back from a CSV export."""
    images.to_csv(tmp_path / "images.csv", index=False)
    return pd.read_csv(tmp_path / "images.csv").assign(total=lambda d: d["live"] + d["dead"])


def _poisson_survey() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    treatment = np.repeat(["control", "restored", "removal"], 8)
    area = rng.uniform(0.1, 0.3, len(treatment))
    mu = area * np.select([treatment == "control", treatment == "restored"], [60.0, 90.0], 40.0)
    total = rng.poisson(mu)
    dead = rng.binomial(total, np.where(treatment == "removal", 0.5, 0.25))
    return pd.DataFrame({"image_id": [f"i{i}" for i in range(len(total))], "treatment": treatment,
                         "area_m2": area.round(4), "live": total - dead, "dead": dead})


def _assert_same(ours: pd.DataFrame, fit, level=0.95):
    ci = fit.conf_int(alpha=1 - level)
    np.testing.assert_allclose(ours["estimate"], fit.params.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours["std_error"], fit.bse.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours["p_value"], fit.pvalues.to_numpy(), rtol=1e-4, atol=1e-300)
    np.testing.assert_allclose(ours[["ci_low", "ci_high"]].to_numpy(), ci.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours["exp_estimate"], np.exp(fit.params.to_numpy()), rtol=1e-6)


def test_poisson_and_binomial_models_agree_with_a_direct_statsmodels_fit_on_the_exported_table(tmp_path):
    images = _poisson_survey()
    cmp = compare_groups(images, "treatment", ["live", "dead"], reference="control")
    table = _exported(images, tmp_path)
    disp = cmp.dispersion.set_index("model")
    assert not disp.at["count (Poisson)", "overdispersed"] and "Poisson kept" in disp.at["count (Poisson)", "decision"]
    direct = smf.glm("total ~ C(treatment, Treatment('control'))", table, family=sm.families.Poisson(),
                     offset=np.log(table["area_m2"])).fit()
    _assert_same(cmp.count_model, direct)
    assert cmp.count_model["term"].tolist() == ["Intercept", "treatment[T.removal]", "treatment[T.restored]"]
    assert disp.at["count (Poisson)", "dispersion"] == pytest.approx(direct.pearson_chi2 / direct.df_resid)
    assert cmp.formulas["count_model"] == ("glm(I(live + dead) ~ treatment + offset(log(area_m2)), "
                                           "family = poisson, data = images)")
    assert cmp.formulas["setup"] == 'images$treatment <- relevel(factor(images$treatment), ref = "control")'
    alive = table[table["total"] > 0]
    direct = smf.glm("I(dead / total) ~ C(treatment, Treatment('control'))", alive, family=sm.families.Binomial(),
                     var_weights=alive["total"]).fit()
    assert not disp.at["dead (binomial)", "overdispersed"]
    _assert_same(cmp.dead_model, direct)
    assert cmp.formulas["dead_model"] == "glm(cbind(dead, live) ~ treatment, family = binomial, data = images)"


def test_overdispersed_counts_switch_to_negative_binomial_and_quasi_binomial(tmp_path):
    images, _ = draw_survey(4, 2, 5, seed=3)  # clumped counts (k = 2), dead fractions vary between images
    cmp = compare_groups(images, "treatment", ["live", "dead"], level=0.9)
    assert cmp.reference == "control"
    disp = cmp.dispersion.set_index("model")
    assert disp.at["count (Poisson)", "overdispersed"] and disp.at["count (Poisson)", "p_value"] < 0.05
    assert "negative binomial" in disp.at["count (Poisson)", "decision"]
    table = _exported(images, tmp_path)
    nb = smf.negativebinomial("total ~ treatment", table, offset=np.log(table["area_m2"])).fit(disp=0, maxiter=200)
    alpha = nb.params["alpha"]
    assert disp.at["count (Poisson)", "alpha"] == pytest.approx(alpha, rel=1e-4)
    direct = smf.glm("total ~ treatment", table, family=sm.families.NegativeBinomial(alpha=alpha),
                     offset=np.log(table["area_m2"])).fit()
    _assert_same(cmp.count_model, direct, level=0.9)
    assert cmp.formulas["count_model"] == "MASS::glm.nb(I(live + dead) ~ treatment + offset(log(area_m2)), data = images)"
    assert disp.at["dead (binomial)", "overdispersed"] and "quasi-binomial" in disp.at["dead (binomial)", "decision"]
    alive = table[table["total"] > 0]
    direct = smf.glm("I(dead / total) ~ treatment", alive, family=sm.families.Binomial(),
                     var_weights=alive["total"]).fit(scale="X2", use_t=True)
    _assert_same(cmp.dead_model, direct, level=0.9)
    assert cmp.formulas["dead_model"] == "glm(cbind(dead, live) ~ treatment, family = quasibinomial, data = images)"


def test_differences_against_the_reference_with_welch_intervals_and_the_bad_cases():
    images = _poisson_survey()
    cmp = compare_groups(images, "treatment", ["live", "dead"], reference="control")
    d = cmp.differences.set_index(["treatment", "quantity"])
    g = {v: x for v, x in images.groupby("treatment")}
    dens = {v: (x["live"] + x["dead"]).sum() / x["area_m2"].sum() for v, x in g.items()}
    row = d.loc[("restored", "density total")]
    assert row["difference"] == pytest.approx(dens["restored"] - dens["control"])
    assert row["low"] < row["difference"] < row["high"] and row["reference"] == "control"
    frac = {v: x["dead"].sum() / (x["live"] + x["dead"]).sum() for v, x in g.items()}
    assert d.loc[("removal", "dead fraction"), "difference"] == pytest.approx(frac["removal"] - frac["control"])
    # a level of one image and a level without mussels: no interval, a note; the models leave the empty one out
    bad = pd.concat([images, pd.DataFrame({"image_id": ["x", "y", "z"], "treatment": ["single", "empty", "empty"],
                                           "area_m2": [0.2, 0.2, 0.2], "live": [5, 0, 0], "dead": [1, 0, 0]})])
    cmp = compare_groups(bad, "treatment", ["live", "dead"], reference="control")
    d = cmp.differences.set_index(["treatment", "quantity"])
    for level in ("single", "empty"):
        assert np.isnan(d.loc[(level, "dead fraction"), "low"]) and "not estimable" in d.loc[(level, "dead fraction"),
                                                                                             "note"]
    assert "treatment[T.empty]" not in cmp.count_model["term"].tolist()
    assert any("level 'empty' left out" in n for n in cmp.notes)
    with pytest.raises(ValueError, match=r"needs the reference 'nowhere'"):
        compare_groups(images, "treatment", ["live", "dead"], reference="nowhere")
