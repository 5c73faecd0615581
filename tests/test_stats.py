"""Known answers: the engine's tests agree with statsmodels / scipy on the same inputs to 1e-9."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize as sm_h
from statsmodels.stats.proportion import proportions_ztest

from reco.experiments import stats as S

TOL = 1e-9


@pytest.mark.parametrize(
    ("x1", "n1", "x0", "n0"), [(120, 1000, 100, 1000), (5, 40, 30, 900), (4321, 50000, 4100, 49000)]
)
def test_two_proportion_ztest_matches_statsmodels(x1: int, n1: int, x0: int, n0: int) -> None:
    z, p = S.two_proportion_ztest(x1, n1, x0, n0)
    z_ref, p_ref = proportions_ztest([x1, x0], [n1, n0])
    assert z == pytest.approx(z_ref, abs=TOL) and p == pytest.approx(p_ref, abs=TOL)


def test_two_proportion_ztest_vectorised_over_arms() -> None:
    z, p = S.two_proportion_ztest(np.array([120, 90]), np.array([1000, 800]), 100, 1000)
    assert z.shape == (2,)
    assert p[1] == pytest.approx(proportions_ztest([90, 100], [800, 1000])[1], abs=TOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_welch_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.lognormal(0, 1, 37), rng.lognormal(0.2, 1.5, 81)
    t, df, p = S.welch_ttest_samples(a, b)
    ref = st.ttest_ind(a, b, equal_var=False)
    assert t == pytest.approx(ref.statistic, abs=TOL)
    assert p == pytest.approx(ref.pvalue, abs=TOL)
    assert df == pytest.approx(ref.df, abs=TOL)


def test_srm_matches_scipy_chisquare() -> None:
    obs, shares = np.array([5030, 4880, 10210]), np.array([0.25, 0.25, 0.5])
    s = S.srm_test(obs, shares)
    ref = st.chisquare(obs, obs.sum() * shares)
    assert s.chi2 == pytest.approx(ref.statistic, abs=TOL) and s.p_value == pytest.approx(ref.pvalue, abs=TOL)
    assert not s.flagged
    assert S.srm_test(np.array([5000, 5600]), np.array([0.5, 0.5])).flagged


def test_srm_rejects_bad_shares() -> None:
    with pytest.raises(ValueError, match="positive"):
        S.srm_test(np.array([10, 10]), np.array([1.0, 0.0]))


@pytest.mark.parametrize("seed", [0, 1])
def test_multiple_testing_matches_statsmodels(seed: int) -> None:
    p = np.random.default_rng(seed).uniform(0, 0.2, 9)
    p[3] = p[5]  # ties
    np.testing.assert_allclose(S.holm(p), multipletests(p, method="holm")[1], atol=TOL, rtol=0)
    np.testing.assert_allclose(S.benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1], atol=TOL, rtol=0)


def test_power_matches_statsmodels() -> None:
    ref = NormalIndPower()
    for es, n, ratio in [(0.2, 393, 1.0), (0.05, 5000, 2.0), (0.1, 120, 0.5)]:
        assert S.normal_power(es, n, 0.05, ratio) == pytest.approx(ref.power(es, n, 0.05, ratio), abs=TOL)
    assert S.proportion_effectsize(0.12, 0.10) == pytest.approx(sm_h(0.12, 0.10), abs=TOL)
    n = S.required_nobs1(0.1, 0.05, 0.8, 1.5)
    # our root is exact to 1e-9 in power; statsmodels' own root finder is looser (rtol 1e-6 on n)
    assert S.normal_power(0.1, n, 0.05, 1.5) == pytest.approx(0.8, abs=TOL)
    assert n == pytest.approx(ref.solve_power(effect_size=0.1, alpha=0.05, power=0.8, ratio=1.5), rel=1e-6)
    mde = S.minimum_detectable_effect(n, 0.05, 0.8, 1.5)
    assert mde == pytest.approx(0.1, abs=TOL)


def test_lift_ci_and_relative_delta() -> None:
    lf = S.lift(0.11, 1e-4, 0.10, 2e-4)
    assert lf.absolute == pytest.approx(0.01)
    se = np.sqrt(3e-4)
    assert lf.absolute_ci[1] - lf.absolute == pytest.approx(st.norm.ppf(0.975) * se, abs=TOL)
    assert lf.p_value == pytest.approx(2 * st.norm.sf(0.01 / se), abs=TOL)
    se_rel = np.sqrt(1e-4 / 0.01 + 0.11**2 * 2e-4 / 0.1**4)
    assert lf.relative_ci[0] == pytest.approx(0.1 - st.norm.ppf(0.975) * se_rel, abs=TOL)
    with pytest.raises(ValueError, match="control"):
        S.lift(0.1, 1e-4, 0.0, 1e-4)


def test_delta_method_variance_matches_simulation() -> None:
    """Var of sum(clicks)/sum(impressions) over many simulated user samples vs the delta-method mean."""
    rng = np.random.default_rng(7)
    sims, users = 4000, 400
    imps = rng.poisson(8, (sims, users)) + 1
    p_user = rng.beta(2, 18, (sims, users))  # users differ: clustering inflates variance
    clicks = rng.binomial(imps, p_user)
    ratios = clicks.sum(1) / imps.sum(1)
    _, v = S.ratio_moments(users, clicks.sum(1), imps.sum(1), (clicks**2).sum(1), (imps**2).sum(1),
                           (clicks * imps).sum(1))  # fmt: skip
    emp = ratios.var(ddof=1)
    # the sample variance of `sims` normal draws has relative sd sqrt(2/(sims-1)) ~ 2.2 %; allow 4 sd
    assert abs(v.mean() / emp - 1) < 4 * np.sqrt(2 / (sims - 1))
    # and the naive binomial variance is clearly smaller (users see many items)
    naive = (ratios * (1 - ratios) / imps.sum(1)).mean()
    assert naive < 0.8 * emp


def test_linearisation_equals_delta_method() -> None:
    rng = np.random.default_rng(3)
    den = rng.poisson(5, 300) + 1.0
    num = rng.binomial(den.astype(int), 0.1).astype(float)
    assert S.linearize_ratio(num, den).var(ddof=1) / 300 == pytest.approx(S.ratio_stats(num, den).var, rel=1e-12)


def test_bayes_normal_approximation_matches_sampling() -> None:
    rng = np.random.default_rng(11)
    draws = rng.normal(0.004, 0.003, 400_000)
    assert S.chance_to_beat(0.004, 0.003) == pytest.approx((draws > 0).mean(), abs=3e-3)
    assert S.expected_loss(0.004, 0.003) == pytest.approx(np.maximum(-draws, 0).mean(), rel=0.02)


def test_trend_matches_weighted_least_squares() -> None:
    rng = np.random.default_rng(5)
    x = np.arange(14.0)
    v = rng.uniform(0.5, 2.0, 14) * 1e-3
    y = 0.1 - 0.004 * x + rng.normal(0, np.sqrt(v))
    tr = S.trend_test(x, y, v)
    w = 1 / v
    X = np.column_stack([np.ones_like(x), x])
    cov = np.linalg.inv(X.T @ (w[:, None] * X))
    beta = cov @ X.T @ (w * y)
    assert tr.slope == pytest.approx(beta[1], abs=TOL) and tr.se == pytest.approx(np.sqrt(cov[1, 1]), abs=TOL)


def test_log_ratio_lift_one_scale_and_expected_loss() -> None:
    """p < alpha exactly when the log-ratio CI excludes 0; the interval is exp(log ratio +- z se) - 1; the
    expected relative loss matches sampling of the same normal on the log scale."""
    from scipy import stats as st

    for t, c, v in [(0.11, 0.10, 1e-5), (0.105, 0.10, 2e-5), (0.09, 0.10, 1e-5), (0.1, 0.1, 1e-5)]:
        lf = S.log_ratio_lift(t, v, c, v)
        se = np.sqrt(v / t**2 + v / c**2)
        assert np.isclose(lf.se, se) and np.isclose(lf.p_value, 2 * st.norm.sf(abs(np.log(t / c)) / se))
        assert np.isclose(lf.relative_ci[0], np.exp(np.log(t / c) - 1.959963984540054 * se) - 1)
        assert (lf.p_value < 0.05) == (lf.relative_ci[0] > 0 or lf.relative_ci[1] < 0)
    rng = np.random.default_rng(5)
    for d, se in [(0.02, 0.03), (-0.05, 0.02), (0.0, 0.1)]:
        draws = rng.normal(d, se, 1_000_000)
        assert np.isclose(S.expected_relative_loss(d, se), np.maximum(0, 1 - np.exp(draws)).mean(), rtol=0.02)
