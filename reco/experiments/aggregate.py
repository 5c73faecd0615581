"""Events -> the reduced tables the A/B statistics run on, for one phase of one experiment.

DuckDB SQL over the lake's partitions reduces the events to one row per (user, arm, day, phase, page type,
device) (`reco.experiments.columnar`); everything after that is pandas/numpy on tables of that size.
Counting rules (docs/ab-report.md): duplicated `event_id`s count once; an impression is *clicked* when a
click with the same (request_id, item_id) exists (so clicks <= impressions); a click without its impression
is an orphan; users are the randomisation unit. Only impressions of the analysed phase (`phase` column, null = 1)
from the phase's first day on are experiment data; the days before the *experiment's* first day (not
the phase's: later phases' "before" was already treated) are the CUPED pre-exposure window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from reco.experiments.columnar import Reduced, reduce_events
from reco.experiments.reading import LakeScan, ReportError, dedup_events

__all__ = ["DIMENSIONS", "EPOCH", "Aggregates", "aggregate", "cumulative_moments", "dedup_events"]

EPOCH = date(1970, 1, 1)
#: Breakdown dimensions: impression attributes (a user's CTR on that page type / device) and a user one.
DIMENSIONS = ("page_type", "device", "user_type")


@dataclass
class Aggregates:
    """The reduced tables of one phase."""

    units: pd.DataFrame  # one row per (user, arm, day): imps, clicks, purchases, revenue
    users: pd.DataFrame  # one row per (user, arm): first_day, user_type ("new"/"returning"), x (pre-period)
    segments: pd.DataFrame  # one row per (user, arm, dimension, value): imps, clicks
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
    reducer: Callable[[pa.Table | LakeScan], Reduced] = reduce_events,
) -> Aggregates:
    """Events -> `Aggregates` of `phase`, from `start` (None: the phase's first exposure day) to `end`.
    The pre-exposure window is the `pre_period_days` before `experiment_start` (default `start`).
    `reducer`: the pass over the events (DuckDB SQL; tests pass an independent reference)."""
    red = reducer(source)
    per_day = red.per_day
    armed = per_day["arm"].notna() & (per_day["_phase"] == phase)
    if not armed.any():
        raise ReportError(f"no impressions with an arm in phase {phase} in the selected window")
    start_i = _i(start) if start else int(per_day.loc[armed, "day"].min())
    end_i = _i(end) if end else int(per_day["day"].max())
    in_window = (per_day["day"] >= start_i) & (per_day["day"] <= end_i)
    exp = per_day[armed & in_window]
    if exp.empty:
        raise ReportError(f"no impressions with an arm in phase {phase} in the experiment window")
    no_arm = int(per_day.loc[in_window & per_day["arm"].isna(), "imps"].sum())
    other_phase = int(per_day.loc[in_window & per_day["arm"].notna() & (per_day["_phase"] != phase), "imps"].sum())

    units = exp.groupby(["user_id", "arm", "day"], as_index=False, observed=True)[["imps", "clicks"]].sum()
    units = _attach_purchases(units, red.purchases, start_i, end_i, phase)
    # The covariate window must end before the first day any arm was exposed: a phase recorded after its
    # traffic (a backfill, a promotion dated today) would otherwise put the experiment's own days into the
    # "pre-exposure" CTR, and CUPED would regress the effect away.
    first_exposed = _d(int(per_day.loc[per_day["arm"].notna(), "day"].min()))
    exp_start = min(experiment_start or _d(start_i), first_exposed)
    users = _users(per_day, units, exp_start, pre_period_days)
    segments = _segments(exp, users)
    exp_versions = {a: sorted(v) for (a, p), v in red.versions.items() if p == phase}
    multi = units.groupby("user_id", observed=True)["arm"].nunique()
    quality = {
        "events_read": red.read,
        "duplicate_events": red.dupes,
        "orphan_clicks": red.orphans,
        "impressions_without_arm": no_arm,
        "impressions_in_other_phases": other_phase,
        "users_in_multiple_arms": int((multi > 1).sum()),
        "arms_with_several_model_versions": sum(len(v) > 1 for v in exp_versions.values()),
    }
    pre_window = (
        (exp_start - timedelta(days=pre_period_days), exp_start - timedelta(days=1)) if pre_period_days > 0 else None
    )
    days = sorted(int(d) for d in units.loc[units["imps"] > 0, "day"].unique())
    return Aggregates(
        units,
        users,
        segments,
        exp_versions,
        quality,
        _d(start_i),
        _d(end_i),
        [_d(d) for d in days],
        phase,
        pre_window,
        int((users["x_imps"] > 0).sum()),
    )


def _users(per_day: pd.DataFrame, units: pd.DataFrame, exp_start: date, pre_days: int) -> pd.DataFrame:
    """One row per (user, arm) of the phase: first exposure day; user_type "returning" when the user has
    impressions (any arm or none) on an earlier day in what was read (the pre-exposure window and the
    experiment so far), else "new"; x = the pre-period linearised CTR (CUPED covariate, 0 without)."""
    first = units.groupby(["user_id", "arm"], as_index=False, observed=True)["day"].min()
    first = first.rename(columns={"day": "first_day"})
    seen = per_day.groupby("user_id", observed=True)["day"].min()
    first["user_type"] = np.where(first["user_id"].map(seen) < first["first_day"], "returning", "new")
    lo, hi = _i(exp_start) - pre_days, _i(exp_start)
    pre = per_day[(per_day["day"] >= lo) & (per_day["day"] < hi)]
    pre = pre.groupby("user_id", observed=True)[["imps", "clicks"]].sum()
    r_pre = pre["clicks"].sum() / pre["imps"].sum() if len(pre) and pre["imps"].sum() > 0 else 0.0
    x = pre["clicks"] - r_pre * pre["imps"]
    first["x"] = first["user_id"].map(x).fillna(0.0).to_numpy(float)
    first["x_imps"] = first["user_id"].map(pre["imps"]).fillna(0).to_numpy(float)
    return first


def _segments(exp: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    """Per (user, arm, dimension, value) impressions and clicks."""
    parts = []
    # days summed away first: the per-dimension group-bys then run on a far smaller table
    both = exp.groupby(["user_id", "arm", "_page_type", "_device"], as_index=False, observed=True)[["imps", "clicks"]]
    both = both.sum()
    for dim, col in (("page_type", "_page_type"), ("device", "_device")):
        g = both.groupby(["user_id", "arm", col], as_index=False, observed=True)[["imps", "clicks"]].sum()
        parts.append(g.rename(columns={col: "value"}).assign(dimension=dim))
    g = both.groupby(["user_id", "arm"], as_index=False, observed=True)[["imps", "clicks"]].sum()
    g = g.merge(users[["user_id", "arm", "user_type"]], on=["user_id", "arm"])
    parts.append(g.rename(columns={"user_type": "value"}).assign(dimension="user_type"))
    out = pd.concat(parts, ignore_index=True)
    out["value"] = out["value"].astype(str)
    return out


def _attach_purchases(units: pd.DataFrame, buys: pd.DataFrame, start_i: int, end_i: int, phase: int) -> pd.DataFrame:
    """Per (user, arm, day) purchases and revenue. A purchase without an arm goes to the user's first arm;
    purchases of users never exposed in the phase, or logged in another phase, are not part of it."""
    units = units.assign(purchases=0.0, revenue=0.0)
    b = buys[(buys["_phase"] == phase) & (buys["day"] >= start_i) & (buys["day"] <= end_i)]
    if b.empty:
        return units
    # first exposure; on a tie, the first arm by name (stable sort of units grouped by user, arm, day)
    first_arm = units.sort_values("day", kind="stable").drop_duplicates("user_id").set_index("user_id")["arm"]
    b = b.assign(arm=b["arm"].astype(object).where(b["arm"].notna(), b["user_id"].map(first_arm)))
    b = b[b["user_id"].isin(first_arm.index) & b["arm"].notna()]
    b = b.assign(user_id=b["user_id"].astype(units["user_id"].dtype))
    g = b.groupby(["user_id", "arm", "day"], as_index=False)[["purchases", "revenue"]].sum()
    g["revenue"] = g["revenue"].fillna(0.0)
    merged = units.drop(columns=["purchases", "revenue"]).merge(g, on=["user_id", "arm", "day"], how="outer")
    return merged.fillna({"imps": 0, "clicks": 0, "purchases": 0.0, "revenue": 0.0})


# --------------------------------------------------------------------------- cumulative moments

#: Per-user cumulative columns whose sums and sums of squares are tracked day by day.
VALUE_COLUMNS = ("clicks", "imps", "purchases", "revenue")


def cumulative_moments(
    units: pd.DataFrame, users: pd.DataFrame, arms: list[str], n_days: int, day0: int
) -> dict[str, np.ndarray]:
    """Sums over each arm's users of their *cumulative* values after each day: arrays (arm, day) for the
    user count ``n``, ``s_<col>``, ``s_<col>2`` (col in `VALUE_COLUMNS`), ``s_ci`` (clicks x imps), and
    the CUPED terms ``s_x, s_x2, s_cx, s_ix`` (x = the user's pre-period covariate).

    Telescoping: a user's contribution to sum f(cumulative value) grows by f(now) - f(before) on each of
    their active days, so per-row increments summed by (arm, day) and cumulated over days give the sums
    without materialising a user x day matrix.
    """
    u = units.merge(users[["user_id", "arm", "x"]], on=["user_id", "arm"], how="left")
    u = u.sort_values(["user_id", "arm", "day"], kind="stable")
    g = u.groupby(["user_id", "arm"], observed=True, sort=False)
    x = u["x"].fillna(0.0).to_numpy(float)
    first = (g.cumcount() == 0).to_numpy(float)
    inc: dict[str, np.ndarray] = {"n": first, "s_x": first * x, "s_x2": first * x * x}
    cum = {}
    for col in VALUE_COLUMNS:
        if col in ("purchases", "revenue") and not u[col].any():  # no purchases logged: all sums are 0
            zero = np.zeros(len(u))
            cum[col], inc[f"s_{col}"], inc[f"s_{col}2"] = (zero, zero), zero, zero
            continue
        now = g[col].cumsum().to_numpy(float)
        before = now - u[col].to_numpy(float)
        cum[col] = (now, before)
        inc[f"s_{col}"] = now - before
        inc[f"s_{col}2"] = now**2 - before**2
    (cn, cb), (yn, yb) = cum["clicks"], cum["imps"]
    inc["s_ci"] = cn * yn - cb * yb
    inc["s_cx"] = x * (cn - cb)
    inc["s_ix"] = x * (yn - yb)
    frame = pd.DataFrame(inc).assign(arm=u["arm"].to_numpy(), day=u["day"].to_numpy() - day0)
    sums = frame.groupby(["arm", "day"], observed=True).sum()
    ai = pd.Index(arms).get_indexer(sums.index.get_level_values(0))
    di = sums.index.get_level_values(1).to_numpy()
    ok = (ai >= 0) & (di >= 0) & (di < n_days)
    out = {}
    for col in inc:
        grid = np.zeros((len(arms), n_days))
        np.add.at(grid, (ai[ok], di[ok]), sums[col].to_numpy()[ok])
        out[col] = np.cumsum(grid, axis=1)
    return out
