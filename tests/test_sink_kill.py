"""`reco sink` as a process, killed with SIGKILL at seeded random moments while events keep arriving, and
restarted: the lake ends with every accepted event exactly once (acknowledged only after a durable write;
re-read after a crash and deduplicated by event_id). Real Redis, real Parquet lake, real subprocesses."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reco.data.events import Event
from reco.data.lake import EventLake
from reco.state.store import RedisStore, connect

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 20, 0, tzinfo=UTC)
SCALE = float(os.environ.get("RECO_TEST_SCALE", "1"))


def _sink(env: dict[str, str], log: Path) -> subprocess.Popen:
    reco = str(Path(sys.executable).parent / "reco")
    with log.open("ab") as fh:
        return subprocess.Popen([reco, "sink", "--batch", "40", "--block-ms", "200"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _events(start: int, n: int) -> list[Event]:
    # two UTC days, so batches rewrite several partitions
    return [Event(event_id=f"k{i:05d}", ts=T0 + timedelta(minutes=i), user_id=f"u{i % 11}", item_id=f"i{i % 13}",
                  event_type="view") for i in range(start, start + n)]  # fmt: skip


def _lake_ids(lake: EventLake) -> list[str]:
    return lake.read(columns=["event_id"]).column("event_id").to_pylist() if lake.days() else []


def test_sink_killed_at_random_moments_stores_every_event_once(redis_url, redis_prefix, tmp_path: Path) -> None:
    rng = random.Random(14)
    env = {**os.environ, "RECO_REDIS_URL": redis_url, "RECO_REDIS_PREFIX": redis_prefix, "RECO_HOME": str(tmp_path)}
    client = connect(redis_url)
    store = RedisStore(client, redis_prefix)
    lake = EventLake(tmp_path / "lake")
    log = tmp_path / "sink.log"
    kills, sent = max(2, int(5 * SCALE)), 0
    proc, progressed = _sink(env, log), 0
    try:
        for _ in range(kills):
            # events keep arriving; once this sink has written something, SIGKILL it at a random moment
            before, started = len(_lake_ids(lake)), time.monotonic()
            kill_at = None
            while time.monotonic() - started < 120:
                store.ingest(_events(sent, 20))
                sent += 20
                if kill_at is None and len(_lake_ids(lake)) > before:
                    kill_at, progressed = time.monotonic() + rng.uniform(0.05, 1.0), progressed + 1
                if kill_at is not None and time.monotonic() >= kill_at:
                    break
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            proc = _sink(env, log)
        deadline = time.monotonic() + 180  # generous: a loaded 2-core machine
        while time.monotonic() < deadline and len(_lake_ids(lake)) < sent:
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        client.close()
    ids = _lake_ids(lake)
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert sorted(ids) == [f"k{i:05d}" for i in range(sent)], log.read_text()[-2000:]
    assert progressed == kills  # every killed sink had been writing
