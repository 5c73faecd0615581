"""The event lake: one Parquet file per UTC day, `root/date=YYYY-MM-DD/part-0.parquet` (hive layout).

Writes are idempotent and durable: a day's partition is always rewritten whole (temp file, fsync, rename,
directory fsync, under a per-day file lock), deduplicated by `event_id` keeping the first occurrence, so
at-least-once delivery and DAG reruns never create duplicate rows, and a process killed at any moment
leaves the previous or the new file, never a torn one. Row order inside a partition is the order the events
were given in (MovieLens tie-breaking downstream depends on file order). Reads go through `pyarrow.dataset` with the
`date` partition key, so a date range only opens the files of that range.

Next to each partition a `.part-0.sha256` sidecar caches the file's content hash (keyed by size and
mtime), so `snapshot_id` reads no data files. Names starting with "." are invisible to pyarrow.dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from reco.data.events import EVENT_COLUMNS, EVENT_SCHEMA, Event

try:  # POSIX advisory locks; on other systems writers must not overlap (documented, not enforced)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

PART_FILE = "part-0.parquet"
_DAY_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_PARTITIONING = ds.partitioning(pa.schema([("date", pa.date32())]), flavor="hive")
_DATASET_SCHEMA = EVENT_SCHEMA.append(pa.field("date", pa.date32()))
_REQUIRED = [f.name for f in EVENT_SCHEMA if not f.nullable]
# pandas view of the schema: nullable extension types where numpy has no null (int, bool).
_PANDAS_TYPES = {pa.int32(): pd.Int32Dtype(), pa.bool_(): pd.BooleanDtype()}

EventsLike = pa.Table | pd.DataFrame | Sequence[Event] | Sequence[Mapping[str, Any]]


# --------------------------------------------------------------------------- conversions


def to_event_table(events: EventsLike) -> pa.Table:
    """Anything event-shaped -> an Arrow table in exactly `EVENT_SCHEMA` (column order, types, no metadata).

    Missing optional columns become nulls; unknown columns and nulls in required columns are errors;
    naive timestamps are read as UTC (as `Event` does).

    >>> t = to_event_table([{"event_id": "e1", "ts": "2026-01-01T10:00:00", "user_id": "u", "item_id": "i",
    ...                      "event_type": "view"}])
    >>> t.num_rows, t.schema.field("ts").type
    (1, TimestampType(timestamp[us, tz=UTC]))
    """
    if isinstance(events, pa.Table):
        table = events
    elif isinstance(events, pd.DataFrame):
        table = _frame_to_arrow(events)
    else:
        rows = [e.to_row() if isinstance(e, Event) else dict(e) for e in events]
        table = _frame_to_arrow(pd.DataFrame(rows)) if rows else EVENT_SCHEMA.empty_table()
    unknown = [c for c in table.column_names if c not in EVENT_COLUMNS and c != "date"]
    if unknown:
        raise ValueError(f"unknown event columns: {unknown}")
    cols = []
    for f in EVENT_SCHEMA:
        if f.name not in table.column_names:
            if not f.nullable:
                raise ValueError(f"events lack required column {f.name!r}")
            cols.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        if f.name == "ts":
            col = _utc_micros(col)
        elif col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ValueError(f"event column {f.name!r}: cannot convert {col.type} to {f.type}: {e}") from None
        if not f.nullable and col.null_count:
            raise ValueError(f"event column {f.name!r} has {col.null_count} null value(s); it is required")
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=EVENT_SCHEMA)


def _frame_to_arrow(df: pd.DataFrame) -> pa.Table:
    df = df.reset_index(drop=True)
    if "ts" in df.columns and not isinstance(df["ts"].dtype, pd.DatetimeTZDtype):
        # strings / naive datetimes: parse as UTC (naive = UTC, like the API model)
        df = df.assign(ts=pd.to_datetime(df["ts"], utc=True, format="ISO8601"))
    return pa.Table.from_pandas(df, preserve_index=False)


def _utc_micros(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if not pa.types.is_timestamp(col.type):
        raise ValueError(f"event column 'ts' must be a timestamp, got {col.type}")
    if col.type.tz is None:  # naive = UTC: reinterpret, do not shift
        col = col.cast(pa.timestamp(col.type.unit, tz="UTC"))
    # sub-microsecond digits are dropped (safe=False) rather than refused
    return col.cast(pa.timestamp("us", tz="UTC"), safe=False)


def events_to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow events -> pandas with the lake's dtypes: str, datetime64[us, UTC], Int32 position, boolean
    is_exploration, float64 (NaN = null) propensity/value."""
    return table.to_pandas(types_mapper=_PANDAS_TYPES.get)


def _day_of(table: pa.Table) -> np.ndarray:
    """UTC calendar day of every row, as int32 days since the epoch."""
    return pc.cast(table.column("ts"), pa.date32()).to_numpy().astype("datetime64[D]").astype(np.int64)


