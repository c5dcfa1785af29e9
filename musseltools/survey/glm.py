"""Group comparisons: differences against a reference level with intervals, and the GLMs an ecologist
fits (:func:`compare_groups`).

* ``differences``: density of each category (and of all) and the dead fraction of each level minus the
  reference's, each with a Welch t interval from the groups' linearized variances (the estimator of
  :mod:`musseltools.survey.ratio`, on the natural scale: a difference can be negative), or a percentile
  bootstrap of images within groups (``interval="bootstrap"``).
* ``count_model``: a Poisson GLM of each image's total count with a ``log(area)`` offset; when the
  Pearson dispersion check says Poisson is wrong (``chi2 / df`` tested against its chi-square, p < 0.05),
  a negative binomial GLM with its ML ``alpha`` (R's ``MASS::glm.nb``, ``theta = 1 / alpha``) instead.
* ``dead_model``: a binomial GLM of dead out of each image's total (R's ``cbind(dead, total - dead)``),
  quasi-binomial (scale from Pearson's chi-square, t tests) when overdispersed.

The images are the units of every model: images nested in sites that are nested in a treatment are not
independent replicates of it (compare sites, or fit a mixed model, for that).

Examples
--------
>>> cmp = compare_groups(images, "treatment", ["live", "dead"], reference="control")   # doctest: +SKIP
>>> cmp.formulas["count_model"]                                                      # doctest: +SKIP
'glm(I(live + dead) ~ treatment + offset(log(area_m2)), family = poisson, data = images)'
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from .estimate import check_images
from .ratio import ratio_influence

__all__ = ["GroupComparison", "compare_groups", "DISPERSION_P"]

#: The Pearson dispersion check calls a model overdispersed below this p-value.
DISPERSION_P = 0.05
_COEF = ["term", "estimate", "std_error", "statistic", "p_value", "ci_low", "ci_high", "exp_estimate", "exp_low",
         "exp_high"]


@dataclass(frozen=True)
class GroupComparison:
    """What :func:`compare_groups` found (see the module docstring)."""

    factor: str
    reference: str
    differences: pd.DataFrame
    count_model: pd.DataFrame
    dead_model: pd.DataFrame
    formulas: dict[str, str]
    dispersion: pd.DataFrame
    notes: tuple[str, ...] = field(default=())


def compare_groups(
    images: pd.DataFrame,
    factor: str,
    categories: Sequence[str],
    *,
    area: str = "area_m2",
    reference: str | None = None,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    dead: str = "dead",
    interval: str = "t",
) -> GroupComparison:
    """Compare the levels of ``factor`` (for example ``"treatment"``) against ``reference``.

    Parameters
    ----------
    images : pandas.DataFrame
        One row per image: ``image_id``, ``factor``, ``area`` (optional: without it, no densities and no
        offset) and one count column per category.
    categories : sequence of str
        The count columns; ``dead`` names the one whose share is the dead fraction.
    reference : str, optional
        The level the others are compared with (default: the first in sorted order).
    level : float
        Confidence level of the intervals.
    n_boot, seed, interval
        ``interval="t"`` (default) or ``"bootstrap"`` (percentile, ``n_boot`` resamples, ``seed``) for
        the differences.
    """
    categories = list(categories)
    check_images(images, [factor], categories, area)
    if dead not in categories:
        raise ValueError(f"no category {dead!r} among {categories} — name the dead category with dead=")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    data = images.assign(**{factor: images[factor].astype(str)})
    levels = sorted(data[factor].unique())
    reference = levels[0] if reference is None else str(reference)
    if reference not in levels or len(levels) < 2:
        raise ValueError(f"{factor!r} needs the reference {reference!r} and another level — it has {levels}")
    has_area = area in data.columns
    data["total"] = data[categories].sum(axis=1)
    rng = np.random.default_rng(seed)
    diffs = _differences(data, factor, categories, dead, reference, area if has_area else None, level,
                         interval, n_boot, rng)
    notes: list[str] = []
    order = [reference] + [v for v in levels if v != reference]
    count, count_disp, count_formula = _count_model(data, factor, order, area if has_area else None, level, notes)
    deadm, dead_disp, dead_formula = _dead_model(data, factor, order, dead, level, notes)
    count_formula = count_formula.replace("total ~", f"{_sum_r(categories)} ~")
    dead_formula = dead_formula.replace(f"total - {_r(dead)}", _sum_r([c for c in categories if c != dead]))
    formulas = {"setup": f'images${_r(factor)} <- relevel(factor(images${_r(factor)}), ref = "{reference}")',
                "count_model": count_formula, "dead_model": dead_formula}
    return GroupComparison(factor, reference, diffs, count, deadm, formulas,
                           pd.DataFrame([count_disp, dead_disp]), tuple(notes))


def _r(name: str) -> str:
    """A column name as R writes it (backticks unless a plain identifier)."""
    return name if name.replace("_", "").replace(".", "").isalnum() and not name[0].isdigit() else f"`{name}`"


def _sum_r(columns: list[str]) -> str:
    """The R expression of the sum of count columns (the exported table has no total column)."""
    return _r(columns[0]) if len(columns) == 1 else f"I({' + '.join(_r(c) for c in columns)})"


# ---------------------------------------------------------------------------------------- differences
def _differences(data, factor, categories, dead, reference, area, level, interval, n_boot, rng) -> pd.DataFrame:
    quantities = ([(f"density {c}", c) for c in [*categories, "total"]] if area else []) + [("dead fraction", dead)]
    groups = {v: g for v, g in data.groupby(factor, sort=True)}
    rows = []
    for v, g in groups.items():
        if v == reference:
            continue
        for name, col in quantities:
            pair = [_estimate(x, name, col, area) for x in (g, groups[reference])]
            row = {factor: v, "reference": reference, "quantity": name, "estimate": pair[0][0],
                   "reference_estimate": pair[1][0], "difference": pair[0][0] - pair[1][0]}
            if interval == "bootstrap":
                low, high = _boot_difference(g, groups[reference], name, col, area, level, n_boot, rng)
                method = f"{level:.0%} percentile bootstrap of images within each group ({n_boot} resamples)"
            else:
                low, high = _welch(pair, level)
                method = f"{level:.0%} Welch t interval from the groups' linearized between-image variances"
            note = ""
            if np.isnan(low):
                note = ("not estimable: a group has fewer than 2 images, no mussels, or no variation between images")
            rows.append(row | {"low": low, "high": high, "images": len(g), "reference_images": len(groups[reference]),
                               "method": method, "note": note})
    return pd.DataFrame(rows)


def _estimate(g: pd.DataFrame, name: str, col: str, area: str | None) -> tuple[float, float, int]:
    """(estimate, variance, images) of one group's density or dead fraction."""
    if name == "dead fraction":
        y, x = g[col].to_numpy(np.float64), g["total"].to_numpy(np.float64)
    else:
        y, x = g[col].to_numpy(np.float64), g[area].to_numpy(np.float64)
    if x.sum() == 0:
        return np.nan, np.nan, len(g)
    r, u = ratio_influence(y, x)
    return r, (float(np.var(u, ddof=1) / len(u)) if len(u) > 1 else np.nan), len(g)


