"""The mSPRT's power and MDE (reco.experiments.power) against simulated per-user data run through the
report's own estimator: user-level CTR by the delta method, log ratio, mSPRT read daily.

Monte Carlo error: 1,000 simulated experiments give a binomial sd of sqrt(.8 x .2 / 1000) = 1.3 % on a
power near 80 %; the tolerance is 3.5 sd plus the power module's own simulation error (4,000 paths,
0.6 %). Fixed seeds."""

from __future__ import annotations

import math

import numpy as np

from reco.experiments import power as P
from reco.experiments import stats as S

SIMS, DAYS, PER_DAY, CTR = 1000, 28, 150, 0.10


def _cumulative(rng: np.random.Generator, ctr: float) -> tuple[np.ndarray, np.ndarray]:
    """User-level CTR and its delta-method variance after each day: arrays (SIMS, DAYS). PER_DAY new users
    arrive each day with Poisson(6)+1 impressions and a Beta-distributed click probability."""
    imps = rng.poisson(6, (SIMS, DAYS, PER_DAY)) + 1
    p = rng.beta(2.0, 2.0 * (1 - ctr) / ctr, (SIMS, DAYS, PER_DAY))
    clicks = rng.binomial(imps, p).astype(float)
    imps = imps.astype(float)
    mom = [np.cumsum(m.sum(axis=2), axis=1) for m in (clicks, imps, clicks**2, imps**2, clicks * imps)]
    return S.ratio_moments(PER_DAY * np.arange(1, DAYS + 1), *mom)


def _log_ratio(rng: np.random.Generator, lift: float) -> tuple[np.ndarray, np.ndarray]:
    rc, vc = _cumulative(rng, CTR)
    rt, vt = _cumulative(rng, CTR * (1 + lift))
    return np.log(rt / rc), S.log_ratio_var(rt, vt, rc, vc)


def _tol(p: float) -> float:
    return 3.5 * math.sqrt(p * (1 - p) / SIMS) + 3.5 * math.sqrt(p * (1 - p) / P.PATHS)


def test_msprt_power_and_mde_match_simulated_experiments() -> None:
    rng = np.random.default_rng(7)
    _, v0 = _log_ratio(rng, 0.0)
    info = 1.0 / v0.mean(axis=0)  # the information a report would see, day by day
    mde = P.msprt_mde(info, DAYS, tau=0.05, alpha=0.05, power=0.8)
    d, v = _log_ratio(rng, math.expm1(mde))
    rejected = (S.msprt_pvalues(d, v, 0.05) < 0.05).any(axis=1).mean()
    assert abs(rejected - 0.8) < _tol(0.8), (mde, rejected)
    # the fixed-horizon MDE is smaller: at that effect the daily-read mSPRT has far less than 80 % power
    fix = P.fixed_horizon_mde(info[-1], 0.05, 0.8)
    assert fix < 0.8 * mde
    d, v = _log_ratio(rng, math.expm1(fix))
    at_fix = (S.msprt_pvalues(d, v, 0.05) < 0.05).any(axis=1).mean()
    predicted = P.msprt_power(fix, info, 0.05, 0.05).power(DAYS)
    assert at_fix < 0.65 and abs(at_fix - predicted) < _tol(predicted), (at_fix, predicted)


def test_plan_days_left_follow_the_projected_traffic() -> None:
    """Half-way through a linear information ramp, the days needed are where the mSPRT reaches the goal."""
    info = np.arange(1, 15) * 500.0
    out = P.plan(info, 14, target_relative_mde=0.05, planned_days=28, min_days=14, tau=0.05, alpha=0.05)
    full = P.project_information(info, 112)
    assert np.allclose(full[:30], np.arange(1, 31) * 500.0)
    needed = P.msprt_power(math.log1p(0.05), full, 0.05, 0.05).looks_needed(0.8)
    assert out["days_needed"] == max(needed, 14) and out["days_left"] == out["days_needed"] - 14
    assert 0 < out["power_at_planned_days"] < 1
    assert out["mde_relative_at_planned_days"] > out["mde_relative_fixed_horizon"] > 0
    none = P.plan(np.zeros(3), 3, target_relative_mde=0.05, planned_days=28, min_days=14, tau=0.05, alpha=0.05)
    assert none["days_needed"] is None and none["mde_relative_at_planned_days"] is None
