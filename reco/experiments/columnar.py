"""Events -> the report's reduced tables with DuckDB SQL: streaming over the Parquet lake's day partitions (or
an Arrow table), with a memory limit (spilling to disk beyond it) and a fixed thread count.

The heavy part of the report is one pass over every impression: click matching (a full outer join against the
distinct click keys, which also yields the orphan clicks), then a group-by to one row per user x arm x day x
phase x page type x device (x model version: the versions seen come from the same pass). DuckDB reads only the
needed columns of each partition and never materialises the events. The reduced tables stay in the session
(`reduce_in`); `reco.experiments.aggregate` goes on from them in SQL, so the report over 100M events holds
~4 GB (docs/benchmarks.md "A/B report at 10M and 100M events"). `reduce_events` fetches them (tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from reco.experiments.reading import DEDUP_KEY, REQUIRED_COLUMNS, LakeScan, ReportError, dedup_events

#: DuckDB's threads and memory limit (beyond it, hash tables spill to a temporary folder). Python holds only
#: per-arm sums next to it: 4 GB keeps the whole report within 8 GB at 100M events (4.3 GB peak measured).
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


@dataclass
class ReducedIn:
    """What `reduce_in` leaves outside its tables."""

    orphans: int
    versions: dict[tuple[str, int], set[str]]
    read: int
    dupes: int


@contextlib.contextmanager
def session(threads: int = THREADS, memory_limit: str = MEMORY_LIMIT) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection with the report's thread count and memory limit, spilling to a temporary folder."""
    spill = tempfile.mkdtemp(prefix="reco-report-duckdb-")
    con = duckdb.connect(config={"threads": threads, "memory_limit": memory_limit, "temp_directory": spill,
                                 "preserve_insertion_order": False})  # fmt: skip
    try:
        con.execute("SET TimeZone = 'UTC'")  # days are UTC days (timestamptz -> date follows the session zone)
        yield con
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def reduce_events(source: pa.Table | LakeScan, threads: int = THREADS, memory_limit: str = MEMORY_LIMIT) -> Reduced:
    """Reduce `source` (a `LakeScan` of day partitions, or an Arrow table as `read_events` returns it) and fetch
    the reduced tables (the report itself keeps them in DuckDB: `reco.experiments.aggregate`)."""
    with session(threads, memory_limit) as con:
        red = reduce_in(con, source)
        per_day = _frame(
            con,
            """SELECT p.uid, ar.arm, p.day, p.ph, p.page_type, p.device, CAST(sum(p.imps) AS BIGINT) AS imps,
            CAST(sum(p.clicks) AS BIGINT) AS clicks FROM pdy p LEFT JOIN arms ar ON p.arm = ar.a GROUP BY ALL""",
        )
        purchases = _frame(
            con,
            """SELECT p.uid, ar.arm, p.day, p.ph, p.purchases, p.revenue FROM pb p
            LEFT JOIN arms ar ON p.arm = ar.a""",
        )
        users = con.sql("SELECT user_id FROM u ORDER BY uid").to_arrow_table().column(0).combine_chunks()
        per_day = per_day.rename(columns={"uid": "user_id", "ph": "_phase", "page_type": "_page_type",
                                          "device": "_device"})  # fmt: skip
        purchases = purchases.rename(columns={"uid": "user_id", "ph": "_phase"})
        return Reduced(per_day, purchases, red.orphans, red.versions, red.read, red.dupes, users)


def reduce_in(con: duckdb.DuckDBPyConnection, source: pa.Table | LakeScan) -> ReducedIn:
    """Reduce `source` inside `con`: tables `pdy` (uid, arm, day, ph, page_type, device, imps, clicks; a key may
    have several rows: sum them; `arm` is the code of table `arms` (arm, a)), `pb`
    (uid, arm, day, ph, purchases, revenue) and `u` (user_id, uid)."""
    read, dupes, columns = _register(con, source)
    return _reduce(con, columns, read, dupes)


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


