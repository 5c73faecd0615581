"""Stream -> lake sink against the real Redis and the real Parquet lake: at-least-once, stored once."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from reco.data.events import Event
from reco.data.lake import EventLake
from reco.state.sink import drain_stream_to_lake
from reco.state.store import RedisStore, connect

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)


@pytest.fixture
def store(redis_url: str, redis_prefix: str):
    client = connect(redis_url)
    yield RedisStore(client, redis_prefix)
    client.close()


def _events(n: int) -> list[Event]:
    # spread over two UTC days so that batches touch several partitions
    return [
        Event(event_id=f"e{i:03d}", ts=T0 + timedelta(minutes=5 * i), user_id=f"u{i % 3}", item_id=f"i{i % 7}",
              event_type="view" if i % 2 else "impression")
        for i in range(n)
    ]  # fmt: skip


class CrashAfterAppend:
    """The real lake, but the process "dies" right after the n-th append (before the sink acknowledges)."""

    def __init__(self, lake: EventLake, crash_on: int) -> None:
        self.lake, self.crash_on, self.calls = lake, crash_on, 0

    def append(self, events):
        out = self.lake.append(events)
        self.calls += 1
        if self.calls == self.crash_on:
            raise RuntimeError("killed between append and ack")
        return out


def _lake_ids(lake: EventLake) -> list[str]:
    return lake.read().column("event_id").to_pylist()


def test_drain_moves_every_event_once_and_trims(store: RedisStore, tmp_path: Path) -> None:
    events = _events(30)
    store.ingest(events)
    lake = EventLake(tmp_path / "lake")
    stats = drain_stream_to_lake(store, lake, batch=8)
    assert (stats.read, stats.appended, stats.acked, stats.batches) == (30, 30, 30, 4)
    assert sorted(_lake_ids(lake)) == sorted(e.event_id for e in events)
    assert lake.days() == [date(2026, 3, 1), date(2026, 3, 2)]
    assert stats.per_day == {date(2026, 3, 1): 24, date(2026, 3, 2): 6}
    assert store.stream_length() == 0  # the only group acknowledged everything
    assert drain_stream_to_lake(store, lake).read == 0  # nothing new: a no-op


def test_crash_between_append_and_ack_then_rerun_stores_each_event_once(store: RedisStore, tmp_path: Path) -> None:
    events = _events(25)
    store.ingest(events)
    lake = EventLake(tmp_path / "lake")
    with pytest.raises(RuntimeError, match="killed"):
        drain_stream_to_lake(store, CrashAfterAppend(lake, crash_on=2), batch=10)
    assert len(_lake_ids(lake)) == 20  # two batches reached the lake, only the first was acknowledged
    stats = drain_stream_to_lake(store, lake, batch=10)
    assert stats.redelivered == 10 and stats.read == 15
    assert stats.appended == 5  # the re-delivered batch was already in the lake
    ids = _lake_ids(lake)
    assert len(ids) == len(set(ids)) == 25
    assert store.stream_length() == 0


def test_entries_of_a_dead_consumer_are_claimed(store: RedisStore, tmp_path: Path) -> None:
    store.ingest(_events(12))
    lake = EventLake(tmp_path / "lake")
    with pytest.raises(RuntimeError):
        drain_stream_to_lake(store, CrashAfterAppend(lake, crash_on=1), consumer="sink-a", batch=5)
    stats = drain_stream_to_lake(store, lake, consumer="sink-b", batch=5, claim_idle_ms=0)
    assert stats.redelivered == 5
    ids = _lake_ids(lake)
    assert len(ids) == len(set(ids)) == 12


def test_trim_keeps_what_another_group_has_not_consumed(store: RedisStore, tmp_path: Path) -> None:
    store.ingest(_events(10))
    store.ensure_group("learner", start_id="0")
    drain_stream_to_lake(store, EventLake(tmp_path / "lake"))
    assert store.stream_length() == 10  # the learner has read nothing yet
    got = store.read_group("learner", "l1", count=4)
    store.ack("learner", [e.entry_id for e in got])
    assert store.trim_acknowledged() == 4
    assert store.stream_length() == 6


def test_unparsable_entries_are_counted_and_skipped(store: RedisStore, tmp_path: Path) -> None:
    store.ingest(_events(3))
    store.client.xadd(store.stream_key, {"e": "{not json"})
    stats = drain_stream_to_lake(store, EventLake(tmp_path / "lake"))
    assert (stats.read, stats.invalid, stats.appended) == (4, 1, 3)


def test_bad_batch_size_is_rejected(store: RedisStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch"):
        drain_stream_to_lake(store, EventLake(tmp_path), batch=0)