def _dedup_first(table: pa.Table) -> pa.Table:
    """Drop rows whose event_id already appeared earlier in the table (order kept)."""
    if table.num_rows == 0:
        return table
    first = (
        table.select(["event_id"])
        .append_column("_i", pa.array(np.arange(table.num_rows)))
        .group_by("event_id", use_threads=False)
        .aggregate([("_i", "min")])
        .column("_i_min")
        .to_numpy()
    )
    if len(first) == table.num_rows:
        return table
    return table.take(np.sort(first))


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (POSIX: fsync the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the lake


class EventLake:
    """Date-partitioned Parquet store of events.

    >>> import tempfile
    >>> lake = EventLake(tempfile.mkdtemp())
    >>> e = {"event_id": "e1", "ts": "2026-01-01T10:00:00Z", "user_id": "u", "item_id": "i", "event_type": "view"}
    >>> lake.write_partition(date(2026, 1, 1), [e, e])  # the duplicate counts once
    1
    >>> lake.days(), lake.read().num_rows
    ([datetime.date(2026, 1, 1)], 1)
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"EventLake({str(self.root)!r})"

    # ---- layout

    def partition_dir(self, day: date) -> Path:
        return self.root / f"date={day.isoformat()}"

    def partition_path(self, day: date) -> Path:
        return self.partition_dir(day) / PART_FILE

    def days(self) -> list[date]:
        """Days that have a partition, ascending."""
        if not self.root.is_dir():
            return []
        out = []
        for child in self.root.iterdir():
            m = _DAY_DIR.match(child.name)
            if m and (child / PART_FILE).is_file():
                out.append(date.fromisoformat(m.group(1)))
        return sorted(out)

    def _days_in(self, start: date | None, end: date | None) -> list[date]:
        return [d for d in self.days() if (start is None or d >= start) and (end is None or d <= end)]

    # ---- writing

    def write_partition(self, day: date, events: EventsLike) -> int:
        """Replace the partition of `day` with `events` (deduplicated by event_id, first kept).

        Every event must fall on `day` (UTC). An empty input removes the day's partition. Returns the
        number of rows written.
        """
        table = to_event_table(events)
        days = _day_of(table)
        wrong = days != _epoch_day(day)
        if wrong.any():
            bad = table.column("ts")[int(np.argmax(wrong))].as_py()
            raise ValueError(
                f"{int(wrong.sum())} event(s) do not fall on {day.isoformat()} (UTC), e.g. ts={bad.isoformat()}"
            )
        with self._locked(day):
            return self._write_locked(day, _dedup_first(table))

    def write_partitions(
        self, events: EventsLike, *, on_partition: Callable[[date, int], None] | None = None
    ) -> dict[date, int]:
        """Split `events` by UTC day and replace each of those days' partitions (one pass, days ascending).

        Days without events in the input are left alone. Returns rows written per day.
        """
        written: dict[date, int] = {}
        for day, part in _split_by_day(to_event_table(events)):
            with self._locked(day):
                written[day] = self._write_locked(day, _dedup_first(part))
            if on_partition is not None:
                on_partition(day, written[day])
        return written

    def append(self, events: EventsLike) -> dict[date, int]:
        """Merge `events` into their days' partitions: existing rows first, then the new ones whose event_id
        is not already stored. Returns the number of NEW rows stored per touched day (0 = all duplicates).

        Each call rewrites the touched partitions, so a stream sink should append in batches.
        """
        added: dict[date, int] = {}
        for day, part in _split_by_day(to_event_table(events)):
            with self._locked(day):
                path = self.partition_path(day)
                old = pq.read_table(path, schema=EVENT_SCHEMA) if path.is_file() else EVENT_SCHEMA.empty_table()
                merged = _dedup_first(pa.concat_tables([old, part]))
                self._write_locked(day, merged)
                added[day] = merged.num_rows - old.num_rows
        return added

    def delete_partition(self, day: date) -> bool:
        """Remove a day's partition; False if it did not exist."""
        with self._locked(day):
            path = self.partition_path(day)
            existed = path.is_file()
            path.unlink(missing_ok=True)
            self._sidecar(day).unlink(missing_ok=True)
            return existed

    def _write_locked(self, day: date, table: pa.Table) -> int:
        if table.num_rows == 0:
            self.partition_path(day).unlink(missing_ok=True)
            self._sidecar(day).unlink(missing_ok=True)
            return 0
        folder = self.partition_dir(day)
        new_dir = not (folder / PART_FILE).exists()
        # Serialise in memory first: the bytes are hashed for snapshot_id without reading the file back.
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        fd, tmp = tempfile.mkstemp(prefix=".part-0.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())  # the bytes are on disk before the rename publishes them
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; other readers (Airflow workers, containers) need read
            os.replace(tmp, folder / PART_FILE)
            # The rename itself is durable once the directory is synced (and a new day's directory once its
            # parent is): the stream sink acknowledges a batch only after this returns.
            _fsync_dir(folder)
            if new_dir:
                _fsync_dir(self.root)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        st = (folder / PART_FILE).stat()
        meta = {"sha256": hashlib.sha256(data).hexdigest(), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "rows": table.num_rows}  # fmt: skip
        _atomic_write_text(self._sidecar(day), json.dumps(meta))
        return table.num_rows

    def _sidecar(self, day: date) -> Path:
        return self.partition_dir(day) / ".part-0.sha256"

    @contextlib.contextmanager
    def _locked(self, day: date) -> Iterator[None]:
        """Serialise writers of one day across processes (read-modify-write in `append`)."""
        folder = self.partition_dir(day)
        folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(folder / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ---- reading

    def dataset(self, start: date | None = None, end: date | None = None) -> ds.Dataset:
        """The partitions of a day range as a pyarrow dataset with the `date` partition column, days
        ascending (explicit schema: no file is opened to infer it)."""
        files = [str(self.partition_path(d)) for d in self._days_in(start, end)]
        return ds.dataset(
            files,
            schema=_DATASET_SCHEMA,
            format="parquet",
            partitioning=_PARTITIONING,
            partition_base_dir=str(self.root),
        )

    def read(
        self,
        start: date | None = None,
        end: date | None = None,
        *,
        columns: Sequence[str] | None = None,
        filter: ds.Expression | None = None,
    ) -> pa.Table:
        """Events of the days `start`..`end` (inclusive; None = open), ordered by day, then as written.

        `columns` may include "date" (the partition key); `filter` is a pyarrow expression over the columns.
        """
        wanted = list(columns) if columns is not None else list(EVENT_COLUMNS)
        unknown = [c for c in wanted if c not in _DATASET_SCHEMA.names]
        if unknown:
            raise ValueError(f"unknown lake columns: {unknown}")
        days = self._days_in(start, end)
        if not days:
            return _DATASET_SCHEMA.empty_table().select(wanted)
        expr = _range_expr(start, end)
        if filter is not None:
            expr = filter if expr is None else expr & filter
        # Partition pruning happens twice: only the range's files are listed, and the date expression is
        # matched against each file's `date=` key (pyarrow skips fragments it excludes without opening them).
        return self.dataset(start, end).to_table(columns=wanted, filter=expr)

    def read_pandas(
        self,
        start: date | None = None,
        end: date | None = None,
        *,
        columns: Sequence[str] | None = None,
        filter: ds.Expression | None = None,
    ) -> pd.DataFrame:
        """`read` as a DataFrame with the dtypes of `events_to_pandas`."""
        return events_to_pandas(self.read(start, end, columns=columns, filter=filter))

    def count_rows(self, start: date | None = None, end: date | None = None) -> int:
        """Rows in the range, from the Parquet footers only."""
        return sum(pq.ParquetFile(self.partition_path(d)).metadata.num_rows for d in self._days_in(start, end))

    def snapshot_id(self, start: date | None = None, end: date | None = None) -> str:
        """Content hash of the partitions in the range: equal data -> equal id, across reruns and machines
        (the Parquet writer is deterministic). Lineage tags carry it."""
        h = hashlib.sha256(b"reco-lake-v1")
        for day in self._days_in(start, end):
            h.update(f"{day.isoformat()}:{self._file_sha256(day)}\n".encode())
        return h.hexdigest()[:20]

    def _file_sha256(self, day: date) -> str:
        path = self.partition_path(day)
        st = path.stat()
        try:
            meta = json.loads(self._sidecar(day).read_text())
            if meta["size"] == st.st_size and meta["mtime_ns"] == st.st_mtime_ns:
                return str(meta["sha256"])
        except (OSError, ValueError, KeyError):
            pass  # missing or stale cache (e.g. a crash between the rename and the sidecar): hash the file
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


# --------------------------------------------------------------------------- helpers


_EPOCH = date(1970, 1, 1)


def _epoch_day(day: date) -> int:
    return (day - _EPOCH).days


def _split_by_day(table: pa.Table) -> Iterator[tuple[date, pa.Table]]:
    """(day, rows of that day in input order), days ascending: one stable sort, then slices."""
    if table.num_rows == 0:
        return
    days = _day_of(table)
    order = np.argsort(days, kind="stable")
    table, days = table.take(order), days[order]
    bounds = np.flatnonzero(np.diff(days)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(days)]])
    for s, e in zip(starts, ends, strict=True):
        yield _EPOCH + timedelta(days=int(days[s])), table.slice(s, e - s)


def _range_expr(start: date | None, end: date | None) -> ds.Expression | None:
    expr = None
    if start is not None:
        expr = ds.field("date") >= pa.scalar(start, pa.date32())
    if end is not None:
        e = ds.field("date") <= pa.scalar(end, pa.date32())
        expr = e if expr is None else expr & e
    return expr


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
