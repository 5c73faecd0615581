"""The report's DuckDB pass over the events (`reco.experiments.columnar`, `reco.experiments.aggregate`) against
the former Arrow/pandas pass and per-user pandas aggregation (tests/ab_reference.py): same reduced tables,
sufficient statistics (cumulative moments, daily, novelty and segment sums), novelty SE, segment statistics
and report, on a seeded lake and on an Arrow table
with duplicated event_ids, several phases, purchases with and without an arm, orphan clicks, impressions
without an arm, null and literal "unknown" breakdown values, and events that are neither."""

from __future__ import annotations

import datetime as dt
import math
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from ab_reference import (
    reference_aggregate,
    reference_breakdown_stats,
    reference_clustered_slope_se,
    reference_reduce,
)

from reco.data.lake import EventLake
from reco.experiments import analysis as A
from reco.experiments import stats as S
from reco.experiments.aggregate import aggregate
from reco.experiments.columnar import reduce_events
from reco.experiments.reading import read_events
from reco.experiments.report import ReportConfig, ReportError, report_from_aggregates
from reco.experiments.simulate import SimConfig, simulate_events

START = date(2026, 1, 3)


def _extra_rows() -> list[dict]:
    ts = dt.datetime(2026, 1, 5, 12, tzinfo=dt.UTC)
    base = dict(ts=ts, user_id="u7", item_id="m1", request_id="rx", arm="treatment", page_type=None, device=None)
    return [
        base | dict(event_id="x1", event_type="impression"),  # null page type / device -> "unknown"
        base | dict(event_id="x2", event_type="impression", item_id="m2", page_type="unknown", device="web"),
        base | dict(event_id="x3", event_type="click"),
        base | dict(event_id="x4", event_type="click", request_id="r-none"),  # orphan click
        base | dict(event_id="x5", event_type="purchase", arm=None, value=12.5),  # no arm: the user's first arm
        base | dict(event_id="x6", event_type="purchase", value=None),  # revenue unknown
        base | dict(event_id="x7", event_type="purchase", user_id="nobody", value=3.0),  # never exposed
        base | dict(event_id="x8", event_type="view"),  # neither: read, not counted
        base | dict(event_id="x9", event_type="impression", user_id="u-noarm", arm=None),
    ]


def _events() -> pa.Table:
    p1 = simulate_events(SimConfig(users=400, sessions=2500, days=6, pre_days=2, purchase_rate=0.2, seed=3,
                                   ctr={"control": 0.10, "treatment": 0.12}))  # fmt: skip
    p2 = simulate_events(SimConfig(users=400, sessions=1500, days=4, start=date(2026, 1, 7), phase=2, seed=4))
    for c in ("event_id", "request_id", "session_id"):  # phase 2's own events; the same users
        p2 = p2.set_column(p2.schema.get_field_index(c), c, pc.binary_join_element_wise("p2", p2.column(c), ""))
    p2 = p2.cast(p1.schema)
    t = pa.concat_tables([p1, p2, pa.Table.from_pylist(_extra_rows(), schema=p1.schema)])
    return pa.concat_tables([t, t.slice(0, 300)])  # duplicated event_ids (the lake keeps the first)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, object]:
    t = _events()
    root = tmp_path_factory.mktemp("columnar") / "lake"
    EventLake(root).write_partitions(t)
    return {"table": t, "lake": read_events(root, date(2025, 12, 30), date(2026, 1, 10)), "raw": t}


def _named(df: pd.DataFrame, users: pa.Array) -> pd.DataFrame:
    """User codes -> user ids, rows sorted: the engines number users differently."""
    df = df.assign(user_id=pd.Series(users.to_pylist(), dtype=object).to_numpy()[df["user_id"].to_numpy(int)])
    for c in df.columns:
        if df[c].dtype != object and not pd.api.types.is_numeric_dtype(df[c]):
            df[c] = df[c].astype(object)
    keys = [c for c in df.columns if df[c].dtype == object or c in ("day", "_phase", "first_day")]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_dtype=False, check_exact=False, rtol=1e-12)


@pytest.mark.parametrize("kind", ["table", "lake"])
def test_reduced_tables_equal(sources, kind: str) -> None:
    new, ref = reduce_events(sources[kind], threads=2, memory_limit="256MB"), reference_reduce(sources[kind])
    _same(_named(new.per_day, new.users), _named(ref.per_day, ref.users))
    _same(_named(new.purchases, new.users), _named(ref.purchases, ref.users))
    assert (new.orphans, new.versions, new.read, new.dupes) == (ref.orphans, ref.versions, ref.read, ref.dupes)
    assert new.orphans >= 1 and set(new.per_day["_phase"]) == {1, 2} and (new.dupes > 0) == (kind == "table")
    assert "unknown" in set(new.per_day["_page_type"]) and new.per_day["arm"].isna().any()


def _close(a: object, b: object, path: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), path
    else:
        assert a == b, path


