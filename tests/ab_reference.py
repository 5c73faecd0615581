"""The A/B report's former Arrow/pandas pass over the events and its former pandas aggregation (per-user tables,
per-user cumulative sums), kept as an independent reference for the DuckDB path (`reco.experiments.columnar`,
`reco.experiments.aggregate`): the same `Reduced` tables and `Aggregates` sums from a different engine, and the
novelty SE and segment statistics from per-user values (tests/test_ab_columnar.py). Lake inputs are read whole
into Arrow here, which the production path never does."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from reco.experiments import stats as S
from reco.experiments.aggregate import EPOCH, Aggregates
from reco.experiments.columnar import Reduced
from reco.experiments.reading import DEDUP_KEY, REQUIRED_COLUMNS, LakeScan, ReportError, dedup_events

_KINDS = pa.array(["impression", "click", "purchase"])
_UNKNOWN = "unknown"


def read_whole(scan: LakeScan) -> pa.Table:
    schema = pa.unify_schemas([ds.dataset(f).schema for f in {scan.files[0], scan.files[-1]}])
    table = ds.dataset(list(scan.files), format="parquet", schema=schema).to_table(columns=list(scan.columns))
    return table.replace_schema_metadata({DEDUP_KEY: b"lake"})


def reference_reduce(table: pa.Table | LakeScan) -> Reduced:
    if isinstance(table, LakeScan):
        table = read_whole(table)
    pre_deduped = (table.schema.metadata or {}).get(DEDUP_KEY) is not None
    required = [c for c in REQUIRED_COLUMNS if not (pre_deduped and c == "event_id")]
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ReportError(f"events: missing required column(s) {', '.join(missing)}")
    read = table.num_rows
    code = pc.index_in(table.column("event_type"), value_set=_KINDS)
    relevant = int(pc.sum(pc.is_valid(code)).as_py() or 0)
    dupes = 0
    if not pre_deduped:
        table = dedup_events(table.filter(pc.is_valid(code)))
        code = pc.index_in(table.column("event_type"), value_set=_KINDS)
        dupes = relevant - table.num_rows
    table = table.append_column("day", pc.cast(pc.cast(table.column("ts"), pa.date32()), pa.int32()))
    table = table.append_column("kind", code)
    if "phase" in table.column_names:
        ph = pc.fill_null(pc.cast(table.column("phase"), pa.int64()), 1)
    else:
        ph = pa.array(np.ones(table.num_rows, dtype=np.int64))
    table = table.append_column("_phase", ph)
    for dim in ("page_type", "device"):
        col = table.column(dim) if dim in table.column_names else pa.nulls(table.num_rows, pa.string())
        table = table.append_column(f"_{dim}", col)
    per_day, orphans, versions, user_ids = _impressions(table)
    return Reduced(per_day, _purchases(table, user_ids), orphans, versions, read, dupes, user_ids)


def _impressions(table: pa.Table) -> tuple[pd.DataFrame, int, dict[tuple[str, int], set[str]], pa.Array]:
    imp_cols = ["user_id", "arm", "day", "_phase", "_page_type", "_device", "request_id", "item_id"]
    has_mv = "model_version" in table.column_names
    imps = table.select(imp_cols + (["model_version"] if has_mv else [])).filter(pc.equal(table.column("kind"), 0))
    if imps.num_rows == 0:
        raise ReportError("no impressions in the selected window")
    clicks = table.select(["request_id", "item_id"]).filter(pc.equal(table.column("kind"), 1))
    keys = clicks.group_by(["request_id", "item_id"]).aggregate([([], "count_all")])
    keys = keys.append_column("_k", pa.array(np.arange(keys.num_rows, dtype=np.int64)))
    probe = imps.select(["request_id", "item_id"]).append_column("_row", pa.array(np.arange(imps.num_rows)))
    hits = probe.join(keys, keys=["request_id", "item_id"], join_type="inner")
    clicked = np.zeros(imps.num_rows, dtype=np.int64)
    clicked[hits.column("_row").to_numpy()] = 1
    per_key = keys.column("count_all").to_numpy()
    orphans = int(per_key.sum() - per_key[np.unique(hits.column("_k").to_numpy())].sum())
    versions: dict[tuple[str, int], set[str]] = {}
    if has_mv:
        mv = imps.select(["arm", "_phase", "model_version"])
        for r in mv.group_by(["arm", "_phase", "model_version"]).aggregate([]).to_pylist():
            if r["model_version"] is not None and r["arm"] is not None:
                versions.setdefault((str(r["arm"]), int(r["_phase"])), set()).add(str(r["model_version"]))
    keys = ["user_id", "arm", "day", "_phase", "_page_type", "_device"]
    joined = imps.select(keys).append_column("clicked", pa.array(clicked))
    g = joined.group_by(keys).aggregate([("clicked", "count"), ("clicked", "sum")])
    g = g.rename_columns([*keys, "imps", "clicks"])
    users = pc.dictionary_encode(g.column("user_id")).combine_chunks()
    g = g.set_column(0, "user_id", users.indices)
    df = g.to_pandas()
    df["arm"] = df["arm"].astype(object)
    for col in ("_page_type", "_device"):
        df[col] = df[col].astype(object).where(df[col].notna(), _UNKNOWN)
    return df, orphans, versions, users.dictionary


def _purchases(table: pa.Table, user_ids: pa.Array) -> pd.DataFrame:
    cols = ["user_id", "arm", "day", "_phase"] + (["value"] if "value" in table.column_names else [])
    b = table.select(cols).filter(pc.equal(table.column("kind"), 2)).to_pandas()
    if "value" not in b:
        b["value"] = np.nan
    codes = pd.Series(np.arange(len(user_ids)), index=pd.Index(user_ids.to_pylist()))
    b["user_id"] = b["user_id"].astype(str).map(codes)
    b = b[b["user_id"].notna()].astype({"user_id": np.int32})
    b["arm"] = b["arm"].astype(object)
    g = b.groupby(["user_id", "arm", "day", "_phase"], as_index=False, dropna=False)
    return g.agg(purchases=("value", "size"), revenue=("value", lambda v: v.sum(min_count=1)))


# --------------------------------------------------------------------------- the former pandas aggregation
# (per-user tables in pandas; the production path computes the same sums in DuckDB: reco.experiments.aggregate)


def reference_aggregate(
    source: pa.Table | LakeScan,
    start: date | None = None,
    end: date | None = None,
    *,
    phase: int = 1,
    experiment_start: date | None = None,
    pre_period_days: int = 0,
) -> Aggregates:
    """`reco.experiments.aggregate.aggregate` the former way: `reference_reduce`, per-user pandas tables, then
    their sums. `extra` keeps the per-user tables (units, users, segments) for the per-user reference checks."""
    red = reference_reduce(source)
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
    arms = sorted(units["arm"].unique().tolist())
    m = cumulative_moments(units, users, arms, end_i - start_i + 1, start_i)
    daily = units.groupby(["day", "arm"], as_index=False, observed=True).agg(
        users=("user_id", "size"), imps=("imps", "sum"), clicks=("clicks", "sum")
    )
    first = units.groupby(["user_id", "arm"], observed=True)["day"].transform("min")
    u = units.assign(k=(units["day"] - first).to_numpy())
    c, n = u["clicks"].to_numpy(float), u["imps"].to_numpy(float)
    nov = u[["arm", "k"]].assign(n=1.0, s_num=c, s_den=n, s_num2=c * c, s_den2=n * n, s_numden=c * n)
    nov = nov.groupby(["arm", "k"], as_index=False, observed=True).sum()
    pairs = u.merge(u, on=["user_id", "arm"], suffixes=("", "2"))
    cross = pairs[["arm", "k", "k2"]].assign(
        cc=pairs["clicks"] * pairs["clicks2"], cn=pairs["clicks"] * pairs["imps2"], nn=pairs["imps"] * pairs["imps2"]
    )
    cross = cross.groupby(["arm", "k", "k2"], as_index=False, observed=True).sum()
    ci, ii = segments["clicks"].to_numpy(float), segments["imps"].to_numpy(float)
    seg = segments[["arm", "dimension", "value"]].assign(
        users=1, s_clicks=ci, s_imps=ii, s_clicks2=ci * ci, s_imps2=ii * ii, s_ci=ci * ii
    )
    seg = seg.groupby(["arm", "dimension", "value"], as_index=False, observed=True).sum()
    return Aggregates(
        arms, m, daily, nov, cross, seg, exp_versions, quality, _d(start_i), _d(end_i), [_d(d) for d in days], phase,
        pre_window, int((users["x_imps"] > 0).sum()), {"units": units, "users": users, "segments": segments},
    )  # fmt: skip


def _i(d: date) -> int:
    return (d - EPOCH).days


def _d(i: int) -> date:
    return EPOCH + timedelta(days=int(i))


def _users(per_day: pd.DataFrame, units: pd.DataFrame, exp_start: date, pre_days: int) -> pd.DataFrame:
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
    parts = []
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
    units = units.assign(purchases=0.0, revenue=0.0)
    b = buys[(buys["_phase"] == phase) & (buys["day"] >= start_i) & (buys["day"] <= end_i)]
    if b.empty:
        return units
    first_arm = units.sort_values("day", kind="stable").drop_duplicates("user_id").set_index("user_id")["arm"]
    b = b.assign(arm=b["arm"].astype(object).where(b["arm"].notna(), b["user_id"].map(first_arm)))
    b = b[b["user_id"].isin(first_arm.index) & b["arm"].notna()]
    b = b.assign(user_id=b["user_id"].astype(units["user_id"].dtype))
    g = b.groupby(["user_id", "arm", "day"], as_index=False)[["purchases", "revenue"]].sum()
    g["revenue"] = g["revenue"].fillna(0.0)
    merged = units.drop(columns=["purchases", "revenue"]).merge(g, on=["user_id", "arm", "day"], how="outer")
    return merged.fillna({"imps": 0, "clicks": 0, "purchases": 0.0, "revenue": 0.0})


VALUE_COLUMNS = ("clicks", "imps", "purchases", "revenue")


def cumulative_moments(
    units: pd.DataFrame, users: pd.DataFrame, arms: list[str], n_days: int, day0: int
) -> dict[str, np.ndarray]:
    """The former per-user cumulative sums (pandas sort + groupby cumsum), float covariate x per user."""
    u = units.merge(users[["user_id", "arm", "x"]], on=["user_id", "arm"], how="left")
    u = u.sort_values(["user_id", "arm", "day"], kind="stable")
    g = u.groupby(["user_id", "arm"], observed=True, sort=False)
    x = u["x"].fillna(0.0).to_numpy(float)
    first = (g.cumcount() == 0).to_numpy(float)
    inc: dict[str, np.ndarray] = {"n": first, "s_x": first * x, "s_x2": first * x * x}
    cum = {}
    for col in VALUE_COLUMNS:
        if col in ("purchases", "revenue") and not u[col].any():
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


# --------------------------------------------------------------------------- the former per-user statistics


def reference_clustered_slope_se(units: pd.DataFrame, arm: str, control: str, cfg_min_users: int) -> float | None:
    """The novelty slope's user-clustered SE the former way: each user's influence phi_i from their rows,
    Var(b) = sum phi_i^2 (None when the slope is not testable)."""
    u = units[units["arm"].isin([arm, control])]
    first = u.groupby(["user_id", "arm"], observed=True)["day"].transform("min")
    u = u.assign(k=(u["day"] - first).to_numpy())
    x, y = u["clicks"].to_numpy(float), u["imps"].to_numpy(float)
    mom = u[["arm", "k"]].assign(n=1.0, s_num=x, s_den=y, s_num2=x * x, s_den2=y * y, s_numden=x * y)
    mom = mom.groupby(["arm", "k"], observed=True).sum()
    rows = {}
    for a in (arm, control):
        mm = mom.loc[a]
        r, v = S.ratio_moments(mm["n"], mm["s_num"], mm["s_den"], mm["s_num2"], mm["s_den2"], mm["s_numden"])
        rows[a] = pd.DataFrame({"n": mm["n"], "r": r, "v": v})
    j = rows[arm].join(rows[control], lsuffix="_t", rsuffix="_c", how="inner")
    j = j[(j["n_t"] >= cfg_min_users) & (j["n_c"] >= cfg_min_users) & (j["r_c"] > 0)]
    if len(j) < 3:
        return None
    var_k = S.relative_lift_var(j["r_t"], j["v_t"], j["r_c"], j["v_c"])
    w = 1.0 / np.asarray(var_k, dtype=float)
    xk = j.index.to_numpy(float)
    xb = (w @ xk) / w.sum()
    g = pd.Series(w * (xk - xb) / float(w @ (xk - xb) ** 2), index=j.index)
    rows_k = u[u["k"].isin(j.index)]
    sums = rows_k.groupby(["arm", "k"], observed=True)["imps"].sum()
    k = rows_k["k"].to_numpy()
    rt, rc = j["r_t"].reindex(k).to_numpy(), j["r_c"].reindex(k).to_numpy()
    is_t = (rows_k["arm"] == arm).to_numpy()
    den = np.where(is_t, sums.loc[arm].reindex(k).to_numpy(), sums.loc[control].reindex(k).to_numpy())
    c, n = rows_k["clicks"].to_numpy(float), rows_k["imps"].to_numpy(float)
    infl = np.where(is_t, (c - rt * n) / den / rc, -(rt / rc**2) * (c - rc * n) / den)
    phi = pd.Series(g.reindex(k).to_numpy() * infl).groupby([rows_k["user_id"].to_numpy(), rows_k["arm"].to_numpy()])
    return float(np.sqrt((phi.sum().to_numpy() ** 2).sum()))


def reference_breakdown_stats(segments: pd.DataFrame, arm: str, dim: str, value: str) -> tuple[int, float]:
    """A segment's users and CTR the former way (`ratio_stats` of the users' own values; NaN without users)."""
    g = segments[(segments["arm"] == arm) & (segments["dimension"] == dim) & (segments["value"] == value)]
    if g.empty:
        return 0, float("nan")
    return len(g), S.ratio_stats(g["clicks"].to_numpy(), g["imps"].to_numpy()).ratio
