"""Power and days-to-decision for the test that actually decides: the mSPRT read once a day.

A fixed-horizon power formula overstates what a sequential test can do at the same sample size (at
the fixed-horizon "required" n, a tau = 0.05 mSPRT has about 50 % power, not 80 %). So the report
simulates the mSPRT itself. With a known daily *information* sequence ``I_k = 1 / Var(estimate after
day k)``, the cumulative estimate is a Gaussian random walk in information time:
``d_k = S_k / I_k`` with ``S_k = sum_j (delta dI_j + sqrt(dI_j) Z_j)``, ``Z ~ N(0, 1)`` (independent
increments: each day adds its information). Each simulated path is run through the same
`stats.msprt_lambda` rule the report uses (reject when ``Lambda_k >= 1/alpha`` at any look). Common
random numbers (one seeded ``Z`` matrix) make power monotone in the effect, so the MDE is found by
bisection. tests/test_power.py checks the figures against simulated per-user data run through the
report's own estimator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from reco.experiments import stats as S

#: Simulated paths per power figure: Monte Carlo sd of a power near 0.8 is sqrt(.8 * .2 / 4000) ~ 0.6 %.
PATHS = 4000


@dataclass(frozen=True)
class SequentialPower:
    """Power of the daily-read mSPRT for one effect over looks 1..K (arrays by look)."""

    effect: float  # log-ratio effect
    reject_by_look: np.ndarray  # P(rejected at or before look k)

    def power(self, look: int) -> float:
        """P(the test has rejected by `look` (1-based))."""
        if look < 1:
            return 0.0
        return float(self.reject_by_look[min(look, self.reject_by_look.size) - 1])

    def looks_needed(self, power: float) -> int | None:
        """First look at which the rejection probability reaches `power` (None: not within the horizon)."""
        hit = np.flatnonzero(self.reject_by_look >= power)
        return int(hit[0]) + 1 if hit.size else None


def project_information(observed: np.ndarray, horizon: int, recent: int = 7) -> np.ndarray:
    """Information (1 / variance) after each day up to `horizon`: the observed days as they are, later days
    growing by the mean daily gain of the last `recent` observed days (the current traffic), never less
    than 0. Days without a finite positive variance yet count as no information.

    >>> project_information(np.array([1.0, 2.0, 3.0]), 5).tolist()
    [1.0, 2.0, 3.0, 4.0, 5.0]
    """
    obs = np.where(np.isfinite(observed) & (observed > 0), observed, 0.0)
    obs = np.maximum.accumulate(obs) if obs.size else obs
    if horizon <= obs.size:
        return obs[:horizon].copy()
    if obs.size == 0:
        return np.zeros(horizon)
    k = min(recent, obs.size)
    gain = (obs[-1] - (obs[-k - 1] if obs.size > k else 0.0)) / k
    extra = obs[-1] + max(gain, 0.0) * np.arange(1, horizon - obs.size + 1)
    return np.concatenate([obs, extra])


def _paths(info: np.ndarray, paths: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardised noise walks ``sum sqrt(dI) Z`` (paths x looks) and the information increments."""
    d_info = np.diff(info, prepend=0.0)
    z = np.random.default_rng(seed).standard_normal((paths, info.size))
    return np.cumsum(np.sqrt(np.maximum(d_info, 0.0)) * z, axis=1), info


def msprt_power(
    effect: float, info: np.ndarray, tau: float, alpha: float, paths: int = PATHS, seed: int = 0
) -> SequentialPower:
    """Rejection probability by look of the mSPRT (mixing sd `tau`, level `alpha`) when the true log-ratio
    effect is `effect` and the information after look k is ``info[k-1]``.

    >>> sp = msprt_power(0.0, np.arange(1, 29) * 4000.0, 0.05, 0.05)
    >>> sp.power(28) < 0.05
    True
    """
    noise, info = _paths(np.asarray(info, dtype=float), paths, seed)
    return _power_from(effect, noise, info, tau, alpha)


