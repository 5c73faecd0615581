"""The A/B report: events -> per-arm / per-user / per-day tables -> statistics -> decision -> JSON / HTML.

Aggregation is vectorised: Arrow's hash join and group-by reduce the events to one row per
(user, arm, day); everything after that is numpy on arrays the size of the user-day table. Only the
columns the report needs are read.

Counting rules (documented in docs/ab-report.md): duplicated `event_id`s count once; a click counts
when an impression with the same (request_id, item_id) exists, and an impression is *clicked* when it
has at least one such click (so clicks <= impressions); a click without its impression is an orphan;
users are the randomisation unit, and a user seen in two arms counts as one unit in each (reported as
`users_in_multiple_arms`). The decision is driven by the user-level (delta-method) test of CTR read with
its always-valid sequential p-value, Holm-adjusted across treatment arms.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from reco.experiments import stats as S

SCHEMA_VERSION = 1
#: Columns the report reads (the others are never loaded).
REQUIRED_COLUMNS = ("event_id", "ts", "user_id", "item_id", "event_type", "request_id", "arm")
OPTIONAL_COLUMNS = ("model_version", "value")
#: Columns read dictionary-encoded from the lake (few distinct values, or many repeats).
_DICT_COLUMNS = ("event_type", "arm", "model_version", "user_id")
_EPOCH = date(1970, 1, 1)
_DEDUP_KEY = b"reco.deduplicated"
_KINDS = pa.array(["impression", "click", "purchase"])


class ReportError(ValueError):
    """Input the report cannot be computed from; the message says what is wrong."""


@dataclass(frozen=True)
class ReportConfig:
    """What to compare and how. `traffic` maps arm -> configured share (None = equal shares over the
    arms seen); `guardrails` are per-user metrics that must not drop significantly."""

    control: str
    experiment: str = "default"
    start: date | None = None
    end: date | None = None
    traffic: Mapping[str, float] | None = None
    traffic_source: str | None = None  # where `traffic` came from, shown in the report
    alpha: float = 0.05
    min_days: int = 14
    planned_days: int = 28
    tau: float = 0.05  # mSPRT mixing sd, in relative-lift units
    correction: str = "holm"  # or "bh"
    power: float = 0.8
    target_relative_mde: float = 0.05
    guardrails: tuple[str, ...] = ("revenue_per_user",)
    pre_period_days: int = 14
    novelty_min_users: int = 30
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- traffic shares


def configured_traffic(
    experiment: str | None, config_path: str | Path | None = None
) -> tuple[str, dict[str, float], str]:
    """(experiment name, arm -> traffic share, source) from the experiment config (`config_path`, None =
    the built-in `DEFAULT_CONFIG`); `experiment` None = the config's first experiment. Arms with zero traffic
    are left out (they serve nobody, so they cannot be in the events). An experiment missing from the config
    is a `ReportError` that says how to give the shares instead.

    >>> configured_traffic(None)
    ('ranker-v2', {'control': 0.5, 'treatment': 0.5}, 'experiment config <built-in>')
    """
    from reco.experiments.assignment import ConfigError, load_config

    source = str(config_path) if config_path else "<built-in>"
    try:
        spec = load_config(config_path).experiment(experiment)
    except ConfigError as e:
        raise ReportError(str(e).replace("\n", " ")) from None
    except KeyError as e:
        raise ReportError(f"{e.args[0]} in the experiment config {source}: pass --traffic ARM=SHARE or "
                          "--experiments PATH") from None  # fmt: skip
    return spec.name, {a.name: a.traffic for a in spec.arms if a.traffic > 0}, f"experiment config {source}"


# --------------------------------------------------------------------------- reading


def read_events(
    path: str | Path, start: date | None = None, end: date | None = None, pre_period_days: int = 0
) -> pa.Table:
    """Events of a lake directory (date=YYYY-MM-DD partitions), a Parquet file or a CSV file, restricted to
    [start - pre_period_days, end] and to the columns the report needs."""
    path = Path(path)
    lo = start - timedelta(days=pre_period_days) if start else None
    if path.is_dir():
        from reco.data.lake import EventLake

        lake = EventLake(path)
        if not lake.days():
            raise ReportError(f"no event partitions (date=YYYY-MM-DD/) under {path}")
        # the lake stores each day deduplicated by event_id, and a redelivered event has the same ts (same
        # day): no event_id column and no second dedup needed; the partitions already bound the dates
        cols = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c != "event_id"]
        days = [d for d in lake.days() if (lo is None or d >= lo) and (end is None or d <= end)]
        if not days:
            return lake.read(lo, end, columns=cols).replace_schema_metadata({_DEDUP_KEY: b"lake"})
        # Repetitive strings stay dictionary-encoded as Parquet stores them (no per-row string copies: less
        # memory and faster filters); one shared dictionary per column so that joins and group-bys accept them.
        fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=list(_DICT_COLUMNS)))
        table = ds.dataset([str(lake.partition_path(d)) for d in days], format=fmt).to_table(columns=cols)
        return table.unify_dictionaries().replace_schema_metadata({_DEDUP_KEY: b"lake"})
    elif path.is_file() and path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        _check_columns(names, path)
        table = pq.read_table(path, columns=[c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in names])
    elif path.is_file() and path.suffix.lower() == ".csv":
        import csv as pycsv

        from pyarrow import csv

        with open(path, newline="") as fh:
            names = [c.strip() for c in next(pycsv.reader(fh), [])]
        _check_columns(names, path)
        wanted = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in names]
        types = {c: pa.string() for c in wanted if c not in ("ts", "value")} | {"value": pa.float64()}
        table = csv.read_csv(
            path,
            convert_options=csv.ConvertOptions(include_columns=wanted, column_types=types, strings_can_be_null=True),
        )
    elif not path.exists():
        raise ReportError(f"events path does not exist: {path}")
    else:
        raise ReportError(f"unsupported events file {path.name!r}: give a lake directory, .parquet or .csv")
    table = _normalise_ts(table)
    return _filter_days(table, lo, end)


def _check_columns(names: Sequence[str], path: Path) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ReportError(f"{path.name}: missing required column(s) {', '.join(missing)}")


def _normalise_ts(table: pa.Table) -> pa.Table:
    col = table.column("ts")
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            parsed = pd.to_datetime(col.to_pandas(), utc=True, format="ISO8601")
        except (ValueError, TypeError) as e:
            raise ReportError(f"column ts: cannot parse timestamps ({e})") from None
        col = pa.chunked_array([pa.array(parsed, pa.timestamp("us", tz="UTC"))])
    elif pa.types.is_timestamp(col.type) and col.type.tz is None:
        col = col.cast(pa.timestamp(col.type.unit, tz="UTC"))
    elif not pa.types.is_timestamp(col.type):
        raise ReportError(f"column ts must hold timestamps, got {col.type}")
    return table.set_column(table.schema.get_field_index("ts"), "ts", col)


def _filter_days(table: pa.Table, lo: date | None, hi: date | None) -> pa.Table:
    if lo is None and hi is None:
        return table
    day = pc.cast(table.column("ts"), pa.date32())
    mask = None
    if lo is not None:
        mask = pc.greater_equal(day, pa.scalar(lo, pa.date32()))
    if hi is not None:
        m = pc.less_equal(day, pa.scalar(hi, pa.date32()))
        mask = m if mask is None else pc.and_(mask, m)
    return table.filter(mask)


# --------------------------------------------------------------------------- aggregation


@dataclass
class Aggregates:
    """The reduced tables the statistics run on."""

    units: pd.DataFrame  # one row per (user, arm, day): imps, clicks, purchases, revenue
    pre: pd.DataFrame  # one row per user: pre-period imps, clicks (may be empty)
    model_versions: dict[str, list[str]]
    quality: dict[str, int]
    start: date
    end: date


def aggregate(table: pa.Table, start: date | None = None, end: date | None = None) -> Aggregates:
    """Events -> `Aggregates`. Rows before `start` form the CUPED pre-period."""
    pre_deduped = (table.schema.metadata or {}).get(_DEDUP_KEY) is not None
    required = [c for c in REQUIRED_COLUMNS if not (pre_deduped and c == "event_id")]
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ReportError(f"events: missing required column(s) {', '.join(missing)}")
    read = table.num_rows
    # one pass over the strings: event_type -> small int code (0 impression, 1 click, 2 purchase, null other)
    code = pc.index_in(table.column("event_type"), value_set=_KINDS)
    relevant = int(pc.sum(pc.is_valid(code)).as_py() or 0)
    if not pre_deduped:
        table = _dedup(table.filter(pc.is_valid(code)))
        code = pc.index_in(table.column("event_type"), value_set=_KINDS)
        dupes = relevant - table.num_rows
    else:
        dupes = 0
    table = table.append_column("day", pc.cast(pc.cast(table.column("ts"), pa.date32()), pa.int32()))
    table = table.append_column("kind", code)
    # select the few needed columns before filtering: filtering copies every column it is given
    imp_cols = ["user_id", "arm", "day", "request_id", "item_id"] + (
        ["model_version"] if "model_version" in table.column_names else []
    )
    imps = table.select(imp_cols).filter(pc.equal(code, 0))
    if imps.num_rows == 0:
        raise ReportError("no impressions in the selected window")
    clicks = table.select(["request_id", "item_id"]).filter(pc.equal(code, 1))
    keys = clicks.group_by(["request_id", "item_id"]).aggregate([([], "count_all")])
    keys = keys.append_column("_k", pa.array(np.arange(keys.num_rows, dtype=np.int64)))
    # One inner join of the impression keys (with their row numbers only: no payload columns to carry) against
    # the distinct click keys (small: Arrow's hash join builds on the right input) gives both the clicked
    # impressions and, by the keys never matched, the orphan clicks.
    probe = imps.select(["request_id", "item_id"]).append_column(
        "_row", pa.array(np.arange(imps.num_rows, dtype=np.int64))
    )
    hits = probe.join(keys, keys=["request_id", "item_id"], join_type="inner")
    clicked = np.zeros(imps.num_rows, dtype=np.int64)
    clicked[hits.column("_row").to_numpy()] = 1
    matched = np.unique(hits.column("_k").to_numpy())
    per_key = keys.column("count_all").to_numpy()
    orphans = int(per_key.sum() - per_key[matched].sum())
    joined = imps.select(["user_id", "arm", "day"]).append_column("clicked", pa.array(clicked))
    per_day = joined.group_by(["user_id", "arm", "day"]).aggregate([("clicked", "count"), ("clicked", "sum")])
    per_day = per_day.rename_columns(["user_id", "arm", "day", "imps", "clicks"])
    # users as int codes from here on: pandas groups integers much faster than strings
    users = pc.dictionary_encode(per_day.column("user_id")).combine_chunks()
    per_day = per_day.set_column(0, "user_id", users.indices)

    armed = pc.is_valid(per_day.column("arm"))
    armed_days = pc.filter(per_day.column("day"), armed)
    if len(armed_days) == 0:
        raise ReportError("no impressions with an arm in the selected window")
    start_i = (start - _EPOCH).days if start else int(pc.min(armed_days).as_py())
    in_exp = pc.greater_equal(per_day.column("day"), start_i)
    exp = per_day.filter(pc.and_(in_exp, armed))
    no_arm = int(pc.sum(pc.filter(per_day.column("imps"), pc.and_(in_exp, pc.invert(armed)))).as_py() or 0)
    pre = per_day.filter(pc.invert(in_exp))
    if exp.num_rows == 0:
        raise ReportError("no impressions with an arm in the experiment window")
    units = exp.to_pandas()
    units = _attach_purchases(units, table, start_i, users.dictionary)
    pre_df = pre.group_by(["user_id"]).aggregate([("imps", "sum"), ("clicks", "sum")]).to_pandas()
    pre_df.columns = ["user_id", "imps", "clicks"]

    exp_imps = imps.filter(pc.and_(pc.greater_equal(imps.column("day"), start_i), pc.is_valid(imps.column("arm"))))
    versions: dict[str, list[str]] = {}
    if "model_version" in exp_imps.column_names:
        mv = exp_imps.select(["arm", "model_version"]).group_by(["arm", "model_version"]).aggregate([]).to_pylist()
        for r in mv:
            if r["model_version"] is not None:
                versions.setdefault(r["arm"], []).append(r["model_version"])
    multi = units.groupby("user_id", observed=True)["arm"].nunique()
    last = int(units["day"].max())
    end_i = (end - _EPOCH).days if end else last
    quality = {
        "events_read": read,
        "duplicate_events": dupes,
        "orphan_clicks": int(orphans),
        "impressions_without_arm": no_arm,
        "users_in_multiple_arms": int((multi > 1).sum()),
    }
    return Aggregates(
        units,
        pre_df,
        {k: sorted(v) for k, v in versions.items()},
        quality,
        _EPOCH + timedelta(days=start_i),
        _EPOCH + timedelta(days=end_i),
    )


def _dedup(table: pa.Table) -> pa.Table:
    """Keep the first row of each event_id (Arrow hash group-by; multithreaded, order restored)."""
    idx = pa.array(np.arange(table.num_rows, dtype=np.int64))
    first = table.select(["event_id"]).append_column("_i", idx).group_by("event_id").aggregate([("_i", "min")])
    if first.num_rows == table.num_rows:
        return table
    return table.take(np.sort(first.column("_i_min").to_numpy()))


def _attach_purchases(units: pd.DataFrame, table: pa.Table, start_i: int, user_ids: pa.Array) -> pd.DataFrame:
    """Per (user, arm, day) purchases and revenue. A purchase without an arm goes to the user's first arm;
    purchases of users never exposed are not part of the experiment."""
    units = units.assign(purchases=0.0, revenue=0.0)
    cols = ["user_id", "arm", "day"] + (["value"] if "value" in table.column_names else [])
    is_buy = pc.and_(pc.equal(table.column("kind"), 2), pc.greater_equal(table.column("day"), start_i))
    buys = table.select(cols).filter(is_buy)
    if buys.num_rows == 0:
        return units
    buys = buys.set_column(0, "user_id", pc.index_in(buys.column("user_id"), value_set=user_ids))
    b = buys.filter(pc.is_valid(buys.column("user_id"))).to_pandas()
    if "value" not in b:
        b["value"] = 0.0
    first_arm = units.sort_values("day").drop_duplicates("user_id").set_index("user_id")["arm"]
    b["arm"] = b["arm"].fillna(b["user_id"].map(first_arm))
    b = b[b["user_id"].isin(first_arm.index) & b["arm"].notna()]
    g = b.groupby(["user_id", "arm", "day"], as_index=False).agg(purchases=("value", "size"), revenue=("value", "sum"))
    g["revenue"] = g["revenue"].fillna(0.0)
    merged = units.drop(columns=["purchases", "revenue"]).merge(g, on=["user_id", "arm", "day"], how="outer")
    return merged.fillna({"imps": 0, "clicks": 0, "purchases": 0.0, "revenue": 0.0})


# --------------------------------------------------------------------------- statistics


def _arm_moments(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per-group unit count and the sums the delta method needs (num = clicks, den = imps per unit)."""
    x, y = df["clicks"].to_numpy(float), df["imps"].to_numpy(float)
    tmp = df[by].assign(n=1.0, s_num=x, s_den=y, s_num2=x * x, s_den2=y * y, s_numden=x * y)
    return tmp.groupby(by, observed=True).sum()


