"""Events -> the report's reduced tables with DuckDB SQL: streaming over the Parquet lake's day partitions (or
an Arrow table), with a memory limit (spilling to disk beyond it) and a fixed thread count.

The heavy part of the report is one pass over every impression (click matching, then a group-by to one row per
user x arm x day x phase x page type x device); everything after it runs on tables of that size
(`reco.experiments.aggregate`). DuckDB reads only the needed columns of each partition, joins the impressions
against the distinct click keys and aggregates without materialising the events: the report over 100M events
fits in a few GB (docs/benchmarks.md "A/B report at scale").
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from reco.experiments.reading import DEDUP_KEY, REQUIRED_COLUMNS, LakeScan, ReportError, dedup_events

#: DuckDB's threads and memory limit (beyond it, hash tables spill to a temporary folder). The report's pandas
#: part holds the reduced tables next to it: 4 GB keeps the whole report within 8 GB at 100M events.
THREADS = int(os.environ.get("RECO_REPORT_THREADS", "2"))
MEMORY_LIMIT = os.environ.get("RECO_REPORT_MEMORY", "4GB")
_UNKNOWN = "unknown"
_KIND = "CASE event_type WHEN 'impression' THEN 0 WHEN 'click' THEN 1 WHEN 'purchase' THEN 2 END"


@dataclass
class Reduced:
    """What the report needs of the events, whatever computed it."""

    # per (user, arm, day, _phase, _page_type, _device): imps, clicks (clicked impressions); user ids as int codes
    per_day: pd.DataFrame
    # per (user code, arm (null: none logged), day, _phase): purchases, revenue; users of `per_day` only
    purchases: pd.DataFrame
    orphans: int  # clicks without their impression
    versions: dict[tuple[str, int], set[str]]  # model versions seen per (arm, phase) in impressions
    read: int  # events read (all types)
    dupes: int  # relevant events dropped as duplicated event_ids
    users: pa.Array  # the user id of each user code


def reduce_events(source: pa.Table | LakeScan, threads: int = THREADS, memory_limit: str = MEMORY_LIMIT) -> Reduced:
    """Reduce `source` (a `LakeScan` of day partitions, or an Arrow table as `read_events` returns it)."""
    spill = tempfile.mkdtemp(prefix="reco-report-duckdb-")
    con = duckdb.connect(config={"threads": threads, "memory_limit": memory_limit, "temp_directory": spill,
                                 "preserve_insertion_order": False})  # fmt: skip
    try:
        con.execute("SET TimeZone = 'UTC'")  # days are UTC days (timestamptz -> date follows the session zone)
        read, dupes, columns = _register(con, source)
        return _reduce(con, columns, read, dupes)
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _register(con: duckdb.DuckDBPyConnection, source: pa.Table | LakeScan) -> tuple[int, int, list[str]]:
    """Create the view `raw` over `source`; returns events read, duplicates dropped and the columns."""
    if isinstance(source, LakeScan):
        # the lake stores each day deduplicated by event_id and a redelivered event has the same ts: no dedup
        files = ", ".join("'" + f.replace("'", "''") + "'" for f in source.files)
        con.execute(f"CREATE VIEW raw AS SELECT * FROM read_parquet([{files}], union_by_name = true)")
        return int(con.execute("SELECT count(*) FROM raw").fetchone()[0]), 0, list(source.columns)
    pre_deduped = (source.schema.metadata or {}).get(DEDUP_KEY) is not None
    required = [c for c in REQUIRED_COLUMNS if not (pre_deduped and c == "event_id")]
    missing = [c for c in required if c not in source.column_names]
    if missing:
        raise ReportError(f"events: missing required column(s) {', '.join(missing)}")
    read, dupes = source.num_rows, 0
    if not pre_deduped:
        kind = pc.index_in(source.column("event_type"), value_set=pa.array(["impression", "click", "purchase"]))
        relevant = source.filter(pc.is_valid(kind))
        source = dedup_events(relevant)
        dupes = relevant.num_rows - source.num_rows
    con.register("raw", source)
    return read, dupes, source.column_names


def _reduce(con: duckdb.DuckDBPyConnection, columns: list[str], read: int, dupes: int) -> Reduced:
    def col(name: str, typ: str) -> str:
        return f"CAST({name} AS {typ})" if name in columns else f"CAST(NULL AS {typ})"

    phase = "COALESCE(CAST(phase AS BIGINT), 1)" if "phase" in columns else "CAST(1 AS BIGINT)"
    con.execute(f"""CREATE VIEW src AS SELECT user_id, arm, request_id, item_id, {_KIND} AS kind,
        CAST(CAST(ts AS DATE) - DATE '1970-01-01' AS INTEGER) AS day, {phase} AS ph,
        {col("page_type", "VARCHAR")} AS page_type, {col("device", "VARCHAR")} AS device,
        {col("model_version", "VARCHAR")} AS model_version, {col("value", "DOUBLE")} AS value FROM raw""")
    # distinct click keys (few: clicks are a small share of events), then one pass over the impressions
    con.execute("""CREATE TEMP TABLE ck AS SELECT request_id, item_id, count(*) AS n FROM src WHERE kind = 1
        GROUP BY request_id, item_id""")
    con.execute("""CREATE TEMP TABLE g AS SELECT i.user_id, i.arm, i.day, i.ph, i.page_type, i.device,
        count(*) AS imps, count(c.n) AS clicks
        FROM src i LEFT JOIN ck c ON i.request_id = c.request_id AND i.item_id = c.item_id
        WHERE i.kind = 0 GROUP BY i.user_id, i.arm, i.day, i.ph, i.page_type, i.device""")
    if con.execute("SELECT count(*) FROM g").fetchone()[0] == 0:
        raise ReportError("no impressions in the selected window")
    # users as int codes from here on (pandas groups integers much faster than strings), numbered in id order:
    # the same codes on every run, so the same order of floating-point sums and the same report
    con.execute("""CREATE TEMP TABLE u AS SELECT user_id, CAST(row_number() OVER (ORDER BY user_id) - 1 AS INTEGER)
        AS uid FROM (SELECT DISTINCT user_id FROM g WHERE user_id IS NOT NULL)""")
    per_day = _frame(
        con,
        f"""SELECT u.uid AS user_id, g.arm, g.day, g.ph AS _phase,
        COALESCE(g.page_type, '{_UNKNOWN}') AS _page_type, COALESCE(g.device, '{_UNKNOWN}') AS _device,
        g.imps, g.clicks FROM g JOIN u ON g.user_id = u.user_id""",
    )
    con.execute("DROP TABLE g")
    orphans = con.execute("""SELECT COALESCE(sum(n), 0) FROM ck WHERE NOT EXISTS (SELECT 1 FROM src i
        WHERE i.kind = 0 AND i.request_id = ck.request_id AND i.item_id = ck.item_id)""").fetchone()[0]
    versions: dict[tuple[str, int], set[str]] = {}
    for arm, ph, mv in con.execute("""SELECT DISTINCT arm, ph, model_version FROM src
            WHERE kind = 0 AND arm IS NOT NULL AND model_version IS NOT NULL""").fetchall():
        versions.setdefault((str(arm), int(ph)), set()).add(str(mv))
    purchases = _frame(
        con,
        """SELECT u.uid AS user_id, p.arm, p.day, p.ph AS _phase, count(*) AS purchases,
        sum(p.value) AS revenue FROM src p JOIN u ON p.user_id = u.user_id WHERE p.kind = 2
        GROUP BY u.uid, p.arm, p.day, p.ph""",
    )
    users = con.sql("SELECT user_id FROM u ORDER BY uid").to_arrow_table().column(0).combine_chunks()
    return Reduced(per_day, purchases, int(orphans), versions, read, dupes, users)


def _frame(con: duckdb.DuckDBPyConnection, sql: str) -> pd.DataFrame:
    """A query's result as pandas, strings as plain objects (few distinct values: dictionary-encoded on the way,
    so each distinct string is one Python object)."""
    t = con.sql(sql).to_arrow_table()  # a relation: no extra copy of the rows
    for i, f in enumerate(t.schema):
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            t = t.set_column(i, f.name, t.column(i).dictionary_encode())
    df = t.to_pandas()
    for c in df.columns:
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype(object)
    return df