def _welch(pair, level: float) -> tuple[float, float]:
    (e1, v1, n1), (e0, v0, n0) = pair
    total = v1 + v0
    if not np.isfinite(total) or total <= 0 or v1 <= 0 or v0 <= 0:
        return np.nan, np.nan
    df = total ** 2 / (v1 ** 2 / (n1 - 1) + v0 ** 2 / (n0 - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * np.sqrt(total)
    return float(e1 - e0 - half), float(e1 - e0 + half)


def _boot_difference(g1, g0, name, col, area, level, n_boot, rng) -> tuple[float, float]:
    if min(len(g1), len(g0)) < 2:
        return np.nan, np.nan
    vals = []
    for g in (g1, g0):
        y = g[col].to_numpy(np.float64)
        x = g["total" if name == "dead fraction" else area].to_numpy(np.float64)
        w = rng.multinomial(len(g), np.full(len(g), 1.0 / len(g)), size=n_boot).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            vals.append((w @ y) / (w @ x))
    d = vals[0] - vals[1]
    d = d[np.isfinite(d)]
    if len(d) == 0 or d.min() == d.max():
        return np.nan, np.nan
    low, high = np.quantile(d, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------- models
def _design(data: pd.DataFrame, factor: str, order: list[str]) -> pd.DataFrame:
    """The model matrix: an intercept (the reference) and one indicator per other level."""
    x = pd.DataFrame({"Intercept": 1.0}, index=data.index)
    for v in order[1:]:
        x[f"{factor}[T.{v}]"] = (data[factor] == v).astype(float)
    return x


def _drop_empty(data, factor, order, column, what, notes) -> tuple[pd.DataFrame, list[str]]:
    """Leave out levels whose ``column`` sums to 0 or equals the total (their coefficient diverges)."""
    sums = data.groupby(factor)[column].sum()
    totals = data.groupby(factor)["total"].sum()
    bad = [v for v in order if sums.get(v, 0) == 0 or (column != "total" and sums.get(v) == totals.get(v))]
    for v in bad:
        notes.append(f"{what}: level {v!r} left out — its {column} is {sums.get(v, 0):g} of {totals.get(v, 0):g} "
                     "mussels, so its coefficient would diverge; see the differences for its bounds")
    keep = [v for v in order if v not in bad]
    return data[data[factor].isin(keep)], keep


def _dispersion(fit, model: str) -> dict:
    chi2, df = float(fit.pearson_chi2), float(fit.df_resid)
    p = float(stats.chi2.sf(chi2, df)) if df > 0 else np.nan
    return {"model": model, "pearson_chi2": chi2, "df_resid": df, "dispersion": chi2 / df if df > 0 else np.nan,
            "p_value": p, "overdispersed": bool(p < DISPERSION_P)}


def _count_model(data, factor, order, area, level, notes) -> tuple[pd.DataFrame, dict, str]:
    import statsmodels.api as sm

    reference = order[0]
    data, order = _drop_empty(data, factor, order, "total", "count model", notes)
    offset = f" + offset(log({_r(area)}))" if area else ""
    formula = f"total ~ {_r(factor)}{offset}"
    if len(order) < 2 or order[0] != reference:
        return pd.DataFrame(columns=_COEF), {"model": "count (Poisson)"}, f"glm({formula}, family = poisson)"
    y, x = data["total"].to_numpy(np.float64), _design(data, factor, order)
    off = np.log(data[area].to_numpy(np.float64)) if area else None
    fit = sm.GLM(y, x, family=sm.families.Poisson(), offset=off).fit()
    disp = _dispersion(fit, "count (Poisson)")
    if not disp["overdispersed"]:
        disp["decision"] = f"Poisson kept: dispersion {disp['dispersion']:.2f}, p = {disp['p_value']:.3g}"
        return _coefficients(fit, level), disp, f"glm({formula}, family = poisson, data = images)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alpha = float(sm.NegativeBinomial(y, x, offset=off).fit(disp=0, maxiter=200).params.iloc[-1])
    fit = sm.GLM(y, x, family=sm.families.NegativeBinomial(alpha=alpha), offset=off).fit()
    disp["decision"] = (f"negative binomial: Poisson dispersion {disp['dispersion']:.2f}, p = {disp['p_value']:.3g} "
                        f"< {DISPERSION_P}; ML alpha {alpha:.4g} (R theta {1 / alpha:.4g})")
    disp["alpha"] = alpha
    return _coefficients(fit, level), disp, f"MASS::glm.nb({formula}, data = images)"


def _dead_model(data, factor, order, dead, level, notes) -> tuple[pd.DataFrame, dict, str]:
    import statsmodels.api as sm

    empty = int((data["total"] == 0).sum())
    if empty:
        notes.append(f"dead model: {empty} images without mussels carry no information on the dead fraction")
    data, reference = data[data["total"] > 0], order[0]
    data, order = _drop_empty(data, factor, order, dead, "dead model", notes)
    lhs = f"cbind({_r(dead)}, total - {_r(dead)}) ~ {_r(factor)}"
    if len(order) < 2 or order[0] != reference:
        return pd.DataFrame(columns=_COEF), {"model": "dead (binomial)"}, f"glm({lhs}, family = binomial)"
    total = data["total"].to_numpy(np.float64)
    y, x = data[dead].to_numpy(np.float64) / total, _design(data, factor, order)
    family = sm.families.Binomial()
    fit = sm.GLM(y, x, family=family, var_weights=total).fit()
    disp = _dispersion(fit, "dead (binomial)")
    if not disp["overdispersed"]:
        disp["decision"] = f"binomial kept: dispersion {disp['dispersion']:.2f}, p = {disp['p_value']:.3g}"
        return _coefficients(fit, level), disp, f"glm({lhs}, family = binomial, data = images)"
    fit = sm.GLM(y, x, family=family, var_weights=total).fit(scale="X2", use_t=True)
    disp["decision"] = (f"quasi-binomial: dispersion {disp['dispersion']:.2f}, p = {disp['p_value']:.3g} "
                        f"< {DISPERSION_P}; standard errors scaled by its square root, t tests")
    return _coefficients(fit, level), disp, f"glm({lhs}, family = quasibinomial, data = images)"


def _coefficients(fit, level: float) -> pd.DataFrame:
    ci = fit.conf_int(alpha=1 - level)
    out = pd.DataFrame({"term": fit.params.index, "estimate": fit.params.to_numpy(), "std_error": fit.bse.to_numpy(),
                        "statistic": fit.tvalues.to_numpy(), "p_value": fit.pvalues.to_numpy(),
                        "ci_low": ci.iloc[:, 0].to_numpy(), "ci_high": ci.iloc[:, 1].to_numpy()})
    return out.assign(exp_estimate=np.exp(out["estimate"]), exp_low=np.exp(out["ci_low"]),
                      exp_high=np.exp(out["ci_high"]))
