"""Reading events for the A/B report: a lake directory, a Parquet file or a CSV file, only the columns the
report needs, restricted to a date window."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: Columns the report reads (the others are never loaded).
REQUIRED_COLUMNS = ("event_id", "ts", "user_id", "item_id", "event_type", "request_id", "arm")
#: Read when present: `phase` (null = phase 1), `page_type` and `device` (breakdowns), `value` (revenue).
OPTIONAL_COLUMNS = ("model_version", "value", "phase", "page_type", "device")
DEDUP_KEY = b"reco.deduplicated"


class ReportError(ValueError):
    """Input the report cannot be computed from; the message says what is wrong."""


@dataclass(frozen=True)
class LakeScan:
    """Day partitions of a lake for the report to scan (never loaded whole: `reco.experiments.columnar`)."""

    files: tuple[str, ...]
    columns: tuple[str, ...]  # the report's columns present in the partitions (union of their schemas)


def read_events(
    path: str | Path, start: date | None = None, end: date | None = None, pre_period_days: int = 0
) -> pa.Table | LakeScan:
    """Events of a lake directory (date=YYYY-MM-DD partitions), a Parquet file or a CSV file, restricted to
    [start - pre_period_days, end] and to the columns the report needs. A lake's partitions are returned as
    a `LakeScan` (read by the report's SQL, partition by partition); files are read into an Arrow table."""
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
            cols = [c for c in cols if c in REQUIRED_COLUMNS or c in ("model_version", "value")]
            return lake.read(lo, end, columns=cols).replace_schema_metadata({DEDUP_KEY: b"lake"})
        files = [str(lake.partition_path(d)) for d in days]
        # a column added to the event schema later (e.g. `phase`) is in the newer partitions only: take the
        # union of the oldest and newest partitions' schemas (missing values read as null)
        names = set(pa.unify_schemas([pq.read_schema(f) for f in {files[0], files[-1]}]).names)
        return LakeScan(tuple(files), tuple(c for c in cols if c in REQUIRED_COLUMNS or c in names))
    elif path.is_file() and path.suffix.lower() in (".parquet", ".pq"):
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
        types = {c: pa.string() for c in wanted if c not in ("ts", "value", "phase")}
        types |= {"value": pa.float64(), "phase": pa.int64()}
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


def dedup_events(table: pa.Table) -> pa.Table:
    """Keep the first row of each event_id (Arrow hash group-by; multithreaded, order restored)."""
    idx = pa.array(np.arange(table.num_rows, dtype=np.int64))
    first = table.select(["event_id"]).append_column("_i", idx).group_by("event_id").aggregate([("_i", "min")])
    if first.num_rows == table.num_rows:
        return table
    return table.take(np.sort(first.column("_i_min").to_numpy()))
