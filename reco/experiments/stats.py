"""Statistics for A/B tests: vectorised numpy/scipy, from summary statistics wherever possible.

Every function takes plain numbers or numpy arrays (broadcasting), so that one call can evaluate many
arms or thousands of simulated experiments at once. Conventions:

* ``var_*`` arguments named ``se2``/``v`` are variances *of an estimator* (squared standard errors),
  not per-unit variances.
* Two-sided tests unless said otherwise; ``alpha`` is the two-sided level.
* The sequential test is the **mSPRT with a normal mixture** (Johari, Pekelis & Walsh 2017) on an
  asymptotically normal estimate; its mixing standard deviation ``tau`` is in the units of the
  estimate (the report uses relative lift with ``tau = 0.05``, i.e. effects of about 5 %).
* The Bayesian numbers use the **normal approximation with a flat prior** on the same estimates the
  frequentist test uses (no sampling, so deterministic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as st

ArrayLike = float | np.ndarray

#: SRM is flagged below this p-value (a strict threshold: the test runs daily and on every experiment).
SRM_ALPHA = 1e-3


def _norm_p(z: ArrayLike) -> ArrayLike:
    """Two-sided normal p-value (survival function: accurate in the far tail)."""
    return 2.0 * st.norm.sf(np.abs(z))


# --------------------------------------------------------------------------- proportions


def two_proportion_ztest(x1: ArrayLike, n1: ArrayLike, x0: ArrayLike, n0: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """Pooled two-proportion z-test of ``x1/n1`` against ``x0/n0`` (H0: equal rates).

    Same statistic as ``statsmodels.stats.proportion.proportions_ztest([x1, x0], [n1, n0])``.
    Returns ``(z, p_value)``.

    >>> z, p = two_proportion_ztest(120, 1000, 100, 1000)
    >>> round(float(z), 4), round(float(p), 4)
    (1.4293, 0.1529)
    """
    x1, n1, x0, n0 = (np.asarray(a, dtype=float) for a in (x1, n1, x0, n0))
    p1, p0 = x1 / n1, x0 / n0
    pooled = (x1 + x0) / (n1 + n0)
    se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p0) / se
    return z, _norm_p(z)


# --------------------------------------------------------------------------- Welch


def welch_ttest(
    mean1: ArrayLike, var1: ArrayLike, n1: ArrayLike, mean0: ArrayLike, var0: ArrayLike, n0: ArrayLike
) -> tuple[ArrayLike, ArrayLike, ArrayLike]:
    """Welch's unequal-variance t-test from summary statistics (``var`` = sample variance, ddof=1).

    Same as ``scipy.stats.ttest_ind(a, b, equal_var=False)``. Returns ``(t, df, p_value)``.

    >>> a, b = np.array([1.0, 2, 3, 4, 9]), np.array([1.0, 1, 2, 2])
    >>> t, df, p = welch_ttest(a.mean(), a.var(ddof=1), 5, b.mean(), b.var(ddof=1), 4)
    >>> round(float(t), 4), round(float(p), 4)
    (1.6169, 0.1756)
    """
    mean1, var1, n1, mean0, var0, n0 = (np.asarray(a, dtype=float) for a in (mean1, var1, n1, mean0, var0, n0))
    v1, v0 = var1 / n1, var0 / n0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (mean1 - mean0) / np.sqrt(v1 + v0)
        df = (v1 + v0) ** 2 / (v1**2 / (n1 - 1.0) + v0**2 / (n0 - 1.0))
    return t, df, 2.0 * st.t.sf(np.abs(t), df)


def welch_ttest_samples(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """`welch_ttest` on two samples: ``a`` (treatment) against ``b`` (control).

    >>> t, df, p = welch_ttest_samples(np.array([1.0, 2, 3, 4, 9]), np.array([1.0, 1, 2, 2]))
    >>> round(float(df), 3)
    4.34
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return welch_ttest(a.mean(), a.var(ddof=1), a.size, b.mean(), b.var(ddof=1), b.size)


