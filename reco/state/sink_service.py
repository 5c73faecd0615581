"""The long-running stream sink (`reco sink`): drains the Redis event stream into the lake, again and again.

Each round is one `drain_stream_to_lake` (own pending entries, then abandoned ones, then new ones until a
blocking read comes back empty), so delivery stays at-least-once and storage exactly-once exactly as in
the training DAG's ingest task. Between rounds the service beats a heartbeat (`reco sink --check`, the
compose healthcheck) and refreshes its figures (`SinkTotals`, exposed at /metrics). A Redis or lake
failure is logged and retried with a capped backoff: the failed batch stays pending, nothing is lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from reco.state.sink import LakeWriter, drain_stream_to_lake
from reco.state.store import RedisStore

log = logging.getLogger(__name__)

#: A sink that has not beaten for this long is unhealthy (`reco sink --check`).
HEARTBEAT_TTL_S = 60
DEFAULT_GROUP = "lake-sink"


def heartbeat_key(prefix: str, consumer: str) -> str:
    return f"{prefix}:sink:heartbeat:{consumer}"


@dataclass
class SinkTotals:
    """Running totals since the process started, and the group's backlog at the last round."""

    read: int = 0
    appended: int = 0
    redelivered: int = 0
    invalid: int = 0
    rounds: int = 0
    errors: int = 0
    last_drain_ts: float = 0.0
    lag: int = 0  # entries the group has not been given yet
    pending: int = 0  # given, not acknowledged

    def metrics(self) -> dict[str, float]:
        """Flat Prometheus metrics (`reco.telemetry.exposition.format_flat`)."""
        return {
            "reco_sink_events_read_total": self.read,
            "reco_sink_events_appended_total": self.appended,
            "reco_sink_events_redelivered_total": self.redelivered,
            "reco_sink_events_invalid_total": self.invalid,
            "reco_sink_rounds_total": self.rounds,
            "reco_sink_errors_total": self.errors,
            "reco_sink_last_drain_timestamp_seconds": self.last_drain_ts,
            "reco_sink_lag_entries": self.lag + self.pending,
        }


def group_backlog(store: RedisStore, group: str) -> tuple[int, int]:
    """(lag, pending) of a consumer group: entries not yet delivered to it, delivered and not acknowledged.

    Redis < 7 reports no `lag`; then only pending counts."""
    try:
        groups = store.client.xinfo_groups(store.stream_key)
    except Exception:  # no stream yet, or Redis away: no backlog known
        return 0, 0
    for g in groups:
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == group:
            return int(g.get("lag") or 0), int(g["pending"])
    return 0, 0


def run_sink(
    store: RedisStore,
    lake: LakeWriter,
    *,
    group: str = DEFAULT_GROUP,
    consumer: str = "sink-service",
    batch: int = 5000,
    block_ms: int = 1000,
    stop: Callable[[], bool] = lambda: False,
    totals: SinkTotals | None = None,
    max_backoff_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> SinkTotals:
    """Drain rounds until `stop()`; returns the totals (also updated in place when given)."""
    totals = totals if totals is not None else SinkTotals()
    backoff = 0.5
    while not stop():
        try:
            stats = drain_stream_to_lake(
                store, lake, group=group, consumer=consumer, batch=batch, block_ms=block_ms, until_empty=True
            )
            store.client.set(heartbeat_key(store.prefix, consumer), repr(time.time()), ex=HEARTBEAT_TTL_S)
        except Exception as exc:  # Redis or lake failure: the batch stays pending; retry with backoff
            totals.errors += 1
            log.warning("sink round failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, backoff)
            sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
            continue
        backoff = 0.5
        totals.read += stats.read
        totals.appended += stats.appended
        totals.redelivered += stats.redelivered
        totals.invalid += stats.invalid
        totals.rounds += 1
        totals.last_drain_ts = time.time()
        totals.lag, totals.pending = group_backlog(store, group)
        if stats.read:
            log.info(
                "sink: %d read, %d new in the lake, %d redelivered, %d invalid",
                stats.read, stats.appended, stats.redelivered, stats.invalid,
                extra={"per_day": {str(k): v for k, v in stats.per_day.items()}},
            )  # fmt: skip
    return totals


def last_beat(store_client, prefix: str, consumer: str) -> float | None:
    """Unix time of the sink's last heartbeat, None when it has not beaten within the TTL."""
    raw = store_client.get(heartbeat_key(prefix, consumer))
    return None if raw is None else float(raw)
