"""Drain the Redis event stream into the event lake: at-least-once delivery, exactly-once storage.

The sink reads through a consumer group and acknowledges a batch only after `lake.append` returned, so a
crash between the two leaves the batch pending; the next run re-reads its own pending entries first
(XREADGROUP id ``0``) and claims entries that other, dead consumers left pending (XAUTOCLAIM), then reads
new ones (``>``). A batch may therefore reach the lake twice; the lake deduplicates by event_id, so each
event is stored once. After acknowledging, the sink trims the stream up to the oldest entry any consumer
group still needs (`RedisStore.trim_acknowledged`), so the online learner's group never loses an entry.

The training DAG's ingest task calls `drain_stream_to_lake(store, EventLake(settings.lake_dir))`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Protocol

from reco.data.events import Event
from reco.state.store import RedisStore, StreamEntry

__all__ = ["LakeWriter", "SinkStats", "drain_stream_to_lake"]


class LakeWriter(Protocol):
    """What the sink needs of the lake (`reco.data.lake.EventLake`): idempotent append by event_id."""

    def append(self, events: list[Event]) -> Mapping[date, int]: ...


@dataclass
class SinkStats:
    """Counts of one drain. read counts every entry handled (re-reads included); appended counts rows the
    lake newly stored (re-delivered duplicates excluded); invalid entries (unparsable, or trimmed while
    pending) are acknowledged and skipped."""

    read: int = 0
    redelivered: int = 0
    appended: int = 0
    invalid: int = 0
    acked: int = 0
    batches: int = 0
    trimmed: int = 0
    per_day: dict[date, int] = field(default_factory=dict)  # new lake rows per UTC day


def _deliver(store: RedisStore, lake: LakeWriter, group: str, entries: Sequence[StreamEntry], stats: SinkStats) -> None:
    events = [e.event for e in entries if e.event is not None]
    if events:
        added = lake.append(events)  # raises -> nothing acknowledged, the batch stays pending
        stats.appended += sum(added.values())
        for day, n in added.items():
            stats.per_day[day] = stats.per_day.get(day, 0) + n
    stats.read += len(entries)
    stats.invalid += len(entries) - len(events)
    stats.acked += store.ack(group, [e.entry_id for e in entries])
    stats.batches += 1
    stats.trimmed += store.trim_acknowledged()


def drain_stream_to_lake(
    store: RedisStore,
    lake: LakeWriter,
    *,
    group: str = "lake-sink",
    consumer: str = "sink-1",
    batch: int = 5000,
    block_ms: int = 0,
    until_empty: bool = True,
    claim_idle_ms: int = 60_000,
    stop: Callable[[], bool] | None = None,
) -> SinkStats:
    """Move every stream entry into the lake; returns what happened.

    until_empty=True (the DAG task): return once no new entry is left. until_empty=False (a long-running
    sink): keep reading, waiting up to block_ms for new entries per read (0 = poll without waiting),
    until `stop()` is true. Lake errors propagate after leaving the failed batch pending.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    store.ensure_group(group, start_id="0")  # a new group starts at the beginning of the stream
    stats = SinkStats()
    # 1. our own unacknowledged entries (a previous run died between append and ack)
    while entries := store.read_group(group, consumer, count=batch, pending=True):
        stats.redelivered += len(entries)
        _deliver(store, lake, group, entries, stats)
    # 2. entries other consumers of the group left pending and abandoned
    while entries := store.claim_stale(group, consumer, min_idle_ms=claim_idle_ms, count=batch):
        stats.redelivered += len(entries)
        _deliver(store, lake, group, entries, stats)
    # 3. new entries
    block = block_ms if block_ms > 0 else None
    while stop is None or not stop():
        entries = store.read_group(group, consumer, count=batch, block_ms=block)
        if entries:
            _deliver(store, lake, group, entries, stats)
        elif until_empty:
            break
        elif block is None:
            time.sleep(0.1)  # polling without a blocking read: do not spin
    return stats