def _units_per_user(units: pd.DataFrame) -> pd.DataFrame:
    return units.groupby(["user_id", "arm"], as_index=False, observed=True)[
        ["imps", "clicks", "purchases", "revenue"]
    ].sum()


def _cumulative_moments(units: pd.DataFrame, arms: list[str], n_days: int, day0: int) -> dict[str, np.ndarray]:
    """Delta-method sums of each arm's *cumulative* per-user values after each day: arrays (arm, day).

    Telescoping: a user's contribution to sum f(cumulative value) grows by f(now) - f(before) on each of
    their active days, so per-row increments summed by (arm, day) and cumulated over days give the sums
    without materialising a user x day matrix.
    """
    u = units[["user_id", "arm", "day", "imps", "clicks"]].sort_values(["user_id", "arm", "day"], kind="stable")
    g = u.groupby(["user_id", "arm"], observed=True, sort=False)
    cx, cy = g["clicks"].cumsum().to_numpy(float), g["imps"].cumsum().to_numpy(float)
    px, py = cx - u["clicks"].to_numpy(float), cy - u["imps"].to_numpy(float)
    first = (g.cumcount() == 0).to_numpy(float)
    inc = pd.DataFrame(
        {
            "arm": u["arm"].to_numpy(),
            "day": u["day"].to_numpy() - day0,
            "n": first,
            "s_num": cx - px,
            "s_den": cy - py,
            "s_num2": cx**2 - px**2,
            "s_den2": cy**2 - py**2,
            "s_numden": cx * cy - px * py,
        }
    )
    sums = inc.groupby(["arm", "day"], observed=True).sum()
    out = {}
    for col in ("n", "s_num", "s_den", "s_num2", "s_den2", "s_numden"):
        grid = np.zeros((len(arms), n_days))
        s = sums[col]
        ai = pd.Index(arms).get_indexer(s.index.get_level_values(0))
        di = s.index.get_level_values(1).to_numpy()
        ok = (ai >= 0) & (di >= 0) & (di < n_days)
        np.add.at(grid, (ai[ok], di[ok]), s.to_numpy()[ok])
        out[col] = np.cumsum(grid, axis=1)
    return out