# --------------------------------------------------------------------------- ratio metrics (delta method)


@dataclass(frozen=True)
class RatioStats:
    """A ratio-of-sums metric (e.g. CTR = sum clicks / sum impressions over users) and the delta-method
    variance of the estimate, treating users as the independent unit."""

    n: int
    ratio: float
    var: float  # variance of `ratio` (squared standard error)
    num_mean: float
    den_mean: float


def ratio_moments(
    n: ArrayLike,
    s_num: ArrayLike,
    s_den: ArrayLike,
    s_num2: ArrayLike,
    s_den2: ArrayLike,
    s_numden: ArrayLike,
) -> tuple[ArrayLike, ArrayLike]:
    """Ratio ``sum(num)/sum(den)`` and its delta-method variance from per-unit sums and sums of squares
    (so per-day cumulative values can come from a group-by). Returns ``(ratio, var)``.

    Var(R) ~ (1/n) [ s2_num / mu_den^2 - 2 mu_num s_numden / mu_den^3 + mu_num^2 s2_den / mu_den^4 ]
    with sample (ddof=1) variances and covariance.

    >>> r, v = ratio_moments(3, 3.0, 6.0, 5.0, 14.0, 7.0)  # num (1,2,0), den (1,3,2)
    >>> round(float(r), 4), round(float(v), 5)
    (0.5, 0.0625)
    """
    n, s_num, s_den, s_num2, s_den2, s_numden = (
        np.asarray(a, dtype=float) for a in (n, s_num, s_den, s_num2, s_den2, s_numden)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        mx, my = s_num / n, s_den / n
        vx = (s_num2 - n * mx**2) / (n - 1.0)
        vy = (s_den2 - n * my**2) / (n - 1.0)
        cxy = (s_numden - n * mx * my) / (n - 1.0)
        r = mx / my
        var = (vx / my**2 - 2.0 * mx * cxy / my**3 + mx**2 * vy / my**4) / n
    return r, np.maximum(var, 0.0)


def ratio_stats(num: np.ndarray, den: np.ndarray) -> RatioStats:
    """Delta-method statistics of ``sum(num)/sum(den)`` from per-user values.

    >>> s = ratio_stats(np.array([1.0, 2, 0]), np.array([1.0, 3, 2]))
    >>> round(s.ratio, 4), round(s.var, 5)
    (0.5, 0.0625)
    """
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    r, v = ratio_moments(num.size, num.sum(), den.sum(), (num**2).sum(), (den**2).sum(), (num * den).sum())
    return RatioStats(int(num.size), float(r), float(v), float(num.mean()), float(den.mean()))


def linearize_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Per-user linearisation of a ratio metric: ``(num - R den) / mean(den)``. Its sample variance / n
    equals the delta-method variance of R (used for CUPED on ratio metrics).

    >>> lin = linearize_ratio(np.array([1.0, 2, 0]), np.array([1.0, 3, 2]))
    >>> round(float(lin.var(ddof=1) / 3), 5)
    0.0625
    """
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    r = num.sum() / den.sum()
    return (num - r * den) / den.mean()


# --------------------------------------------------------------------------- lift with CIs


@dataclass(frozen=True)
class Lift:
    """Difference of a treatment estimate ``t`` and a control estimate ``c`` (independent groups)."""

    absolute: float
    absolute_ci: tuple[float, float]
    relative: float
    relative_ci: tuple[float, float]
    z: float
    p_value: float


def lift(t: ArrayLike, v_t: ArrayLike, c: ArrayLike, v_c: ArrayLike, alpha: float = 0.05) -> Lift:
    """Absolute (``t - c``) and relative (``t / c - 1``) lift with Wald CIs; the relative CI uses the
    delta method, ``Var(t/c) ~ v_t / c^2 + t^2 v_c / c^4``. ``v_*`` are estimator variances, so unequal
    group sizes enter through them. The z / p-value test the absolute difference.

    >>> lf = lift(0.11, 1e-4, 0.10, 1e-4)
    >>> round(lf.absolute, 4), round(lf.relative, 4), bool(lf.relative_ci[0] < lf.relative < lf.relative_ci[1])
    (0.01, 0.1, True)
    """
    q = st.norm.ppf(1.0 - alpha / 2.0)
    t, v_t, c, v_c = float(t), float(v_t), float(c), float(v_c)
    d, se = t - c, np.sqrt(v_t + v_c)
    if c == 0:
        raise ValueError("relative lift is undefined: the control estimate is 0")
    rel = t / c - 1.0
    se_rel = np.sqrt(v_t / c**2 + t**2 * v_c / c**4)
    z = d / se if se > 0 else (0.0 if d == 0 else np.copysign(np.inf, d))
    return Lift(
        absolute=d,
        absolute_ci=(d - q * se, d + q * se),
        relative=rel,
        relative_ci=(rel - q * se_rel, rel + q * se_rel),
        z=float(z),
        p_value=float(_norm_p(z)),
    )


def relative_lift_var(t: ArrayLike, v_t: ArrayLike, c: ArrayLike, v_c: ArrayLike) -> ArrayLike:
    """Delta-method variance of ``t / c - 1`` (vectorised form used by the sequential test).

    >>> round(float(relative_lift_var(0.11, 1e-4, 0.10, 1e-4)), 5)
    0.0221
    """
    t, v_t, c, v_c = (np.asarray(a, dtype=float) for a in (t, v_t, c, v_c))
    with np.errstate(divide="ignore", invalid="ignore"):
        return v_t / c**2 + t**2 * v_c / c**4


def log_ratio_var(t: ArrayLike, v_t: ArrayLike, c: ArrayLike, v_c: ArrayLike) -> ArrayLike:
    """Delta-method variance of ``log(t / c)``: ``v_t / t^2 + v_c / c^2`` (vectorised).

    >>> round(float(log_ratio_var(0.11, 1e-4, 0.10, 1e-4)), 5)
    0.01826
    """
    t, v_t, c, v_c = (np.asarray(a, dtype=float) for a in (t, v_t, c, v_c))
    with np.errstate(divide="ignore", invalid="ignore"):
        return v_t / t**2 + v_c / c**2


@dataclass(frozen=True)
class LogLift:
    """Relative lift ``t / c - 1`` tested and bounded on one scale: the log ratio (delta method)."""

    log_ratio: float
    se: float  # of the log ratio
    relative: float
    relative_ci: tuple[float, float]
    z: float
    p_value: float


def log_ratio_lift(t: float, v_t: float, c: float, v_c: float, alpha: float = 0.05) -> LogLift:
    """Relative lift with the z-test and CI of ``log(t/c)`` (delta-method variance `log_ratio_var`): the
    p-value and the interval come from the same statistic, so p < alpha exactly when the CI excludes 0.
    The interval is ``exp(log ratio +- q se) - 1`` (asymmetric, never below -100 %).

    >>> lf = log_ratio_lift(0.11, 1e-5, 0.10, 1e-5)
    >>> round(lf.relative, 4), lf.relative_ci[0] > 0, lf.p_value < 0.05
    (0.1, True, True)
    """
    t, v_t, c, v_c = float(t), float(v_t), float(c), float(v_c)
    if t <= 0 or c <= 0:
        nan = float("nan")
        return LogLift(nan, nan, (t / c - 1.0) if c else nan, (nan, nan), nan, nan)
    d, se = math.log(t / c), math.sqrt(float(log_ratio_var(t, v_t, c, v_c)))
    q = float(st.norm.ppf(1.0 - alpha / 2.0))
    z = d / se if se > 0 else (0.0 if d == 0 else math.copysign(math.inf, d))
    return LogLift(d, se, math.expm1(d), (math.expm1(d - q * se), math.expm1(d + q * se)), z, float(_norm_p(z)))


# --------------------------------------------------------------------------- SRM


@dataclass(frozen=True)
class SRM:
    chi2: float
    p_value: float
    flagged: bool
    expected: tuple[float, ...]


def srm_test(observed: np.ndarray, shares: np.ndarray, threshold: float = SRM_ALPHA) -> SRM:
    """Sample-ratio-mismatch chi-square test of observed unit counts per arm against configured traffic
    shares (normalised to sum 1). Same statistic as ``scipy.stats.chisquare(observed, total * shares)``;
    flagged when ``p < threshold`` (default 0.001).

    >>> s = srm_test(np.array([5000, 5200]), np.array([0.5, 0.5]))
    >>> round(s.chi2, 4), round(s.p_value, 4), s.flagged
    (3.9216, 0.0477, False)
    """
    obs = np.asarray(observed, dtype=float)
    sh = np.asarray(shares, dtype=float)
    if obs.shape != sh.shape or obs.size < 2:
        raise ValueError("SRM needs one observed count and one share per arm, at least two arms")
    if (sh <= 0).any():
        raise ValueError("traffic shares must be positive for every analysed arm")
    exp = obs.sum() * sh / sh.sum()
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    p = float(st.chi2.sf(chi2, obs.size - 1))
    return SRM(chi2, p, p < threshold, tuple(float(e) for e in exp))


# --------------------------------------------------------------------------- CUPED


def cuped_theta(y: np.ndarray, x: np.ndarray, groups: np.ndarray | None = None) -> float:
    """CUPED coefficient ``Cov(y, x) / Var(x)``, pooled over groups with each group centred on its own
    mean (so a treatment effect on ``y`` does not leak into theta). 0 when ``x`` has no variance.

    >>> x = np.array([1.0, 2, 3, 4]); round(cuped_theta(2 * x + 1, x), 6)
    2.0
    """
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    if groups is None:
        yc, xc = y - y.mean(), x - x.mean()
    else:
        _, inv = np.unique(groups, return_inverse=True)
        cnt = np.bincount(inv)
        yc = y - (np.bincount(inv, y) / cnt)[inv]
        xc = x - (np.bincount(inv, x) / cnt)[inv]
    sxx = float(xc @ xc)
    return 0.0 if sxx <= 0 else float(xc @ yc) / sxx


def cuped_adjust(y: np.ndarray, x: np.ndarray, theta: float, x_mean: float | None = None) -> np.ndarray:
    """CUPED-adjusted values ``y - theta (x - mean(x))``; ``x_mean`` should be the pooled mean over all
    arms so the adjusted means stay unbiased for the treatment effect.

    >>> cuped_adjust(np.array([3.0, 5.0]), np.array([1.0, 2.0]), 2.0).tolist()
    [4.0, 4.0]
    """
    x = np.asarray(x, dtype=float)
    m = float(x.mean()) if x_mean is None else x_mean
    return np.asarray(y, dtype=float) - theta * (x - m)


# --------------------------------------------------------------------------- sequential (mSPRT)


def msprt_lambda(d: ArrayLike, v: ArrayLike, tau: float) -> ArrayLike:
    """Normal-mixture likelihood ratio of H1 (theta ~ N(0, tau^2)) vs H0 (theta = 0) for an estimate
    ``d`` with variance ``v``:  sqrt(v/(v+tau^2)) exp(d^2 tau^2 / (2 v (v + tau^2))).

    >>> round(float(msprt_lambda(0.0, 1.0, 1.0)), 4)
    0.7071
    """
    d, v = np.asarray(d, dtype=float), np.asarray(v, dtype=float)
    t2 = tau**2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_l = 0.5 * np.log(v / (v + t2)) + d**2 * t2 / (2.0 * v * (v + t2))
    return np.exp(np.minimum(log_l, 700.0))


def msprt_pvalues(d: np.ndarray, v: np.ndarray, tau: float) -> np.ndarray:
    """Always-valid p-values along a sequence of looks (last axis = time): ``min(1, 1 / max_s Lambda_s)``,
    non-increasing. Rejecting when it falls below alpha at any look keeps type-I error <= alpha.

    >>> p = msprt_pvalues(np.array([0.0, 0.5, 0.1]), np.array([1.0, 0.1, 0.05]), 0.5)
    >>> bool(np.all(np.diff(p) <= 0)), bool(p[-1] <= 1)
    (True, True)
    """
    lam = msprt_lambda(d, v, tau)
    lam = np.where(np.isfinite(lam), lam, 0.0)
    return np.minimum(1.0, 1.0 / np.maximum.accumulate(np.maximum(lam, 1e-300), axis=-1))


def msprt_ci(d: np.ndarray, v: np.ndarray, tau: float, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Always-valid confidence sequence from inverting the mSPRT: at each look the set of theta with
    ``Lambda(d - theta) < 1/alpha`` is d +- sqrt(v (v+tau^2)/tau^2 (2 log(1/alpha) + log((v+tau^2)/v))),
    intersected with all earlier looks (last axis = time). Returns ``(low, high)``.

    >>> lo, hi = msprt_ci(np.array([0.1]), np.array([0.01]), 0.1)
    >>> bool(lo[0] < 0.1 < hi[0])
    True
    """
    d, v = np.asarray(d, dtype=float), np.asarray(v, dtype=float)
    t2 = tau**2
    with np.errstate(divide="ignore", invalid="ignore"):
        half = np.sqrt(v * (v + t2) / t2 * (2.0 * np.log(1.0 / alpha) + np.log((v + t2) / v)))
    lo = np.where(np.isfinite(half), d - half, -np.inf)
    hi = np.where(np.isfinite(half), d + half, np.inf)
    return np.maximum.accumulate(lo, axis=-1), np.minimum.accumulate(hi, axis=-1)


# --------------------------------------------------------------------------- Bayesian (normal approx.)


def chance_to_beat(d: ArrayLike, se: ArrayLike) -> ArrayLike:
    """P(treatment > control) under a flat prior and a normal posterior ``N(d, se^2)`` for the
    difference.

    >>> round(float(chance_to_beat(0.0, 1.0)), 3)
    0.5
    """
    d, se = np.asarray(d, dtype=float), np.asarray(se, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return st.norm.cdf(d / se)


def expected_loss(d: ArrayLike, se: ArrayLike) -> ArrayLike:
    """Expected loss of shipping the treatment, E[max(control - treatment, 0)], with the difference
    ``treatment - control ~ N(d, se^2)``: ``se phi(d/se) - d Phi(-d/se)``.

    >>> round(float(expected_loss(0.0, 1.0)), 4)
    0.3989
    """
    d, se = np.asarray(d, dtype=float), np.asarray(se, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = d / se
        return se * st.norm.pdf(k) - d * st.norm.cdf(-k)


def expected_relative_loss(d: ArrayLike, se: ArrayLike) -> ArrayLike:
    """Expected relative loss of shipping, ``E[max(0, 1 - exp(L))]`` for a log ratio ``L ~ N(d, se^2)``
    (what a ship gives up, as a fraction of control, averaged over the cases where treatment is worse):
    ``Phi(-d/se) - exp(d + se^2/2) Phi(-d/se - se)``.

    >>> round(float(expected_relative_loss(0.0, 0.1)), 4)
    0.0375
    """
    d, se = np.asarray(d, dtype=float), np.asarray(se, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        k = d / se
        return st.norm.cdf(-k) - np.exp(d + se**2 / 2.0) * st.norm.cdf(-k - se)


# --------------------------------------------------------------------------- multiple testing


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (as ``multipletests(p, method="holm")[1]``).

    >>> holm(np.array([0.01, 0.04, 0.03])).round(4).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (as ``multipletests(p, method="fdr_bh")[1]``).

    >>> benjamini_hochberg(np.array([0.01, 0.04, 0.03])).round(4).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    out = np.empty(m)
    out[order] = adj
    return out


# --------------------------------------------------------------------------- novelty


@dataclass(frozen=True)
class Trend:
    slope: float
    se: float
    z: float
    p_value: float
    n_points: int


def trend_test(x: np.ndarray, y: np.ndarray, var_y: np.ndarray) -> Trend:
    """Weighted least-squares slope of ``y`` on ``x`` with known variances ``var_y`` (weights 1/var) and
    its z-test (H0: slope 0). Used for the novelty check: does the lift trend with days since first
    exposure?

    >>> tr = trend_test(np.arange(5.0), np.array([0.1, 0.08, 0.06, 0.04, 0.02]), np.full(5, 1e-4))
    >>> round(tr.slope, 4), tr.p_value < 0.001
    (-0.02, True)
    """
    x, y, v = (np.asarray(a, dtype=float) for a in (x, y, var_y))
    keep = np.isfinite(y) & np.isfinite(v) & (v > 0)
    x, y, w = x[keep], y[keep], 1.0 / v[keep]
    if x.size < 3 or np.ptp(x) == 0:
        return Trend(float("nan"), float("nan"), float("nan"), float("nan"), int(x.size))
    xb, yb = (w @ x) / w.sum(), (w @ y) / w.sum()
    sxx = float(w @ (x - xb) ** 2)
    b = float(w @ ((x - xb) * (y - yb))) / sxx
    se = float(np.sqrt(1.0 / sxx))
    z = b / se
    return Trend(b, se, z, float(_norm_p(z)), int(x.size))


# --------------------------------------------------------------------------- power / MDE


def proportion_effectsize(p1: ArrayLike, p0: ArrayLike) -> ArrayLike:
    """Cohen's h, ``2 asin(sqrt(p1)) - 2 asin(sqrt(p0))`` (as statsmodels' ``proportion_effectsize``).

    >>> round(float(proportion_effectsize(0.12, 0.10)), 6)
    0.063982
    """
    return 2.0 * np.arcsin(np.sqrt(np.asarray(p1, dtype=float))) - 2.0 * np.arcsin(np.sqrt(np.asarray(p0, dtype=float)))


def normal_power(effect_size: ArrayLike, nobs1: ArrayLike, alpha: float = 0.05, ratio: float = 1.0) -> ArrayLike:
    """Power of the two-sided two-sample z-test for a standardised effect (as
    ``statsmodels.stats.power.NormalIndPower().power(effect_size, nobs1, alpha, ratio)``);
    ``nobs2 = ratio * nobs1``.

    >>> round(float(normal_power(0.2, 393)), 3)
    0.801
    """
    es, n1 = np.asarray(effect_size, dtype=float), np.asarray(nobs1, dtype=float)
    nc = es * np.sqrt(n1 / (1.0 + 1.0 / ratio))
    crit = st.norm.isf(alpha / 2.0)
    return st.norm.sf(crit - nc) + st.norm.cdf(-crit - nc)


def required_nobs1(effect_size: float, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0) -> float:
    """Units needed in group 1 (``ratio * that`` in group 2) for the given power (root of `normal_power`).

    >>> round(required_nobs1(0.2), 1)
    392.4
    """
    es = abs(float(effect_size))
    if es == 0:
        return float("inf")
    crit = st.norm.isf(alpha / 2.0)
    guess = ((crit + st.norm.isf(1.0 - power)) / es) ** 2 * (1.0 + 1.0 / ratio)
    return float(optimize.brentq(lambda n: normal_power(es, n, alpha, ratio) - power, guess * 0.5, guess * 2.0 + 10,
                                 xtol=1e-12, rtol=1e-15))  # fmt: skip


def minimum_detectable_effect(nobs1: float, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0) -> float:
    """Smallest standardised effect detectable with the given power at ``nobs1`` (and ``ratio * nobs1``).

    >>> round(minimum_detectable_effect(392.443), 4)
    0.2
    """
    crit = st.norm.isf(alpha / 2.0)
    guess = (crit + st.norm.isf(1.0 - power)) / np.sqrt(nobs1 / (1.0 + 1.0 / ratio))
    return float(optimize.brentq(lambda e: normal_power(e, nobs1, alpha, ratio) - power, guess * 0.5, guess * 2.0,
                                 xtol=1e-14, rtol=1e-15))  # fmt: skip
