"""End-to-end A/A and A/B simulations of the whole report pipeline (aggregation, CUPED from the pre-exposure
window, sequential tests, guardrails, novelty, multiplicity, verdict) on seeded simulated experiments.

Each experiment is reported once, after 28 days with data. That single look stands for every daily look
from day 14 on: the always-valid p-value is a running minimum and the always-valid interval a running
intersection, so a rejection (or a "harmed") at any earlier day is still there on day 28. A/A therefore
counts "rejected on CTR at day 28, whatever the sign" (it contains every false ship at any look) and
"harmed on day 28" (it contains every false alarm at any look).

Monte Carlo error (binomial sd of a rate over R runs): A/A, R = 40: sd = sqrt(.05 x .95 / 40) = 3.4 % at
a true 5 %; A/B, R = 30: sd = sqrt(.8 x .2 / 30) = 7.3 % at a true 80 %. The A/B bound is therefore
"observed >= 80 % - 1 sd" (a true rate of 80 % passes with probability ~0.84; a true 60 % fails with
probability ~0.93), and the power module's prediction is checked within 2.5 sd. Fixed seeds.
"""

from __future__ import annotations

import math
from functools import cache

import pytest

from reco.experiments.report import ReportConfig, build_report
from reco.experiments.simulate import SimConfig, simulate_events

RUNS_AA, RUNS_AB = 40, 30
BASE = dict(users=3000, sessions=12000, days=28, pre_days=14, purchase_rate=0.1)
#: The hardest guardrails: margin 0 ("harmed" = the always-valid interval lies wholly below 0).
GUARDRAILS = {"ctr": 0.0, "revenue_per_user": 0.0}


def _report(seed: int, lift: float) -> dict:
    t = simulate_events(SimConfig(**BASE, ctr={"control": 0.10, "treatment": 0.10 * (1 + lift)}, seed=seed))
    return build_report(t, ReportConfig(control="control", guardrails=GUARDRAILS, pre_period_days=14))


@cache
def _powered_lift() -> tuple[float, float]:
    """The mSPRT's MDE at 28 days (80 % power) as a pilot report of this design computes it."""
    pilot = _report(10_000, 0.0)
    power = pilot["comparisons"][0]["power"]
    return power["mde_relative_at_planned_days"], power["power_at_planned_days"]


@pytest.mark.slow
def test_aa_false_ship_and_false_harm_at_most_five_percent() -> None:
    rejected = harmed = shipped = 0
    for seed in range(RUNS_AA):
        rep = _report(seed, 0.0)
        c = rep["comparisons"][0]
        assert c["cuped"]["applied"] and rep["window"]["days_with_data"] == 28
        rejected += c["user_level"]["sequential"]["p_holm"] < 0.05
        harmed += bool(c["guardrails_harmed"])
        shipped += rep["decision"]["action"] == "ship"
    assert shipped <= rejected <= 0.05 * RUNS_AA
    assert harmed <= 0.05 * RUNS_AA


@pytest.mark.slow
def test_ab_ships_at_the_powered_effect() -> None:
    lift, _ = _powered_lift()
    assert 0.03 < lift < 0.3
    ships = sum(_report(1000 + seed, lift)["decision"]["action"] == "ship" for seed in range(RUNS_AB))
    sd = math.sqrt(0.8 * 0.2 / RUNS_AB)
    assert ships / RUNS_AB >= 0.8 - sd, (lift, ships)
    assert abs(ships / RUNS_AB - 0.8) < 2.5 * sd
