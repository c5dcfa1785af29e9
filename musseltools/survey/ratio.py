"""Ratio estimators with linearized (Taylor) variances and t intervals on a log or logit scale: the
estimator of every survey interval (group densities and fractions, corrected totals).

Why this one: the sampling unit is the image, and surveys have few images per group (3 to 10) and few
verified images (5). A percentile or BCa bootstrap of a ratio from 5 units covers about 80% at a nominal
95% (it ignores the ``n - 1`` of the variance and the t quantile); a studentized bootstrap is unbounded
when a resample repeats one image. The linearized variance of a ratio of sums, taken on the log scale
(densities, totals) or the logit scale (fractions), with a t quantile on ``n - 1`` degrees of freedom,
held 92-96% in simulations with 3 to 20 images (docs/survey.md, ``benchmarks/survey_coverage.py``).

An estimate made of independent samples (the images of a group and the verified images that correct
them) adds the variances of its components and takes Welch-Satterthwaite degrees of freedom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Component", "ratio_influence", "t_interval", "poisson_upper", "clopper_pearson"]


@dataclass(frozen=True)
class Component:
    """One independent sample's contribution to an estimate's variance.

    ``z`` holds one linearized value per unit on the interval's scale (log or logit), so that the
    variance of the estimate on that scale is ``var(z, ddof=1) / len(z)``; ``fpc`` is the finite
    population correction ``1 - n / N`` (1 for an infinite population).
    """

    z: np.ndarray
    fpc: float = 1.0

    @property
    def n(self) -> int:
        return len(self.z)

    @property
    def variance(self) -> float:
        return float(self.fpc * np.var(self.z, ddof=1) / self.n) if self.n > 1 else np.nan


def ratio_influence(y: np.ndarray, x: np.ndarray) -> tuple[float, np.ndarray]:
    """The ratio ``sum(y) / sum(x)`` and its linearized values ``(y - R x) / mean(x)`` (one per unit):
    ``var(values, ddof=1) / n`` is the ratio's variance."""
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    r = float(y.sum() / x.sum())
    return r, (y - r * x) / x.mean()


def t_interval(estimate: float, components: Sequence[Component], level: float, scale: str
               ) -> tuple[float, float, float]:
    """``(low, high, df)`` of a t interval around ``estimate`` on ``scale`` ("log" or "logit").

    The components' ``z`` are already on that scale. NaN bounds when a component has fewer than two
    units or the variance is zero (no variation between images is no evidence of none).
    """
    var = [c.variance for c in components]
    total = float(np.sum(var))
    if any(c.n < 2 for c in components) or not np.isfinite(total) or total <= 0:
        return np.nan, np.nan, np.nan
    df = total ** 2 / sum(v ** 2 / (c.n - 1) for v, c in zip(var, components) if v > 0)
    from scipy import stats  # here, not at import: scipy.stats costs 0.85 s, and every command imports this

    half = stats.t.ppf(0.5 + level / 2, df) * np.sqrt(total)
    if scale == "log":
        centre = np.log(estimate)
        return float(np.exp(centre - half)), float(np.exp(centre + half)), float(df)
    centre = np.log(estimate / (1 - estimate))
    return float(_expit(centre - half)), float(_expit(centre + half)), float(df)


def _expit(v: float) -> float:
    return 1.0 / (1.0 + np.exp(-v))


def poisson_upper(level: float) -> float:
    """The upper bound of a mean count when none was seen (exact Poisson, two-sided ``level``)."""
    from scipy import stats

    return float(stats.chi2.ppf(0.5 + level / 2, 2) / 2)


def clopper_pearson(k: int, n: int, level: float) -> tuple[float, float]:
    """Exact binomial interval of ``k`` out of ``n``."""
    a = 1 - level
    from scipy import stats

    low = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return low, high