def _power_from(effect: float, noise: np.ndarray, info: np.ndarray, tau: float, alpha: float) -> SequentialPower:
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(info > 0, 1.0 / info, np.inf)
        d = np.where(info > 0, effect + noise / info, 0.0)
    lam = S.msprt_lambda(d, v, tau)
    lam = np.where(np.isfinite(lam), lam, 0.0)
    rejected = np.maximum.accumulate(lam >= 1.0 / alpha, axis=1)
    return SequentialPower(effect, rejected.mean(axis=0))


def msprt_mde(
    info: np.ndarray, look: int, tau: float, alpha: float, power: float = 0.8, paths: int = PATHS, seed: int = 0
) -> float:
    """Smallest positive log-ratio effect that the mSPRT rejects by `look` with probability `power`
    (bisection on common random numbers); inf when there is no information.

    >>> info = np.arange(1, 29) * 4000.0
    >>> mde = msprt_mde(info, 28, 0.05, 0.05)
    >>> 0.01 < mde < 0.02 and abs(msprt_power(mde, info, 0.05, 0.05).power(28) - 0.8) < 0.01
    True
    """
    info = np.asarray(info, dtype=float)[:look]
    if info.size == 0 or info[-1] <= 0:
        return math.inf
    noise, info = _paths(info, paths, seed)
    lo, hi = 0.0, 10.0 / math.sqrt(info[-1])
    while _power_from(hi, noise, info, tau, alpha).power(look) < power:
        lo, hi = hi, hi * 2.0
        if hi > 5.0:
            return math.inf
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if _power_from(mid, noise, info, tau, alpha).power(look) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def fixed_horizon_mde(info_at_horizon: float, alpha: float, power: float = 0.8) -> float:
    """Log-ratio MDE of the two-sided fixed-horizon z-test: ``(z_{1-a/2} + z_power) / sqrt(I)``.

    >>> round(fixed_horizon_mde(10_000.0, 0.05), 4)
    0.028
    """
    if info_at_horizon <= 0:
        return math.inf
    return float((st.norm.isf(alpha / 2.0) + st.norm.ppf(power)) / math.sqrt(info_at_horizon))


def plan(
    observed_info: np.ndarray,
    days_with_data: int,
    *,
    target_relative_mde: float,
    planned_days: int,
    min_days: int,
    tau: float,
    alpha: float,
    power: float = 0.8,
    max_days: int | None = None,
) -> dict[str, float | int | None]:
    """The power table of one comparison at the current traffic: the mSPRT's MDE at the planned horizon,
    its power there for the target MDE, the days it needs for that power, and the days left (at least until
    `min_days`). `alpha` is the per-comparison level the decision uses (Bonferroni over the decision family,
    Holm's first step). Relative effects are ``exp(log effect) - 1``.
    """
    horizon = max_days or 4 * planned_days
    info = project_information(np.asarray(observed_info, dtype=float), horizon)
    target = math.log1p(target_relative_mde)
    seq = msprt_power(target, info, tau, alpha)
    needed = seq.looks_needed(power)
    mde_seq = msprt_mde(info, planned_days, tau, alpha, power)
    mde_fix = fixed_horizon_mde(float(info[planned_days - 1]) if info.size >= planned_days else 0.0, alpha, power)
    return {
        "method": "simulated mSPRT read daily, information projected at the current daily traffic",
        "alpha_per_comparison": alpha,
        "target_relative_mde": target_relative_mde,
        "power_at_planned_days": seq.power(planned_days),
        "mde_relative_at_planned_days": math.expm1(mde_seq) if math.isfinite(mde_seq) else None,
        "mde_relative_fixed_horizon": math.expm1(mde_fix) if math.isfinite(mde_fix) else None,
        "days_needed": max(needed, min_days) if needed is not None else None,
        "days_left": max(max(needed, min_days) - days_with_data, 0) if needed is not None else None,
        "horizon_searched": horizon,
        "monte_carlo_paths": PATHS,
    }
