"""Event lake: idempotent partition rewrites, dedup by event_id, merging appends, pruned range reads."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from reco.data.events import EVENT_COLUMNS, EVENT_SCHEMA, Event
from reco.data.lake import EventLake, to_event_table

D1, D2, D3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)


def ev(event_id: str, day: date, minute: int = 0, **extra) -> dict:
    ts = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(minutes=minute)
    return {"event_id": event_id, "ts": ts, "user_id": "u1", "item_id": "i1", "event_type": "view", **extra}


@pytest.fixture
def lake(tmp_path: Path) -> EventLake:
    return EventLake(tmp_path / "lake")


def ids(table: pa.Table) -> list[str]:
    return table.column("event_id").to_pylist()


def test_partition_rewrite_is_idempotent_and_dedups(lake: EventLake) -> None:
    rows = [ev("a", D1, 1), ev("b", D1, 2), ev("a", D1, 3), ev("c", D1, 4, item_id="i2")]
    assert lake.write_partition(D1, rows) == 3  # the second "a" counts once
    first = lake.read()
    snap = lake.snapshot_id()
    assert ids(first) == ["a", "b", "c"]
    assert first.column("ts")[0].as_py().minute == 1  # the first occurrence is kept

    assert lake.write_partition(D1, rows) == 3  # rerun: same rows, same bytes, same snapshot
    assert lake.read().equals(first)
    assert lake.snapshot_id() == snap
    assert lake.days() == [D1]
    assert (lake.root / "date=2026-03-01" / "part-0.parquet").is_file()


def test_rewrite_replaces_the_day_and_empty_input_removes_it(lake: EventLake) -> None:
    lake.write_partition(D1, [ev("a", D1), ev("b", D1)])
    lake.write_partition(D1, [ev("z", D1)])
    assert ids(lake.read()) == ["z"]
    assert lake.write_partition(D1, []) == 0
    assert lake.days() == []


def test_write_partition_rejects_events_of_another_day(lake: EventLake) -> None:
    with pytest.raises(ValueError, match=r"1 event\(s\) do not fall on 2026-03-01 \(UTC\)"):
        lake.write_partition(D1, [ev("a", D1), ev("b", D2)])
    assert lake.days() == []  # nothing written


def test_day_is_the_utc_day_and_naive_timestamps_are_utc(lake: EventLake) -> None:
    # 2026-03-01 23:30 in New York is 2026-03-02 04:30 UTC
    ny = pd.Timestamp("2026-03-01 23:30", tz="America/New_York")
    naive = datetime(2026, 3, 1, 23, 59)  # read as UTC, like the API model
    df = pd.DataFrame([{**ev("ny", D2), "ts": ny}, {**ev("naive", D1), "ts": naive}])
    assert lake.write_partitions(df) == {D1: 1, D2: 1}
    assert ids(lake.read(D2, D2)) == ["ny"]
    assert lake.read(D2, D2).column("ts")[0].as_py() == datetime(2026, 3, 2, 4, 30, tzinfo=UTC)


def test_append_merges_and_dedups(lake: EventLake) -> None:
    lake.write_partition(D1, [ev("a", D1, 1), ev("b", D1, 2)])
    added = lake.append([ev("b", D1, 9), ev("c", D1, 3), ev("d", D2, 1), ev("d", D2, 2)])
    assert added == {D1: 1, D2: 1}
    assert ids(lake.read(D1, D1)) == ["a", "b", "c"]
    assert lake.read(D1, D1).column("ts")[1].as_py().minute == 2  # stored "b" wins over the redelivery
    assert lake.append([ev("c", D1), ev("d", D2)]) == {D1: 0, D2: 0}  # redelivery: harmless
    assert lake.read().num_rows == 4


def test_read_range_returns_only_that_range_in_day_then_write_order(lake: EventLake) -> None:
    rows = [ev(f"{d.day}-{k}", d, minute=60 - k) for d in (D3, D1, D2) for k in range(3)]
    assert lake.write_partitions(rows) == {D1: 3, D2: 3, D3: 3}
    assert ids(lake.read(D2, D2)) == ["2-0", "2-1", "2-2"]  # input order within the day, not ts order
    assert ids(lake.read(start=D2)) == ["2-0", "2-1", "2-2", "3-0", "3-1", "3-2"]
    assert ids(lake.read(end=D1)) == ["1-0", "1-1", "1-2"]
    assert lake.read(date(2026, 4, 1), date(2026, 4, 30)).num_rows == 0
    assert lake.read().schema == EVENT_SCHEMA
    assert lake.count_rows(D1, D2) == 6


def test_range_read_does_not_open_files_outside_the_range(lake: EventLake) -> None:
    lake.write_partitions([ev("a", D1), ev("b", D2), ev("c", D3)])
    # Corrupt the partitions outside the range: a pruned read never opens them.
    for day in (D1, D3):
        lake.partition_path(day).write_bytes(b"not parquet")
    assert ids(lake.read(D2, D2)) == ["b"]
    with pytest.raises(pa.ArrowInvalid):
        lake.read()


def test_columns_date_and_filter(lake: EventLake) -> None:
    lake.write_partitions([ev("a", D1), ev("b", D2, user_id="u2"), ev("c", D2)])
    t = lake.read(columns=["event_id", "date"], filter=ds.field("user_id") == "u1")
    assert t.column_names == ["event_id", "date"]
    assert t.to_pylist() == [{"event_id": "a", "date": D1}, {"event_id": "c", "date": D2}]
    with pytest.raises(ValueError, match="unknown lake columns"):
        lake.read(columns=["nope"])


def test_empty_lake(lake: EventLake) -> None:
    assert lake.days() == []
    table = lake.read()
    assert table.num_rows == 0 and table.schema == EVENT_SCHEMA
    df = lake.read_pandas(D1, D2)
    assert list(df.columns) == list(EVENT_COLUMNS) and df.empty
    assert lake.count_rows() == 0
    assert lake.snapshot_id() == EventLake(lake.root / "other").snapshot_id()


def test_read_pandas_dtypes(lake: EventLake) -> None:
    lake.write_partition(D1, [ev("a", D1, position=3, is_exploration=True), ev("b", D1)])
    df = lake.read_pandas()
    assert str(df["ts"].dtype) == "datetime64[us, UTC]"
    assert str(df["position"].dtype) == "Int32" and df["position"].isna().tolist() == [False, True]
    assert str(df["is_exploration"].dtype) == "boolean"


def test_snapshot_id_tracks_content(lake: EventLake) -> None:
    lake.write_partitions([ev("a", D1), ev("b", D2)])
    both, only_d1 = lake.snapshot_id(), lake.snapshot_id(D1, D1)
    assert both != only_d1
    lake.append([ev("c", D2)])
    assert lake.snapshot_id() != both
    assert lake.snapshot_id(D1, D1) == only_d1
    # The sidecar hash cache is only an optimisation: without it the id is the same.
    after = lake.snapshot_id()
    for sidecar in lake.root.glob("date=*/.part-0.sha256"):
        sidecar.unlink()
    assert lake.snapshot_id() == after


def test_input_validation() -> None:
    good = ev("a", D1)
    with pytest.raises(ValueError, match="unknown event columns"):
        to_event_table([{**good, "rating": 5}])
    with pytest.raises(ValueError, match="'user_id' has 1 null"):
        to_event_table([{**good, "user_id": None}])
    with pytest.raises(ValueError, match="required column 'item_id'"):
        to_event_table(pd.DataFrame([{k: v for k, v in good.items() if k != "item_id"}]))
    table = to_event_table([Event(**good)])
    assert table.schema == EVENT_SCHEMA and table.schema.metadata is None