def _sorted(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    df = df.assign(**{k: df[k].astype(str) for k in keys if k == "arm"})
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("kind", ["table", "lake"])
@pytest.mark.parametrize("phase", [1, 2])
def test_aggregates_and_report_equal(sources, kind: str, phase: int) -> None:
    start = START if phase == 1 else date(2026, 1, 7)
    cfg = ReportConfig(
        control="control",
        phase=phase,
        start=start,
        experiment_start=START,
        pre_period_days=2,
        traffic={"control": 0.3, "treatment": 0.7},
    )  # SRM: the simulated split is 50/50
    kw = dict(phase=phase, experiment_start=START, pre_period_days=2)
    new = aggregate(sources[kind], start, None, threads=2, memory_limit="256MB", **kw)
    ref = reference_aggregate(sources[kind], start, None, **kw)
    assert new.arms == ref.arms and new.moments.keys() == ref.moments.keys()
    for k in new.moments:
        np.testing.assert_allclose(new.moments[k], ref.moments[k], rtol=1e-9, atol=1e-9, err_msg=k)
    for name, keys in (("daily", ["day", "arm"]), ("novelty", ["arm", "k"]), ("novelty_cross", ["arm", "k", "k2"]),
                       ("segments", ["dimension", "value", "arm"])):  # fmt: skip
        _same(_sorted(getattr(new, name), keys), _sorted(getattr(ref, name), keys))
    assert (new.quality, new.model_versions, new.exposure_days) == (ref.quality, ref.model_versions, ref.exposure_days)
    assert (new.start, new.end, new.pre_window, new.pre_users) == (ref.start, ref.end, ref.pre_window, ref.pre_users)
    assert new.pre_users > 0 and new.moments["s_x2"][:, -1].min() > 0  # CUPED has a covariate to work with
    rep_new, rep_ref = report_from_aggregates(new, cfg), report_from_aggregates(ref, cfg)
    _close(rep_new, rep_ref)
    assert rep_new["srm"]["flagged"] and rep_new["data_quality"]["orphan_clicks"] >= 1
    if phase == 1:
        assert ref.extra["units"]["purchases"].sum() > 0 and new.quality["impressions_without_arm"] >= 1
        assert new.moments["s_revenue"][:, -1].sum() > 0 and rep_new["comparisons"][0]["cuped"]["applied"]


@pytest.mark.parametrize("kind", ["table", "lake"])
def test_novelty_and_segments_equal_the_per_user_statistics(sources, kind: str) -> None:
    """The novelty slope's user-clustered SE (a quadratic form of per-arm cross sums) and the segments' ratio
    statistics (per-arm sums) equal the former computation from each user's own values."""
    cfg = ReportConfig(control="control", novelty_min_users=20)
    new = aggregate(sources[kind], START, None)
    ref = reference_aggregate(sources[kind], START, None)
    mom = new.novelty.set_index(["arm", "k"])
    cols = ("n", "s_num", "s_den", "s_num2", "s_den2", "s_numden")
    parts = []
    for a, sfx in (("treatment", "_t"), ("control", "_c")):
        r, v = S.ratio_moments(*(mom.loc[a][c] for c in cols))
        parts.append(pd.DataFrame({"n": mom.loc[a]["n"], "r": r, "v": v}).add_suffix(sfx))
    j = pd.concat(parts, axis=1, join="inner")
    j = j[(j["n_t"] >= 20) & (j["n_c"] >= 20) & (j["r_c"] > 0)]
    assert len(j) >= 3
    var_k = S.relative_lift_var(j["r_t"], j["v_t"], j["r_c"], j["v_c"])
    se = A._clustered_slope_se(new.novelty_cross, mom, "treatment", "control", j, var_k)
    assert math.isclose(se, reference_clustered_slope_se(ref.extra["units"], "treatment", "control", 20), rel_tol=1e-9)
    assert A.novelty(new, "treatment", cfg)["testable"]
    rows = A.breakdowns(new.segments, "treatment", cfg)
    assert {r["dimension"] for r in rows} == {"page_type", "device", "user_type"}
    for r in rows:
        for a, key in (("treatment", "ctr_treatment"), ("control", "ctr_control")):
            n, ratio = reference_breakdown_stats(ref.extra["segments"], a, r["dimension"], r["value"])
            assert r[f"users_{a}"] == n
            if r.get(key) is not None:
                assert math.isclose(r[key], ratio, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("traffic", "message"),
    [
        ({"control": 0.4, "treatment": 0.4, "empty": 0.2}, "no impressions"),  # an empty arm
        ({"control": 0.5, "treatment_x": 0.5}, "no impressions"),  # an arm the events do not know
        ({"control": 1.0}, "no traffic share"),  # an arm in the events without a share
    ],
)
def test_arm_errors_equal(sources, traffic: dict, message: str) -> None:
    cfg = ReportConfig(control="control", start=START, traffic=traffic)
    for agg in (aggregate, reference_aggregate):
        with pytest.raises(ReportError, match=message):
            report_from_aggregates(agg(sources["lake"], START), cfg)


def test_no_impressions_is_the_same_clear_error() -> None:
    t = _events()
    clicks = t.filter(pc.equal(t.column("event_type"), "click"))
    for reducer in (reduce_events, reference_reduce):
        with pytest.raises(ReportError, match="no impressions in the selected window"):
            reducer(clicks)