def _num(x: Any) -> float | None:
    """JSON-safe float (NaN/inf -> None)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _ci(ci: tuple[float, float]) -> list[float | None]:
    return [_num(ci[0]), _num(ci[1])]


def _lift_json(lf: S.Lift) -> dict[str, Any]:
    return {
        "absolute": _num(lf.absolute),
        "absolute_ci": _ci(lf.absolute_ci),
        "relative": _num(lf.relative),
        "relative_ci": _ci(lf.relative_ci),
    }


def report_for(
    events: str | Path,
    *,
    control: str,
    experiment: str | None = None,
    start: date | None = None,
    end: date | None = None,
    traffic: Mapping[str, float] | None = None,
    traffic_source: str = "traffic parameter",
    experiments_path: str | Path | None = None,
    min_days: int = 14,
    planned_days: int = 28,
) -> dict[str, Any]:
    """The report of `events` (lake, Parquet or CSV) for one experiment: the SRM test uses `traffic` when
    given, else the arm shares in the experiment config (what assignment used). Shared by `reco ab report`
    and the `reco_ab_report` DAG task."""
    if not traffic:
        experiment, traffic, traffic_source = configured_traffic(experiment, experiments_path)
    cfg = ReportConfig(control=control, experiment=experiment or "default", start=start, end=end,
                       traffic=dict(traffic), traffic_source=traffic_source, min_days=min_days,
                       planned_days=planned_days)  # fmt: skip
    return build_report(read_events(events, start, end, cfg.pre_period_days if start else 0), cfg)


def build_report(table: pa.Table, config: ReportConfig) -> dict[str, Any]:
    """Events (as read by `read_events`) -> the report dict documented in docs/ab-report.md.

    >>> import datetime as dt
    >>> rows = [dict(event_id=f"{a}{u}", ts=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), user_id=f"{a}{u}",
    ...              item_id="i", event_type="impression", request_id=f"r{a}{u}", arm=a)
    ...         for a in ("A", "B") for u in range(20)]
    >>> rows += [dict(rows[k], event_id=f"c{k}", event_type="click") for k in (0, 1, 2, 25)]
    >>> rep = build_report(pa.Table.from_pylist(rows), ReportConfig(control="A"))
    >>> rep["arms"]["A"]["clicks"], rep["arms"]["B"]["ctr"], rep["decision"]["action"]
    (3, 0.05, 'continue')
    """
    agg = aggregate(table, config.start, config.end)
    return report_from_aggregates(agg, config)


def report_from_aggregates(agg: Aggregates, config: ReportConfig) -> dict[str, Any]:
    units = agg.units
    arms = sorted(units["arm"].unique().tolist())
    if config.control not in arms:
        raise ReportError(f"unknown control arm {config.control!r}; arms in the events: {', '.join(arms)}")
    configured = dict(config.traffic) if config.traffic else None
    if configured:
        unknown = sorted(set(configured) - set(arms))
        if unknown:
            raise ReportError(f"arm(s) {', '.join(unknown)} have configured traffic but no impressions (empty arm)")
        extra = sorted(set(arms) - set(configured))
        if extra:
            raise ReportError(f"arm(s) {', '.join(extra)} appear in the events but have no traffic share")
    if len(arms) < 2:
        raise ReportError(f"only arm {arms[0]!r} has impressions: nothing to compare against")
    treatments = [a for a in arms if a != config.control]
    per_user = _units_per_user(units)
    by_arm = {a: per_user[per_user["arm"] == a] for a in arms}
    for a, df in by_arm.items():
        if df["imps"].sum() == 0:
            raise ReportError(f"arm {a!r} has zero impressions")
        if len(df) < 2:
            raise ReportError(f"arm {a!r} has fewer than 2 users: no variance can be estimated")
    day0 = (agg.start - _EPOCH).days
    n_days = (agg.end - agg.start).days + 1

    arms_json, ratio = {}, {}
    for a in arms:
        df = by_arm[a]
        rs = S.ratio_stats(df["clicks"].to_numpy(), df["imps"].to_numpy())
        ratio[a] = rs
        arms_json[a] = {
            "users": len(df),
            "impressions": int(df["imps"].sum()),
            "clicks": int(df["clicks"].sum()),
            "ctr": _num(rs.ratio),
            "ctr_se_user_level": _num(math.sqrt(rs.var)),
            "clicks_per_user": _num(df["clicks"].mean()),
            "purchases": int(df["purchases"].sum()),
            "revenue_per_user": _num(df["revenue"].mean()),
            "model_versions": agg.model_versions.get(a, []),
        }

    shares = np.array([configured[a] for a in arms]) if configured else np.full(len(arms), 1.0 / len(arms))
    srm = S.srm_test(np.array([arms_json[a]["users"] for a in arms]), shares)
    cum = _cumulative_moments(units, arms, n_days, day0)
    cuped = _cuped(per_user, agg.pre, arms)
    comps = [_compare(t, config, arms, by_arm, ratio, cum, cuped, units, day0) for t in treatments]
    p_seq = np.array([c["user_level"]["sequential"]["p_value"] for c in comps], dtype=float)
    p_fix = np.array([c["user_level"]["p_value"] for c in comps], dtype=float)
    for c, hs, bs, hf, bf in zip(
        comps, S.holm(p_seq), S.benjamini_hochberg(p_seq), S.holm(p_fix), S.benjamini_hochberg(p_fix), strict=True
    ):
        c["user_level"]["sequential"].update(p_holm=_num(hs), p_bh=_num(bs))
        c["user_level"].update(p_holm=_num(hf), p_bh=_num(bf))

    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "experiment": config.experiment,
        "control": config.control,
        "window": {"start": agg.start.isoformat(), "end": agg.end.isoformat(), "days": n_days},
        "config": {
            "alpha": config.alpha,
            "min_days": config.min_days,
            "planned_days": config.planned_days,
            "correction": config.correction,
            "traffic": dict(zip(arms, shares.tolist(), strict=True)),
            "traffic_source": (config.traffic_source or "configured")
            if configured
            else "equal shares (none configured)",
            "sequential": {"method": "mSPRT, normal mixture on the relative lift", "tau": config.tau},
            "bayes": {"method": "normal approximation, flat prior"},
            "decision_basis": "user-level delta-method CTR test, sequential p-value, "
            + ("Holm" if config.correction == "holm" else "Benjamini-Hochberg")
            + "-adjusted across arms",
            "guardrails": list(config.guardrails),
            "target_relative_mde": config.target_relative_mde,
            "power": config.power,
        },
        "data_quality": agg.quality,
        "arms": arms_json,
        "srm": {
            "test": "chi-square vs configured traffic shares",
            "chi2": _num(srm.chi2),
            "p_value": _num(srm.p_value),
            "flagged": srm.flagged,
            "threshold": S.SRM_ALPHA,
            "expected_users": dict(zip(arms, [_num(e) for e in srm.expected], strict=True)),
        },
        "comparisons": comps,
        "daily": _daily(units, arms),
        "cumulative": _cumulative_json(comps, agg.start),
    }
    report["decision"] = decide(report, config)
    return report


def _cuped(per_user: pd.DataFrame, pre: pd.DataFrame, arms: list[str]) -> dict[str, Any] | None:
    """CUPED on the linearised user-level CTR with the user's linearised pre-period CTR as covariate
    (0 for users without pre-period impressions). None when there is no pre-period data."""
    if pre.empty or pre["imps"].sum() == 0:
        return None
    r_pre = pre["clicks"].sum() / pre["imps"].sum()
    cov = pd.Series((pre["clicks"] - r_pre * pre["imps"]).to_numpy(), index=pre["user_id"])
    x = per_user["user_id"].map(cov).fillna(0.0).to_numpy(float)
    if np.var(x) == 0:
        return None
    lin = np.empty(len(per_user))
    arm_arr = per_user["arm"].to_numpy()
    for a in arms:
        m = arm_arr == a
        lin[m] = S.linearize_ratio(per_user["clicks"].to_numpy()[m], per_user["imps"].to_numpy()[m])
    theta = S.cuped_theta(lin, x, arm_arr)
    adj = S.cuped_adjust(lin, x, theta, float(x.mean()))
    out = {"theta": theta}
    for a in arms:
        m = arm_arr == a
        out[a] = {
            "shift": float(adj[m].mean()),
            "var": float(adj[m].var(ddof=1) / m.sum()),
            "raw_var": float(lin[m].var(ddof=1) / m.sum()),
        }
    return out


def _compare(
    arm: str,
    cfg: ReportConfig,
    arms: list[str],
    by_arm: dict[str, pd.DataFrame],
    ratio: dict[str, S.RatioStats],
    cum: dict[str, np.ndarray],
    cuped: dict[str, Any] | None,
    units: pd.DataFrame,
    day0: int,
) -> dict[str, Any]:
    c, t = ratio[cfg.control], ratio[arm]
    dc, dt = by_arm[cfg.control], by_arm[arm]
    # impression level: pooled z-test, unpooled binomial variances for the CI
    xc, nc, xt, nt = dc["clicks"].sum(), dc["imps"].sum(), dt["clicks"].sum(), dt["imps"].sum()
    z, p = S.two_proportion_ztest(xt, nt, xc, nc)
    imp_lift = S.lift(xt / nt, (xt / nt) * (1 - xt / nt) / nt, xc / nc, (xc / nc) * (1 - xc / nc) / nc, cfg.alpha)
    # user level: delta method
    ul = S.lift(t.ratio, t.var, c.ratio, c.var, cfg.alpha)
    # sequential on the cumulative daily relative lift
    ia, ic = arms.index(arm), arms.index(cfg.control)
    keys = ("n", "s_num", "s_den", "s_num2", "s_den2", "s_numden")
    rt, vt = S.ratio_moments(*(cum[k][ia] for k in keys))
    rc, vc = S.ratio_moments(*(cum[k][ic] for k in keys))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel, vrel = rt / rc - 1.0, S.relative_lift_var(rt, vt, rc, vc)
    ok = np.isfinite(rel) & np.isfinite(vrel) & (vrel > 0) & (cum["n"][ia] >= 2) & (cum["n"][ic] >= 2)
    rel_s, vrel_s = np.where(ok, rel, 0.0), np.where(ok, vrel, np.inf)
    p_seq = S.msprt_pvalues(rel_s, vrel_s, cfg.tau)
    lo_s, hi_s = S.msprt_ci(rel_s, vrel_s, cfg.tau, cfg.alpha)
    q = float(S.st.norm.ppf(1 - cfg.alpha / 2))
    se_rel_now = math.sqrt(S.relative_lift_var(t.ratio, t.var, c.ratio, c.var))
    se_rel = np.sqrt(vrel_s)
    out: dict[str, Any] = {
        "arm": arm,
        "control": cfg.control,
        "metric": "ctr",
        "impression_level": {
            "test": "two-proportion z-test (pooled)",
            "z": _num(z),
            "p_value": _num(p),
            "lift": _lift_json(imp_lift),
        },
        "user_level": {
            "test": "ratio z-test, delta-method variance (users = randomisation unit)",
            "z": _num(ul.z),
            "p_value": _num(ul.p_value),
            "lift": _lift_json(ul),
            "sequential": {
                "method": "mSPRT normal mixture",
                "tau": cfg.tau,
                "p_value": _num(p_seq[-1]),
                "relative_ci": [_num(lo_s[-1]), _num(hi_s[-1])],
            },
        },
        "drives_decision": "user_level",
        "bayes": {
            "chance_to_beat_control": _num(S.chance_to_beat(ul.absolute, math.sqrt(t.var + c.var))),
            "expected_loss_relative": _num(S.expected_loss(ul.relative, se_rel_now)),
        },
        "_series": {
            "relative": np.where(ok, rel, np.nan),
            "ci": (rel - q * se_rel, rel + q * se_rel),
            "seq_ci": (lo_s, hi_s),
            "p_seq": p_seq,
        },
    }
    if cuped is not None:
        a_, c_ = cuped[arm], cuped[cfg.control]
        cl = S.lift(t.ratio + a_["shift"], a_["var"], c.ratio + c_["shift"], c_["var"], cfg.alpha)
        out["cuped"] = {
            "covariate": "pre-period linearised CTR",
            "theta": _num(cuped["theta"]),
            "p_value": _num(cl.p_value),
            "lift": _lift_json(cl),
            "variance_reduction": _num(1 - (a_["var"] + c_["var"]) / (a_["raw_var"] + c_["raw_var"])),
        }
    else:
        out["cuped"] = None
    out["metrics"] = _continuous(dt, dc, cfg)
    out["guardrails_harmed"] = [m for m in cfg.guardrails if m in out["metrics"] and out["metrics"][m]["harmed"]]
    out["novelty"] = _novelty(units, arm, cfg)
    out["power"] = _power(c, t, cfg)
    return out


def _continuous(dt: pd.DataFrame, dc: pd.DataFrame, cfg: ReportConfig) -> dict[str, Any]:
    """Welch t-tests of per-user metrics (revenue only when the events have purchases)."""
    out = {}
    cols = {"clicks_per_user": "clicks", "purchases_per_user": "purchases", "revenue_per_user": "revenue"}
    for name, col in cols.items():
        a, b = dt[col].to_numpy(float), dc[col].to_numpy(float)
        if name != "clicks_per_user" and a.sum() + b.sum() == 0:
            continue
        va, vb = a.var(ddof=1), b.var(ddof=1)
        t_, df_, p_ = S.welch_ttest(a.mean(), va, a.size, b.mean(), vb, b.size)
        entry: dict[str, Any] = {
            "test": "Welch t-test",
            "t": _num(t_),
            "df": _num(df_),
            "p_value": _num(p_),
            "treatment_mean": _num(a.mean()),
            "control_mean": _num(b.mean()),
        }
        if b.mean() != 0:
            entry["lift"] = _lift_json(S.lift(a.mean(), va / a.size, b.mean(), vb / b.size, cfg.alpha))
        entry["harmed"] = bool(a.mean() < b.mean() and math.isfinite(float(p_)) and p_ < cfg.alpha)
        out[name] = entry
    return out


def _novelty(units: pd.DataFrame, arm: str, cfg: ReportConfig) -> dict[str, Any]:
    """Does the relative lift trend with days since first exposure? WLS slope z-test over exposure days
    with at least `novelty_min_users` users in both arms; flagged when p < alpha and the trend shrinks
    the lift (a fading novelty effect, or a growing one that reverses the sign)."""
    u = units[units["arm"].isin([arm, cfg.control])]
    first = u.groupby(["user_id", "arm"], observed=True)["day"].transform("min")
    u = u.assign(k=(u["day"] - first).to_numpy())
    mom = _arm_moments(u, ["arm", "k"])
    rows = {}
    for a in (arm, cfg.control):
        m = mom.loc[a] if a in mom.index.get_level_values(0) else None
        if m is None:
            return {"test": "WLS of daily lift on days since first exposure", "flagged": False, "p_value": None}
        r, v = S.ratio_moments(m["n"], m["s_num"], m["s_den"], m["s_num2"], m["s_den2"], m["s_numden"])
        rows[a] = pd.DataFrame({"n": m["n"], "r": r, "v": v})
    j = rows[arm].join(rows[cfg.control], lsuffix="_t", rsuffix="_c", how="inner")
    j = j[(j["n_t"] >= cfg.novelty_min_users) & (j["n_c"] >= cfg.novelty_min_users) & (j["r_c"] > 0)]
    rel = j["r_t"] / j["r_c"] - 1
    tr = S.trend_test(
        j.index.to_numpy(float), rel.to_numpy(), S.relative_lift_var(j["r_t"], j["v_t"], j["r_c"], j["v_c"])
    )
    overall = (rel * j["n_t"]).sum() / max(j["n_t"].sum(), 1)
    flagged = bool(math.isfinite(tr.p_value) and tr.p_value < cfg.alpha and np.sign(tr.slope) != np.sign(overall))
    return {
        "test": "WLS of daily lift on days since first exposure",
        "slope_per_day": _num(tr.slope),
        "z": _num(tr.z),
        "p_value": _num(tr.p_value),
        "exposure_days_used": tr.n_points,
        "flagged": flagged,
    }


def _power(c: S.RatioStats, t: S.RatioStats, cfg: ReportConfig) -> dict[str, Any]:
    """MDE at the current sample and users per arm needed for the target relative MDE (two-sided z-test,
    per-user sd of the linearised control metric)."""
    sd = math.sqrt(c.var * c.n)
    ratio = t.n / c.n
    mde = (
        S.minimum_detectable_effect(c.n, cfg.alpha, cfg.power, ratio) * sd / c.ratio
        if sd > 0 and c.ratio > 0
        else math.nan
    )
    es = cfg.target_relative_mde * c.ratio / sd if sd > 0 else math.inf
    need = S.required_nobs1(es, cfg.alpha, cfg.power, ratio) if math.isfinite(es) else math.nan
    return {
        "mde_relative_now": _num(mde),
        "target_relative_mde": cfg.target_relative_mde,
        "required_control_users": _num(math.ceil(need)) if math.isfinite(need) else None,
        "required_treatment_users": _num(math.ceil(need * ratio)) if math.isfinite(need) else None,
    }


def _daily(units: pd.DataFrame, arms: list[str]) -> list[dict[str, Any]]:
    g = units.groupby(["day", "arm"], observed=True).agg(
        users=("user_id", "size"), impressions=("imps", "sum"), clicks=("clicks", "sum")
    )
    out = []
    for (day, a), r in g.iterrows():
        out.append(
            {
                "date": (_EPOCH + timedelta(days=int(day))).isoformat(),
                "arm": a,
                "users": int(r["users"]),
                "impressions": int(r["impressions"]),
                "clicks": int(r["clicks"]),
                "ctr": _num(r["clicks"] / r["impressions"]) if r["impressions"] else None,
            }
        )
    return out


def _cumulative_json(comps: list[dict[str, Any]], start: date) -> list[dict[str, Any]]:
    out = []
    for c in comps:
        s = c.pop("_series")
        for i, rel in enumerate(s["relative"]):
            out.append(
                {
                    "date": (start + timedelta(days=i)).isoformat(),
                    "arm": c["arm"],
                    "relative_lift": _num(rel),
                    "ci": [_num(s["ci"][0][i]), _num(s["ci"][1][i])],
                    "sequential_ci": [_num(s["seq_ci"][0][i]), _num(s["seq_ci"][1][i])],
                    "sequential_p_value": _num(s["p_seq"][i]),
                }
            )
    return out


# --------------------------------------------------------------------------- decision


def decide(report: dict[str, Any], cfg: ReportConfig) -> dict[str, Any]:
    """continue / ship <arm> / stop, with reasons. Order: SRM (results untrustworthy) -> guardrails ->
    too early (< min_days, even when significant) -> significant winners (novelty blocks a ship) ->
    all significantly worse -> planned horizon reached without a winner."""
    days = report["window"]["days"]
    key = "p_holm" if cfg.correction == "holm" else "p_bh"
    reasons: list[str] = []
    if report["srm"]["flagged"]:
        return {
            "action": "stop",
            "arm": None,
            "reasons": [
                f"SRM: users per arm do not match the traffic shares (p = {report['srm']['p_value']:.2g} < "
                f"{S.SRM_ALPHA}); assignment or logging is broken, the results cannot be trusted"
            ],
        }
    harmed = [(c["arm"], m) for c in report["comparisons"] for m in c["guardrails_harmed"]]
    if harmed and len({a for a, _ in harmed}) == len(report["comparisons"]):
        return {
            "action": "stop",
            "arm": None,
            "reasons": [f"guardrail metric harmed: {m} in arm {a}" for a, m in harmed],
        }
    reasons += [f"guardrail metric harmed: {m} in arm {a} (arm excluded)" for a, m in harmed]
    harmed_arms = {a for a, _ in harmed}
    if days < cfg.min_days:
        return {
            "action": "continue",
            "arm": None,
            "reasons": [*reasons, f"too early: {days} day(s) < {cfg.min_days} required before a decision"],
        }
    sig = [c for c in report["comparisons"] if (c["user_level"]["sequential"][key] or 1.0) < cfg.alpha]
    winners = [c for c in sig if c["user_level"]["lift"]["relative"] > 0 and c["arm"] not in harmed_arms]
    if winners:
        best = max(winners, key=lambda c: c["user_level"]["lift"]["relative"])
        if best["novelty"]["flagged"]:
            return {
                "action": "continue",
                "arm": None,
                "reasons": [
                    *reasons,
                    f"novelty suspected in arm {best['arm']}: lift trends with days since first exposure "
                    f"(p = {best['novelty']['p_value']:.2g})",
                ],
            }
        return {
            "action": "ship",
            "arm": best["arm"],
            "reasons": [
                *reasons,
                f"arm {best['arm']} beats {cfg.control}: "
                f"relative CTR lift {best['user_level']['lift']['relative']:+.2%}, "
                f"sequential p ({cfg.correction}) = {best['user_level']['sequential'][key]:.2g}",
            ],
        }
    losers = [c for c in sig if c["user_level"]["lift"]["relative"] < 0]
    if losers and len(losers) == len(report["comparisons"]):
        return {
            "action": "stop",
            "arm": None,
            "reasons": [*reasons, "every treatment arm is significantly worse than control"],
        }
    if days >= cfg.planned_days:
        return {
            "action": "stop",
            "arm": None,
            "reasons": [*reasons, f"not significant after the planned {cfg.planned_days} days"],
        }
    return {"action": "continue", "arm": None, "reasons": [*reasons, "not significant yet"]}


# --------------------------------------------------------------------------- rendering


def render_json(report: dict[str, Any]) -> str:
    """Stable, sorted JSON (same input -> byte-identical output)."""
    return json.dumps(report, indent=2, sort_keys=True, allow_nan=False)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page: decision, tables, and plots (cumulative lift with its CI band, daily CTR
    per arm, arm sizes) embedded as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cum = pd.DataFrame(report["cumulative"])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for arm, g in cum.groupby("arm") if not cum.empty else []:
        x = pd.to_datetime(g["date"])
        # Early days can have no CI (no variance yet): plot them as gaps, not as a crash.
        lo = np.array([np.nan if c is None or c[0] is None else c[0] for c in g["ci"]], dtype=float)
        hi = np.array([np.nan if c is None or c[1] is None else c[1] for c in g["ci"]], dtype=float)
        ax.plot(x, pd.to_numeric(g["relative_lift"], errors="coerce"), label=f"{arm} vs {report['control']}")
        ax.fill_between(x, lo, hi, where=np.isfinite(lo) & np.isfinite(hi), alpha=0.2, label="fixed-horizon CI")
        seq_ci = [c or (None, None) for c in g["sequential_ci"]]
        seq = np.array([[np.nan if v is None else v for v in c] for c in seq_ci], dtype=float)
        ax.plot(x, seq[:, 0], "--", lw=0.8, color="grey")
        ax.plot(x, seq[:, 1], "--", lw=0.8, color="grey", label="always-valid CI")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_title("cumulative relative CTR lift")
    ax.legend(fontsize=7)
    lift_png = _png(fig)
    daily = pd.DataFrame(report["daily"])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for arm, g in daily.groupby("arm"):
        ax.plot(pd.to_datetime(g["date"]), pd.to_numeric(g["ctr"], errors="coerce"), marker=".", label=arm)
    ax.set_title("daily CTR per arm")
    ax.legend(fontsize=7)
    ctr_png = _png(fig)
    fig, ax = plt.subplots(figsize=(5, 2.6))
    names = list(report["arms"])
    ax.bar(names, [report["arms"][a]["users"] for a in names], label="observed")
    ax.scatter(names, [report["srm"]["expected_users"][a] for a in names], color="red", zorder=3, label="expected")
    ax.set_title(f"users per arm (SRM p = {report['srm']['p_value']:.3g})")
    ax.legend(fontsize=7)
    size_png = _png(fig)

    e = html.escape
    dec = report["decision"]
    arm_rows = "".join(
        f"<tr><td>{e(a)}</td><td>{v['users']}</td><td>{v['impressions']}</td><td>{v['clicks']}</td>"
        f"<td>{v['ctr']:.4%}</td><td>{e(', '.join(v['model_versions']))}</td></tr>"
        for a, v in report["arms"].items()
    )

    def fmt_ci(ci: list[float | None]) -> str:
        return "n/a" if None in ci else f"[{ci[0]:+.2%}, {ci[1]:+.2%}]"

    comp_rows = "".join(
        f"<tr><td>{e(c['arm'])}</td><td>{c['user_level']['lift']['relative']:+.2%}</td>"
        f"<td>{fmt_ci(c['user_level']['lift']['relative_ci'])}</td><td>{c['user_level']['p_value']:.3g}</td>"
        f"<td>{c['user_level']['sequential']['p_value']:.3g}</td>"
        f"<td>{fmt_ci(c['user_level']['sequential']['relative_ci'])}</td>"
        f"<td>{c['impression_level']['p_value']:.3g}</td><td>{c['bayes']['chance_to_beat_control']:.1%}</td>"
        f"<td>{'yes' if c['novelty']['flagged'] else 'no'}</td>"
        f"<td>{e(', '.join(c['guardrails_harmed']) or '-')}</td></tr>"
        for c in report["comparisons"]
    )
    reasons = "".join(f"<li>{e(r)}</li>" for r in dec["reasons"])
    action = dec["action"] + (f" {dec['arm']}" if dec["arm"] else "")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>A/B report {e(report["experiment"])}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}.srm{{color:#b00;font-weight:bold}}</style></head><body>
<h1>A/B report: {e(report["experiment"])}</h1>
<p>Window {report["window"]["start"]} to {report["window"]["end"]} ({report["window"]["days"]} days); control
<b>{e(report["control"])}</b>.</p>
<h2>Decision: {e(action)}</h2><ul>{reasons}</ul>
{'<p class="srm">SAMPLE RATIO MISMATCH</p>' if report["srm"]["flagged"] else ""}
<h2>Arms</h2><table>
<tr><th>arm</th><th>users</th><th>impressions</th><th>clicks</th><th>CTR</th><th>model versions</th></tr>
{arm_rows}</table>
<h2>Comparisons (CTR; the user-level test drives the decision)</h2>
<table><tr><th>arm</th><th>rel. lift</th><th>95% CI</th><th>p (user)</th><th>p (sequential)</th><th>always-valid CI</th>
<th>p (impression)</th><th>P(beat control)</th><th>novelty</th><th>guardrails harmed</th></tr>{comp_rows}</table>
<h2>Cumulative lift</h2><img src="data:image/png;base64,{lift_png}">
<h2>Daily CTR</h2><img src="data:image/png;base64,{ctr_png}">
<h2>Arm sizes</h2><img src="data:image/png;base64,{size_png}">
<p>Data quality: {e(json.dumps(report["data_quality"]))}</p>
</body></html>"""


def config_dict(cfg: ReportConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["start"] = cfg.start.isoformat() if cfg.start else None
    d["end"] = cfg.end.isoformat() if cfg.end else None
    return d
