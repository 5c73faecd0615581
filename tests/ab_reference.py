"""The A/B report's former Arrow/pandas pass over the events, kept as an independent reference for the DuckDB
path (`reco.experiments.columnar`): same `Reduced` tables from a different engine (tests/test_ab_columnar.py).
Lake inputs are read whole into Arrow here, which the production path no longer does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

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
