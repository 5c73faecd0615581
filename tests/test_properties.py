"""Property tests (hypothesis): the event schema, experiment assignment and the statistics functions.

Fixed seeds (`derandomize=True`) and bounded example counts keep the file CI-cheap and reproducible.
`tests/test_stats_props.py` (owned by the statistics module) covers the z-test, lift CIs, Holm/BH and
the mSPRT p-values; the statistics properties here are the complementary ones.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as hs
from pydantic import ValidationError

from reco.data.events import EVENT_COLUMNS, Event, EventType, PageType, events_to_table
from reco.data.lake import EventLake
from reco.experiments import stats as S
from reco.experiments.assignment import ArmConfig, ExperimentSpec, assign, bucket

FAST = settings(max_examples=80, deadline=None, derandomize=True)
SLOW = settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies

ids = hs.text(min_size=1, max_size=128)  # any unicode (no surrogates: not representable in UTF-8)
short = hs.text(max_size=32)
offsets = hs.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
# Whole microseconds (the lake's resolution), years with four digits, aware or naive (naive = UTC).
timestamps = hs.one_of(
    hs.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(2200, 1, 1), timezones=offsets),
    hs.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(2200, 1, 1)),
)
propensities = hs.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_nan=False)
values = hs.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False)


@hs.composite
def event_dicts(draw: hs.DrawFn, event_id: str | None = None) -> dict[str, Any]:
    """A valid event as the API receives it (optional fields present or absent)."""
    event_type = draw(hs.sampled_from(list(EventType)))
    d: dict[str, Any] = {
        "event_id": event_id if event_id is not None else draw(ids),
        "ts": draw(timestamps),
        "user_id": draw(ids),
        "item_id": draw(ids),
        "event_type": str(event_type),
    }
    optional = {
        "session_id": ids,
        "request_id": ids,
        "position": hs.integers(1, 10_000),
        "arm": ids,
        "model_version": hs.text(max_size=128),
        "propensity": propensities,
        "is_exploration": hs.booleans(),
        "page_type": hs.sampled_from([str(p) for p in PageType]),
        "device": short,
    }
    for name, strategy in optional.items():
        if draw(hs.booleans()):
            d[name] = draw(strategy)
    if event_type == EventType.purchase and draw(hs.booleans()):
        d["value"] = draw(values)
    return d


def _row_to_event(row: dict[str, Any]) -> Event:
    row = {k: v for k, v in row.items() if k in EVENT_COLUMNS}
    return Event.model_validate(row)


# --------------------------------------------------------------------------- event schema


@FAST
@given(event_dicts())
def test_valid_event_round_trips_through_json_and_arrow(d: dict[str, Any]) -> None:
    e = Event.model_validate(d)
    assert e.ts.tzinfo is not None and e.ts.utcoffset() == timedelta(0)
    assert Event.model_validate_json(e.model_dump_json()) == e  # the stream's encoding
    table = events_to_table([e])
    assert table.column_names == list(EVENT_COLUMNS)
    assert _row_to_event(table.to_pylist()[0]) == e


@SLOW
@given(hs.lists(event_dicts(), min_size=1, max_size=20), hs.randoms(use_true_random=False))
def test_valid_events_round_trip_through_the_lake_unchanged(dicts: list[dict[str, Any]], rnd) -> None:
    events = [Event.model_validate({**d, "event_id": f"e{i}"}) for i, d in enumerate(dicts)]
    shuffled = events + [rnd.choice(events) for _ in range(len(events) // 2)]  # redelivered duplicates
    rnd.shuffle(shuffled)
    with tempfile.TemporaryDirectory(prefix="reco-props-lake-") as root:
        lake = EventLake(root)
        added = lake.append(shuffled)
        assert sum(added.values()) == len(events)
        back = {e.event_id: e for e in map(_row_to_event, lake.read().to_pylist())}
    assert back == {e.event_id: e for e in events}


def _invalid(draw: hs.DrawFn) -> dict[str, Any]:
    """A valid event with exactly one rule broken."""
    d = draw(event_dicts())
    breakage = draw(hs.sampled_from(["propensity", "value", "position", "unknown", "empty_id", "type", "long_id"]))
    if breakage == "propensity":
        d["propensity"] = draw(
            hs.one_of(hs.floats(max_value=0.0), hs.floats(min_value=1.0, exclude_min=True), hs.just(math.nan))
        )
    elif breakage == "value":  # revenue on a non-purchase event, or negative / non-finite revenue
        if draw(hs.booleans()):
            d["event_type"] = draw(hs.sampled_from([str(t) for t in EventType if t != EventType.purchase]))
            d["value"] = draw(values)
        else:
            d["event_type"] = "purchase"
            d["value"] = draw(
                hs.one_of(hs.floats(max_value=0.0, exclude_max=True), hs.sampled_from([math.inf, math.nan]))
            )
    elif breakage == "position":
        d["position"] = draw(hs.one_of(hs.integers(max_value=0), hs.integers(min_value=10_001)))
    elif breakage == "unknown":
        name = draw(hs.text(min_size=1, max_size=20).filter(lambda s: s not in EVENT_COLUMNS))
        d[name] = draw(hs.one_of(hs.none(), hs.integers(), short))
    elif breakage == "empty_id":
        d[draw(hs.sampled_from(["event_id", "user_id", "item_id"]))] = ""
    elif breakage == "type":
        d["event_type"] = draw(short.filter(lambda s: s not in {str(t) for t in EventType}))
    else:
        d["event_id"] = draw(hs.text(min_size=129, max_size=200))
    return d


@FAST
@given(hs.composite(_invalid)())
def test_invalid_event_always_raises_validation_error(d: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):  # never a TypeError/ValueError/KeyError escaping as a 500
        Event.model_validate(d)


@FAST
@given(hs.dictionaries(hs.text(max_size=12), hs.one_of(hs.none(), hs.integers(), hs.floats(), short), max_size=8))
def test_arbitrary_mappings_raise_validation_error_or_validate(d: dict[str, Any]) -> None:
    with contextlib.suppress(ValidationError):  # the only acceptable failure; anything else fails the test
        Event.model_validate(d)


# --------------------------------------------------------------------------- assignment


@hs.composite
def experiments(draw: hs.DrawFn) -> ExperimentSpec:
    n = draw(hs.integers(1, 5))
    raw = draw(hs.lists(hs.integers(0, 100), min_size=n, max_size=n).filter(lambda w: sum(w) > 0))
    shares = [w / sum(raw) for w in raw]
    shares[-1] = 1.0 - math.fsum(shares[:-1])  # exact sum; may be -1e-17 in theory: clamp
    shares[-1] = max(0.0, shares[-1])
    arms = tuple(ArmConfig(name=f"a{i}", traffic=s, alias=f"arm-a{i}") for i, s in enumerate(shares))
    return ExperimentSpec(name="exp", salt=draw(hs.text(min_size=1, max_size=40)), control="a0", arms=arms)


@FAST
@given(salt=hs.text(min_size=1, max_size=64), user=ids)
def test_bucket_deterministic_and_in_unit_interval(salt: str, user: str) -> None:
    b = bucket(salt, user)
    assert 0.0 <= b < 1.0 and b == bucket(salt, user)


@FAST
@given(experiments(), hs.lists(ids, min_size=1, max_size=30))
def test_assignment_deterministic_and_only_to_arms_with_traffic(exp: ExperimentSpec, users: list[str]) -> None:
    for user in users:
        a = assign(exp, user)
        assert a == assign(exp, user)
        assert exp.arm(a.arm).traffic > 0 and a.alias == exp.arm(a.arm).alias
        edges = np.cumsum([arm.traffic for arm in exp.arms])
        index = [arm.name for arm in exp.arms].index(a.arm)
        lo = 0.0 if index == 0 else edges[index - 1]
        assert lo <= a.bucket < edges[index] or index == len(exp.arms) - 1


@settings(max_examples=10, deadline=None, derandomize=True)
@given(experiments())
def test_assignment_shares_match_traffic(exp: ExperimentSpec) -> None:
    n = 4000
    counts = {a.name: 0 for a in exp.arms}
    for u in range(n):
        counts[assign(exp, f"user-{u}").arm] += 1
    for arm in exp.arms:  # 5 binomial standard deviations (plus rounding slack): false alarm ~ 1e-6
        sd = math.sqrt(n * arm.traffic * (1 - arm.traffic))
        assert abs(counts[arm.name] - n * arm.traffic) <= 5 * sd + 1


def test_assignments_of_two_salts_are_independent() -> None:
    """Changing one experiment's salt reshuffles it independently of the other: the 2x2 contingency of
    (arm under salt A, arm under salt B) over many users passes a chi-square independence test."""
    arms = (ArmConfig(name="control", traffic=0.5, alias="arm-control"),
            ArmConfig(name="treatment", traffic=0.5, alias="arm-treatment"))  # fmt: skip
    a = ExperimentSpec(name="a", salt="salt-a", arms=arms)
    b = ExperimentSpec(name="b", salt="salt-b", arms=arms)
    table = np.zeros((2, 2))
    names = ["control", "treatment"]
    for u in range(20_000):
        table[names.index(assign(a, f"u{u}").arm), names.index(assign(b, f"u{u}").arm)] += 1
    from scipy.stats import chi2_contingency

    assert chi2_contingency(table).pvalue > 1e-3
    # And the same salt reproduces the same split exactly.
    same = ExperimentSpec(name="a2", salt="salt-a", arms=arms)
    assert all(assign(a, f"u{u}").arm == assign(same, f"u{u}").arm for u in range(1000))


# --------------------------------------------------------------------------- statistics

pos = hs.floats(min_value=1e-6, max_value=1e6)
means = hs.floats(min_value=-1e6, max_value=1e6)


@FAST
@given(m1=means, v1=pos, n1=hs.integers(2, 10**6), m0=means, v0=pos, n0=hs.integers(2, 10**6))
def test_welch_pvalue_in_unit_interval_and_symmetric(m1, v1, n1, m0, v0, n0) -> None:
    t, df, p = S.welch_ttest(m1, v1, n1, m0, v0, n0)
    t2, _, p2 = S.welch_ttest(m0, v0, n0, m1, v1, n1)
    assert 0.0 <= float(p) <= 1.0 and df > 0
    assert float(t) == pytest.approx(-float(t2)) and float(p) == pytest.approx(float(p2))


@FAST
@given(hs.lists(hs.integers(1, 10**6), min_size=2, max_size=6), hs.data())
def test_srm_pvalue_in_unit_interval_and_exact_split_not_flagged(observed: list[int], data) -> None:
    shares = np.array(data.draw(hs.lists(hs.floats(0.01, 1.0), min_size=len(observed), max_size=len(observed))))
    s = S.srm_test(np.array(observed), shares)
    assert 0.0 <= s.p_value <= 1.0 and s.chi2 >= 0
    assert s.flagged == (s.p_value < S.SRM_ALPHA)
    exact = S.srm_test(np.array([1000 * k for k in range(1, len(observed) + 1)]),
                       np.arange(1, len(observed) + 1, dtype=float))  # fmt: skip
    assert exact.p_value == pytest.approx(1.0) and not exact.flagged


@FAST
@given(d=hs.floats(-10, 10), se=hs.floats(1e-4, 10))
def test_bayesian_summaries_bounded(d: float, se: float) -> None:
    ctb = float(S.chance_to_beat(d, se))
    assert 0.0 <= ctb <= 1.0
    assert float(S.expected_loss(d, se)) >= -1e-12
    assert (ctb >= 0.5) == (d >= 0) or abs(d) < 1e-12


@FAST
@given(d=hs.floats(-1, 1), v=hs.floats(1e-6, 1.0), tau=hs.floats(0.01, 1.0), alpha=hs.floats(0.001, 0.5))
def test_msprt_first_look_ci_contains_the_estimate(d: float, v: float, tau: float, alpha: float) -> None:
    lo, hi = S.msprt_ci(np.array([d]), np.array([v]), tau, alpha)
    assert lo[0] <= d <= hi[0]
    p = S.msprt_pvalues(np.array([d]), np.array([v]), tau)
    # Duality at one look: 0 is outside the (1 - alpha) interval exactly when p < alpha.
    assume(abs(float(p[0]) - alpha) > 1e-9)
    assert (not lo[0] <= 0.0 <= hi[0]) == (float(p[0]) < alpha)


@FAST
@given(
    t=hs.floats(0.001, 1), c=hs.floats(0.001, 1), vt=hs.floats(1e-10, 1e-2), vc=hs.floats(1e-10, 1e-2),
)  # fmt: skip
def test_lift_pvalue_and_ci_agree(t: float, c: float, vt: float, vc: float) -> None:
    lf = S.lift(t, vt, c, vc, 0.05)
    assert 0.0 <= lf.p_value <= 1.0
    zero_outside = not lf.absolute_ci[0] <= 0.0 <= lf.absolute_ci[1]
    assume(abs(lf.p_value - 0.05) > 1e-6)
    assert zero_outside == (lf.p_value < 0.05)


def test_ts_naive_is_utc_and_aware_is_converted() -> None:
    naive = Event(event_id="e", ts=datetime(2026, 1, 1, 12), user_id="u", item_id="i", event_type="view")
    aware = Event(event_id="e", ts=datetime(2026, 1, 1, 14, tzinfo=timezone(timedelta(hours=2))), user_id="u",
                  item_id="i", event_type="view")  # fmt: skip
    assert naive.ts == aware.ts == datetime(2026, 1, 1, 12, tzinfo=UTC)
