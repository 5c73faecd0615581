"""Reading events for the A/B report: a lake directory, a Parquet file or a CSV file, only the columns the
report needs, restricted to a date window."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

#: Columns the report reads (the others are never loaded).
REQUIRED_COLUMNS = ("event_id", "ts", "user_id", "item_id", "event_type", "request_id", "arm")
#: Read when present: `phase` (null = phase 1), `page_type` and `device` (breakdowns), `value` (revenue).
OPTIONAL_COLUMNS = ("model_version", "value", "phase", "page_type", "device")
#: Columns read dictionary-encoded from the lake (few distinct values, or many repeats).
_DICT_COLUMNS = ("event_type", "arm", "model_version", "user_id", "page_type", "device")
DEDUP_KEY = b"reco.deduplicated"


class ReportError(ValueError):
    """Input the report cannot be computed from; the message says what is wrong."""


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
            cols = [c for c in cols if c in REQUIRED_COLUMNS or c in ("model_version", "value")]
            return lake.read(lo, end, columns=cols).replace_schema_metadata({DEDUP_KEY: b"lake"})
        # Repetitive strings stay dictionary-encoded as Parquet stores them (no per-row string copies: less
        # memory and faster filters); one shared dictionary per column so that joins and group-bys accept them.
        fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=list(_DICT_COLUMNS)))
        files = [str(lake.partition_path(d)) for d in days]
        # a column added to the event schema later (e.g. `phase`) is in the newer partitions only: take the
        # union of the oldest and newest partitions' schemas (missing values read as null)
        schema = pa.unify_schemas([ds.dataset(f, format=fmt).schema for f in {files[0], files[-1]}])
        dset = ds.dataset(files, format=fmt, schema=schema)
        # optional columns that older partitions lack (e.g. `phase`) are simply not read
        table = dset.to_table(columns=[c for c in cols if c in REQUIRED_COLUMNS or c in dset.schema.names])
        return table.unify_dictionaries().replace_schema_metadata({DEDUP_KEY: b"lake"})
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