def _reduce(con: duckdb.DuckDBPyConnection, columns: list[str], read: int, dupes: int) -> ReducedIn:
    def col(name: str, typ: str) -> str:
        return f"CAST({name} AS {typ})" if name in columns else f"CAST(NULL AS {typ})"

    phase = "COALESCE(CAST(phase AS BIGINT), 1)" if "phase" in columns else "CAST(1 AS BIGINT)"
    # filters name `event_type` itself (not `kind`): DuckDB pushes them into the Parquet scan
    con.execute(f"""CREATE VIEW src AS SELECT user_id, arm, request_id, item_id, event_type, {_KIND} AS kind,
        CAST(CAST(ts AS DATE) - DATE '1970-01-01' AS INTEGER) AS day, {phase} AS ph,
        {col("page_type", "VARCHAR")} AS page_type, {col("device", "VARCHAR")} AS device,
        {col("model_version", "VARCHAR")} AS model_version, {col("value", "DOUBLE")} AS value FROM raw""")
    # distinct click keys (few: clicks are a small share of events), then ONE pass over the impressions: the
    # full outer join also yields the click keys no impression matched (orphans: the row with `orphan` set), and
    # the model version is one more grouping key (constant per arm and phase: it barely adds rows)
    con.execute("""CREATE TEMP TABLE ck AS SELECT request_id, item_id, count(*) AS n FROM src
        WHERE event_type = 'click' GROUP BY request_id, item_id""")
    con.execute("""CREATE TEMP TABLE g AS SELECT i.user_id, i.arm, i.day, i.ph, i.page_type, i.device,
        i.model_version, i.kind IS NULL AS orphan, CAST(count(i.kind) AS BIGINT) AS imps,
        CAST(count(i.kind) FILTER (c.n IS NOT NULL) AS BIGINT) AS clicks, sum(c.n) FILTER (i.kind IS NULL) AS orphans
        FROM (SELECT * FROM src WHERE event_type = 'impression') i FULL OUTER JOIN ck c
            ON i.request_id = c.request_id AND i.item_id = c.item_id
        GROUP BY ALL""")
    orphans, n_imps = con.execute("""SELECT COALESCE(sum(orphans), 0), count(*) FILTER (NOT orphan)
        FROM g""").fetchone()
    if n_imps == 0:
        raise ReportError("no impressions in the selected window")
    versions: dict[tuple[str, int], set[str]] = {}
    for arm, ph, mv in con.execute("""SELECT DISTINCT arm, ph, model_version FROM g
            WHERE NOT orphan AND arm IS NOT NULL AND model_version IS NOT NULL""").fetchall():
        versions.setdefault((str(arm), int(ph)), set()).add(str(mv))
    # users as int codes from here on (joins and group-bys on integers are faster than on strings)
    con.execute("""CREATE TEMP TABLE u AS SELECT user_id, CAST(row_number() OVER () - 1 AS INTEGER) AS uid
        FROM (SELECT DISTINCT user_id FROM g WHERE NOT orphan AND user_id IS NOT NULL)""")
    con.execute("""CREATE TEMP TABLE pb0 AS SELECT u.uid, p.arm, p.day, p.ph, count(*) AS purchases,
        sum(p.value) AS revenue FROM src p JOIN u ON p.user_id = u.user_id WHERE p.event_type = 'purchase'
        GROUP BY u.uid, p.arm, p.day, p.ph""")
    # arms as small int codes numbered in name order (so ordering by code is ordering by name): every later join
    # and group-by on (user, arm) is on two integers
    con.execute("""CREATE TEMP TABLE arms AS SELECT arm, CAST(row_number() OVER (ORDER BY arm) - 1 AS SMALLINT) AS a
        FROM (SELECT DISTINCT arm FROM g WHERE NOT orphan AND arm IS NOT NULL
              UNION SELECT DISTINCT arm FROM pb0 WHERE arm IS NOT NULL)""")
    # not grouped again without the model version: every later use of `pdy` sums over its rows, and a user's
    # impressions in one (arm, phase) have one model version in practice (regrouping 20M rows at 100M events
    # costs more than the few duplicated keys)
    con.execute(f"""CREATE TEMP TABLE pdy AS SELECT u.uid, ar.a AS arm, g.day, g.ph,
        COALESCE(g.page_type, '{_UNKNOWN}') AS page_type, COALESCE(g.device, '{_UNKNOWN}') AS device,
        g.imps, g.clicks FROM g JOIN u ON g.user_id = u.user_id LEFT JOIN arms ar ON g.arm = ar.arm
        WHERE NOT g.orphan""")
    con.execute("DROP TABLE g")
    con.execute("""CREATE TEMP TABLE pb AS SELECT p.uid, ar.a AS arm, p.day, p.ph, p.purchases, p.revenue
        FROM pb0 p LEFT JOIN arms ar ON p.arm = ar.arm""")
    con.execute("DROP TABLE pb0")
    return ReducedIn(int(orphans), versions, read, dupes)


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
