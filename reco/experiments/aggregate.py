"""Events -> the sufficient statistics the A/B statistics run on, for one phase of one experiment.

One DuckDB session does all of it (`reco.experiments.columnar` reduces the events to one row per user x arm
x day x phase x page type x device; the SQL below goes on from there): the per (user, arm, day) units of the
phase, purchases attached, each user's first exposure, new/returning type and pre-period covariate, the
per-user cumulative sums of every day, the per-user totals per segment, the novelty moments. Python only
sees per arm x day (x segment, x days since exposure) sums, never a per-user table: the report over 100M
events holds a few MB in pandas (docs/benchmarks.md "A/B report at 10M and 100M events").

Counting rules (docs/ab-report.md): duplicated `event_id`s count once; an impression is *clicked* when a
click with the same (request_id, item_id) exists (so clicks <= impressions); a click without its impression
is an orphan; users are the randomisation unit. Only impressions of the analysed phase (`phase` column, null = 1)
from the phase's first day on are experiment data; the days before the *experiment's* first day (not
the phase's: later phases' "before" was already treated) are the CUPED pre-exposure window.

Floating point: every sum of counts (clicks, impressions, purchases, their squares and cross products, the
pre-period clicks and impressions) is an exact integer sum; the covariate terms are combined from those
integer sums in Python (x = pre clicks - R_pre pre impressions is linear in them), so the report does not
depend on DuckDB's thread scheduling. Only revenue is a floating-point sum (`fsum`, compensated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from reco.experiments import columnar
from reco.experiments.reading import LakeScan, ReportError, dedup_events

__all__ = ["DIMENSIONS", "EPOCH", "Aggregates", "aggregate", "dedup_events", "moments_from_sums"]

EPOCH = date(1970, 1, 1)
#: Breakdown dimensions: impression attributes (a user's CTR on that page type / device) and a user one.
DIMENSIONS = ("page_type", "device", "user_type")
#: Per-user cumulative columns whose sums and sums of squares are tracked day by day.
VALUE_COLUMNS = ("clicks", "imps", "purchases", "revenue")
#: Per (arm, day) sums of increments (`moments_from_sums`): the count columns (exact integers) and revenue.
DAY_SUMS = (
    *("n", "f_pc", "f_pi", "f_pc2", "f_pcpi", "f_pi2", "s_clicks", "s_clicks2", "s_imps", "s_imps2"),
    *("s_purchases", "s_purchases2", "s_revenue", "s_revenue2", "s_ci", "c_pc", "c_pi", "i_pc", "i_pi"),
)


@dataclass
class Aggregates:
    """The sufficient statistics of one phase (users = the unit; sums over an arm's users)."""

    arms: list[str]  # arms with units in the phase's window, sorted
    # (arm, day) arrays over start..end of the sums over each arm's users of their cumulative values after each
    # day (`moments_from_sums`): n, s_<col>, s_<col>2 (col in VALUE_COLUMNS), s_ci, s_x, s_x2, s_cx, s_ix
    moments: dict[str, np.ndarray]
    daily: pd.DataFrame  # per (day, arm): users (units that day), imps, clicks
    # per (arm, k = days since the user's first exposure): n, s_num, s_den, s_num2, s_den2, s_numden (num = clicks,
    # den = imps of the users active k days after their first exposure)
    novelty: pd.DataFrame
    # per (arm, k, k2): sums over users of c_k c_k2, c_k n_k2, n_k n_k2 (c clicks, n imps on day k after exposure)
    novelty_cross: pd.DataFrame
    # per (arm, dimension, value): users, s_clicks, s_imps, s_clicks2, s_imps2, s_ci of the users' totals there
    segments: pd.DataFrame
    model_versions: dict[str, list[str]]
    quality: dict[str, int]
    start: date
    end: date
    exposure_days: list[date]  # days of the phase with at least one exposure
    phase: int = 1
    pre_window: tuple[date, date] | None = None  # the CUPED pre-exposure window asked for
    pre_users: int = 0  # users with impressions in it
    extra: dict[str, object] = field(default_factory=dict)


def _i(d: date) -> int:
    return (d - EPOCH).days


def _d(i: int) -> date:
    return EPOCH + timedelta(days=int(i))


def aggregate(
    source: pa.Table | LakeScan,
    start: date | None = None,
    end: date | None = None,
    *,
    phase: int = 1,
    experiment_start: date | None = None,
    pre_period_days: int = 0,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> Aggregates:
    """Events -> `Aggregates` of `phase`, from `start` (None: the phase's first exposure day) to `end`.
    The pre-exposure window is the `pre_period_days` before `experiment_start` (default `start`)."""
    with columnar.session(threads or columnar.THREADS, memory_limit or columnar.MEMORY_LIMIT) as con:
        red = columnar.reduce_in(con, source)
        return _aggregate_sql(con, red, start, end, phase, experiment_start, pre_period_days)


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple:
    return con.execute(sql).fetchone()


def _aggregate_sql(
    con: duckdb.DuckDBPyConnection,
    red: columnar.ReducedIn,
    start: date | None,
    end: date | None,
    phase: int,
    experiment_start: date | None,
    pre_days: int,
) -> Aggregates:
    # `pdy`: one row per (uid, arm, day, ph, page_type, device): imps, clicks; `pb`: purchases per (uid, arm, day, ph)
    armed_lo, first_exposed_i, max_day = _one(
        con,
        f"""SELECT min(day) FILTER (arm IS NOT NULL AND ph = {phase}),
        min(day) FILTER (arm IS NOT NULL), max(day) FROM pdy""",
    )
    if armed_lo is None:
        raise ReportError(f"no impressions with an arm in phase {phase} in the selected window")
    start_i = _i(start) if start else int(armed_lo)
    end_i = _i(end) if end else int(max_day)
    win = f"day BETWEEN {start_i} AND {end_i}"
    exp = f"arm IS NOT NULL AND ph = {phase} AND {win}"
    n_exp, no_arm, other_phase = _one(
        con,
        f"""SELECT count(*) FILTER ({exp}),
        COALESCE(sum(imps) FILTER ({win} AND arm IS NULL), 0),
        COALESCE(sum(imps) FILTER ({win} AND arm IS NOT NULL AND ph <> {phase}), 0) FROM pdy""",
    )
    if n_exp == 0:
        raise ReportError(f"no impressions with an arm in phase {phase} in the experiment window")
    # The covariate window must end before the first day any arm was exposed: a phase recorded after its
    # traffic (a backfill, a promotion dated today) would otherwise put the experiment's own days into the
    # "pre-exposure" CTR, and CUPED would regress the effect away.
    exp_start = min(experiment_start or _d(start_i), _d(first_exposed_i))
    lo, hi = _i(exp_start) - pre_days, _i(exp_start)

    # per (user, page type, device) of the experiment (days summed away): the segments' source
    con.execute(f"""CREATE TEMP TABLE seg0 AS SELECT uid, arm, page_type, device,
        CAST(sum(imps) AS BIGINT) AS imps, CAST(sum(clicks) AS BIGINT) AS clicks FROM pdy WHERE {exp} GROUP BY ALL""")
    con.execute(f"""CREATE TEMP TABLE units0 AS SELECT uid, arm, day, CAST(sum(imps) AS BIGINT) AS imps,
        CAST(sum(clicks) AS BIGINT) AS clicks FROM pdy WHERE {exp} GROUP BY ALL""")
    # Purchases of the phase's window: one without an arm goes to the user's first arm (first exposure; on a tie
    # the first arm by name); purchases of users never exposed in the phase, or of another phase, are not part of it.
    buys = f"ph = {phase} AND day BETWEEN {start_i} AND {end_i}"
    if _one(con, f"SELECT count(*) FROM pb WHERE {buys}")[0] == 0:  # none (no shop events): no outer join
        con.execute("""CREATE TEMP VIEW units AS SELECT uid, arm, day, imps, clicks, CAST(0 AS BIGINT) AS purchases,
            CAST(0 AS DOUBLE) AS revenue FROM units0""")  # a view: no copy of the table
    else:
        con.execute(f"""CREATE TEMP TABLE units AS WITH farm AS (
                SELECT uid, first(arm ORDER BY day, arm) AS farm FROM units0 GROUP BY uid),
            buys AS (SELECT b.uid, COALESCE(b.arm, f.farm) AS arm, b.day, CAST(sum(b.purchases) AS BIGINT) AS purchases,
                COALESCE(fsum(b.revenue), 0) AS revenue FROM pb b JOIN farm f ON b.uid = f.uid
                WHERE b.{buys.replace(" AND day", " AND b.day")} GROUP BY ALL)
            SELECT COALESCE(a.uid, b.uid) AS uid, COALESCE(a.arm, b.arm) AS arm, COALESCE(a.day, b.day) AS day,
                COALESCE(a.imps, 0) AS imps, COALESCE(a.clicks, 0) AS clicks,
                COALESCE(b.purchases, 0) AS purchases, COALESCE(b.revenue, 0.0) AS revenue
            FROM units0 a FULL OUTER JOIN buys b ON a.uid = b.uid AND a.arm = b.arm AND a.day = b.day""")
        con.execute("DROP TABLE units0")
    # One row per (user, arm): first exposure day; "returning" when the user has impressions (any arm or none)
    # on an earlier day in what was read (the pre-exposure window and the experiment so far), else "new";
    # the pre-period clicks and impressions (any arm) of the CUPED covariate x = pc - R_pre pi (0 without).
    pre = f"day >= {lo} AND day < {hi}"
    # (with the user's totals in the window: the "user_type" segment's values)
    con.execute(f"""CREATE TEMP TABLE users AS WITH f AS (SELECT uid, arm, min(day) AS first_day,
            CAST(sum(imps) AS BIGINT) AS ti, CAST(sum(clicks) AS BIGINT) AS tc FROM units GROUP BY ALL),
        seen AS (SELECT uid, min(day) AS seen, CAST(COALESCE(sum(imps) FILTER ({pre}), 0) AS BIGINT) AS pi,
            CAST(COALESCE(sum(clicks) FILTER ({pre}), 0) AS BIGINT) AS pc FROM pdy GROUP BY uid)
        SELECT f.uid, f.arm, f.first_day, s.seen < f.first_day AS returning, s.pc, s.pi, f.ti, f.tc
        FROM f JOIN seen s ON f.uid = s.uid""")
    pre_c, pre_i = _one(con, f"SELECT sum(clicks), sum(imps) FROM pdy WHERE day >= {lo} AND day < {hi}")
    r_pre = float(pre_c) / float(pre_i) if pre_i else 0.0
    con.execute("""CREATE TEMP TABLE uc AS SELECT u.uid, u.arm, u.day, u.day - s.first_day AS k, s.pc, s.pi,
        u.clicks, u.imps, u.purchases, u.revenue FROM units u JOIN users s ON u.uid = s.uid AND u.arm = s.arm""")

    def d(expr: str) -> str:  # a sum of integers in doubles: exact (so order-independent) while below 2^53
        return f"COALESCE(sum(CAST({expr} AS DOUBLE)), 0)"

    # The sums over an arm's users of their cumulative values after each day t. The linear ones are sums of
    # per-day increments; a square or product of cumulative values is a sum over pairs of the user's active days:
    # (sum_{d <= t} c_d)(sum_{d2 <= t} n_d2) = sum over pairs (d, d2) with max(d, d2) <= t, so the pairs summed
    # by (arm, max(d, d2)) and cumulated over days give them, without a window over each user's days. The same
    # pairs by (arm, k, k2) (days since first exposure) are what the novelty slope's user-clustered variance is a
    # quadratic form of (`analysis._clustered_slope_se`). A user has at most one row per day: a few pairs each,
    # and only pairs with k <= k2 are formed (the others are their mirror images).
    names = dict(con.execute("SELECT a, arm FROM arms").fetchall())  # arm code -> name
    lin = con.sql(f"""SELECT arm, day, {d("CAST(k = 0 AS INTEGER)")} AS n,
        {d("CASE WHEN k = 0 THEN pc END")} AS f_pc, {d("CASE WHEN k = 0 THEN pi END")} AS f_pi,
        {d("CASE WHEN k = 0 THEN pc * pc END")} AS f_pc2, {d("CASE WHEN k = 0 THEN pc * pi END")} AS f_pcpi,
        {d("CASE WHEN k = 0 THEN pi * pi END")} AS f_pi2, {d("clicks")} AS s_clicks, {d("imps")} AS s_imps,
        {d("purchases")} AS s_purchases, COALESCE(fsum(revenue), 0) AS s_revenue,
        {d("clicks * pc")} AS c_pc, {d("clicks * pi")} AS c_pi, {d("imps * pc")} AS i_pc, {d("imps * pi")} AS i_pi
        FROM uc GROUP BY arm, day""").df()
    pairs = con.sql(f"""SELECT a.arm, a.k, b.k AS k2, b.day,
        {d("a.clicks * b.clicks")} AS cc, {d("a.clicks * b.imps")} AS cn, {d("a.imps * b.clicks")} AS nc,
        {d("a.imps * b.imps")} AS nn, {d("a.purchases * b.purchases")} AS pp,
        COALESCE(fsum(a.revenue * b.revenue), 0) AS rr
        FROM uc a JOIN uc b ON a.uid = b.uid AND a.arm = b.arm AND a.k <= b.k GROUP BY ALL""").df()
    w = np.where(pairs["k"] == pairs["k2"], 1.0, 2.0)  # an off-diagonal pair stands for itself and its mirror
    sq = pairs[["arm", "day"]].assign(
        s_clicks2=w * pairs["cc"],
        s_imps2=w * pairs["nn"],
        s_purchases2=w * pairs["pp"],
        s_revenue2=w * pairs["rr"],
        s_ci=pairs["cn"] + np.where(w == 2.0, pairs["nc"], 0.0),
    )
    sq = sq.groupby(["arm", "day"], as_index=False).sum()
    off = pairs[pairs["k"] < pairs["k2"]]
    mirror = off.assign(k=off["k2"], k2=off["k"], cn=off["nc"])  # sum c_k2 n_k is the mirror's c-n sum
    cross = pd.concat([pairs, mirror], ignore_index=True).groupby(["arm", "k", "k2"], as_index=False)
    cross = cross[["cc", "cn", "nn"]].sum().assign(arm=lambda f: f["arm"].map(names))
    sums = lin.merge(sq, on=["arm", "day"], how="outer").fillna(0.0)
    sums["arm"] = sums["arm"].map(names)
    arms = sorted(str(a) for a in lin["arm"].map(names).unique())
    n_days = end_i - start_i + 1
    moments = moments_from_sums(sums, arms, n_days, start_i, r_pre)
    daily = con.sql("""SELECT day, arm, count(*) AS users, CAST(sum(imps) AS BIGINT) AS imps,
        CAST(sum(clicks) AS BIGINT) AS clicks FROM units GROUP BY ALL ORDER BY day, arm""").df()
    novelty = con.sql(f"""SELECT arm, k, CAST(count(*) AS DOUBLE) AS n, {d("clicks")} AS s_num,
        {d("imps")} AS s_den, {d("clicks * clicks")} AS s_num2, {d("imps * imps")} AS s_den2,
        {d("clicks * imps")} AS s_numden FROM uc GROUP BY ALL ORDER BY arm, k""").df()
    seg_stats = ", ".join(
        [
            "CAST(count(*) AS BIGINT) AS users",
            d("clicks") + " AS s_clicks",
            d("imps") + " AS s_imps",
            d("clicks * clicks") + " AS s_clicks2",
            d("imps * imps") + " AS s_imps2",
            d("clicks * imps") + " AS s_ci",
        ]
    )
    # the users' totals per page type and per device (one pass over `seg0`), and per new / returning user (their
    # totals in `users`; a user with only purchases in an arm has no impressions there: not in the segment)
    segments = con.sql(f"""WITH t AS (SELECT uid, arm, page_type, device, CAST(sum(imps) AS BIGINT) AS imps,
            CAST(sum(clicks) AS BIGINT) AS clicks FROM seg0 GROUP BY GROUPING SETS ((uid, arm, page_type),
            (uid, arm, device))),
        v AS (SELECT arm, CASE WHEN page_type IS NOT NULL THEN 'page_type' ELSE 'device' END AS dimension,
                COALESCE(page_type, device) AS value, clicks, imps FROM t
            UNION ALL SELECT arm, 'user_type', CASE WHEN s.returning THEN 'returning' ELSE 'new' END, s.tc, s.ti
                FROM users s WHERE s.ti > 0)
        SELECT arm, dimension, value, {seg_stats} FROM v GROUP BY ALL ORDER BY dimension, value, arm""").df()
    for frame in (daily, novelty, segments):
        frame["arm"] = frame["arm"].map(names)
    multi, pre_users = _one(
        con,
        """SELECT (SELECT count(*) FROM (SELECT uid FROM users GROUP BY uid
        HAVING count(*) > 1)), (SELECT count(*) FROM users WHERE pi > 0)""",
    )
    days = [int(x) for (x,) in con.execute("SELECT DISTINCT day FROM units WHERE imps > 0 ORDER BY day").fetchall()]
    exp_versions = {a: sorted(v) for (a, p), v in red.versions.items() if p == phase}
    quality = {
        "events_read": red.read,
        "duplicate_events": red.dupes,
        "orphan_clicks": red.orphans,
        "impressions_without_arm": int(no_arm),
        "impressions_in_other_phases": int(other_phase),
        "users_in_multiple_arms": int(multi),
        "arms_with_several_model_versions": sum(len(v) > 1 for v in exp_versions.values()),
    }
    pre_window = (exp_start - timedelta(days=pre_days), exp_start - timedelta(days=1)) if pre_days > 0 else None
    return Aggregates(
        arms,
        moments,
        daily,
        novelty,
        cross,
        segments,
        exp_versions,
        quality,
        _d(start_i),
        _d(end_i),
        [_d(x) for x in days],
        phase,
        pre_window,
        int(pre_users),
    )


def moments_from_sums(
    sums: pd.DataFrame, arms: list[str], n_days: int, day0: int, r_pre: float
) -> dict[str, np.ndarray]:
    """Per (arm, day) sums of per-user increments (`DAY_SUMS` columns) -> (arm, day) arrays of the sums over
    each arm's users of their *cumulative* values after each day: the user count ``n``, ``s_<col>``,
    ``s_<col>2`` (col in `VALUE_COLUMNS`), ``s_ci`` (clicks x imps) and the CUPED terms ``s_x, s_x2, s_cx,
    s_ix`` of the covariate x = pc - r_pre pi (a user's pre-period clicks and impressions), expanded in the
    integer sums: sum x = sum pc - r sum pi, sum x^2 = sum pc^2 - 2 r sum pc pi + r^2 sum pi^2, and so on."""
    ai = pd.Index(arms).get_indexer(sums["arm"].astype(str))
    di = sums["day"].to_numpy(int) - day0
    ok = (ai >= 0) & (di >= 0) & (di < n_days)
    cum = {}
    for col in DAY_SUMS:
        grid = np.zeros((len(arms), n_days))
        np.add.at(grid, (ai[ok], di[ok]), sums[col].to_numpy(float)[ok])
        cum[col] = np.cumsum(grid, axis=1)
    r = r_pre
    out = {k: cum[k] for k in ("n", "s_ci", *(f"s_{c}{p}" for c in VALUE_COLUMNS for p in ("", "2")))}
    out["s_x"] = cum["f_pc"] - r * cum["f_pi"]
    out["s_x2"] = cum["f_pc2"] - 2 * r * cum["f_pcpi"] + r * r * cum["f_pi2"]
    out["s_cx"] = cum["c_pc"] - r * cum["c_pi"]
    out["s_ix"] = cum["i_pc"] - r * cum["i_pi"]
    return out
