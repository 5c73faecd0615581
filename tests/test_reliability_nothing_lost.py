"""Nothing lost: N events (with duplicates and out-of-order retries) through `POST /v1/events` while the
online learner (`reco learn`, a real process) is killed and restarted once and Redis (AOF,
`appendfsync always`) is killed and restarted once; then the stream sink drains into the lake.

Invariant: the distinct event ids in the lake == the distinct event ids of every batch the API answered
202, and the learner's consumer group was delivered every stream entry. A client retries a batch the API
refused with 503 (Retry-After) - what the contract asks of it. Figures are printed with `-s` and
recorded in docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from reliability_helpers import ARM_ALIASES, RedisProcess
from serving_helpers import register_version, serving_settings, tiny_bundle

from reco.data.lake import EventLake
from reco.experiments.assignment import assign, load_config
from reco.state.sink import drain_stream_to_lake
from reco.state.store import RedisStore, connect
from serving.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_REQUESTS = 400  # ~3000 events: a view, 5 impressions and ~1.5 clicks per request
BATCH = 25
KEY = {"X-API-Key": "test-key"}
T0 = datetime(2026, 2, 1, 20, tzinfo=UTC)  # the run crosses midnight: two lake partitions


def _events(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    experiment = load_config().experiment()
    out: list[dict] = []
    for r in range(N_REQUESTS):
        ts = T0 + timedelta(seconds=45 * r)
        user, sess = f"u{r % 60}", f"s{r // 3}"
        arm = assign(experiment, user).arm
        base = {"user_id": user, "session_id": sess}
        out.append({**base, "event_id": f"v{r}", "ts": ts.isoformat(), "item_id": str(rng.integers(1, 41)),
                    "event_type": "view"})  # fmt: skip
        for pos, item in enumerate(rng.choice(np.arange(1, 41), size=5, replace=False), start=1):
            imp = {**base, "item_id": str(item), "request_id": f"r{r}", "ts": ts.isoformat()}
            out.append({**imp, "event_id": f"r{r}:{pos}", "event_type": "impression", "position": pos, "arm": arm,
                        "model_version": "1", "propensity": 1.0, "page_type": "home", "device": "mobile"})  # fmt: skip
            if rng.random() < (0.6 if item <= 8 else 0.1):
                out.append({**imp, "event_id": f"c{r}:{pos}", "event_type": "click",
                            "ts": (ts + timedelta(seconds=5)).isoformat()})  # fmt: skip
    return out


def _start_learner(env: dict[str, str], log: Path) -> subprocess.Popen:
    reco = str(Path(sys.executable).parent / "reco")
    argv = [reco, "learn", "--no-checkpoint", "--window-s", "120", "--update-every", "64", "--batch-size", "64",
            "--publish-every-s", "0.5", "--threads", "1", "--max-seconds", "600"]  # fmt: skip
    return subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen, sig: int) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    return proc.wait(timeout=120)  # a clean stop publishes first: generous on a loaded machine


def _group(client, key: str, group: str) -> dict | None:
    for g in client.xinfo_groups(key):
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == group:
            return g
    return None


def _wait_consumer_active(client, key: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    """Until the learner's consumer has read within the last second (a restarted learner is running)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"learner exited {proc.returncode}: {log.read_text()[-2000:]}"
        consumers = client.xinfo_consumers(key, "reco-learner")
        if any(_id(c["name"]) == "learner-1" and int(c["idle"]) < 1000 for c in consumers):
            return
        time.sleep(0.2)
    raise AssertionError(f"the restarted learner did not read in {timeout_s} s: {log.read_text()[-2000:]}")


def _wait_learner_reads(client, key: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    """Until the learner's group has been delivered something (it started, recovered and reads)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"learner exited {proc.returncode}: {log.read_text()[-2000:]}"
        g = _group(client, key, "reco-learner")
        if g is not None and _id(g["last-delivered-id"]) != "0-0":
            return
        time.sleep(0.2)
    raise AssertionError(f"the learner did not start reading in {timeout_s} s: {log.read_text()[-2000:]}")


def _id(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def test_every_accepted_event_reaches_the_lake_exactly_once(tmp_path, mlflow_server: str) -> None:
    rng = random.Random(0)
    model = f"reco-lost-{uuid.uuid4().hex[:8]}"
    register_version(mlflow_server, model, tiny_bundle(seed=0), "v1", ARM_ALIASES)
    redis_proc = RedisProcess(tmp_path / "redis", appendfsync="always").start()
    prefix = "lost"
    env = {**os.environ, "RECO_HOME": str(tmp_path / "home"), "RECO_REDIS_URL": redis_proc.url,
           "RECO_REDIS_PREFIX": prefix, "RECO_MLFLOW_TRACKING_URI": mlflow_server, "RECO_REGISTERED_MODEL": model,
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    log = tmp_path / "learner.log"
    learner = _start_learner(env, log)
    learner_starts, learner_exits, learner_down = 1, [], False
    settings = serving_settings(tmp_path, redis_url=redis_proc.url, redis_prefix=prefix,
                                mlflow_tracking_uri=mlflow_server, registered_model=model)  # fmt: skip
    lake = EventLake(tmp_path / "lake")
    sink_store = RedisStore(connect(redis_proc.url, socket_timeout=5.0), prefix)

    events = _events()
    order = events[:]
    for i in range(len(order) - 1):  # out of order: swap neighbours now and then
        if rng.random() < 0.2:
            order[i], order[i + 1] = order[i + 1], order[i]
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    sent: list[list[dict]] = []
    accepted_ids: set[str] = set()
    counts = {"posts": 0, "accepted": 0, "duplicates": 0, "refused_503": 0, "other": 0}
    retry: list[list[dict]] = []

    def post(batch: list[dict]) -> None:
        counts["posts"] += 1
        r = c.post("/v1/events", json={"events": batch}, headers=KEY)
        if r.status_code == 202:
            accepted_ids.update(e["event_id"] for e in batch)
            counts["accepted"] += r.json()["accepted"]
            counts["duplicates"] += r.json()["duplicates"]
        elif r.status_code == 503:
            assert r.headers["Retry-After"]
            counts["refused_503"] += 1
            retry.append(batch)
        else:
            counts["other"] += 1
            raise AssertionError(f"{r.status_code} {r.text[:300]}")

    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            n = len(batches)
            for k, batch in enumerate(batches):
                if k == 2:
                    _wait_learner_reads(sink_store.client, sink_store.stream_key, learner, log)
                if sent and rng.random() < 0.3:  # duplicates: part of an earlier batch again, mixed in
                    batch = batch + rng.sample(rng.choice(sent), 5)
                post(batch)
                sent.append(batch)
                if rng.random() < 0.1:  # a client retry of an older batch (its 202 was "lost")
                    post(rng.choice(sent))
                if k == n // 4:
                    learner_exits.append(_stop(learner, signal.SIGKILL))  # learner crash: down until n // 2
                    learner_down = True
                if k == n // 3:
                    stats = drain_stream_to_lake(sink_store, lake)  # the sink runs while the learner is dead
                    assert stats.appended > 0
                if k == n // 2:
                    learner, learner_down = _start_learner(env, log), False
                    learner_starts += 1
                if k == 2 * n // 3:
                    _wait_consumer_active(sink_store.client, sink_store.stream_key, learner, log)
                    redis_proc.kill()  # Redis crash: the next posts get 503 + Retry-After
                    for b in batches[k + 1 : k + 3]:
                        post(b)
                    redis_proc.start()
                    time.sleep(1.0)  # Retry-After
                    while retry:
                        post(retry.pop(0))
                if not learner_down and learner.poll() is not None:  # exited on its own: a supervisor restarts it
                    learner_exits.append(learner.returncode)
                    learner = _start_learner(env, log)
                    learner_starts += 1
            while retry:
                post(retry.pop(0))

        # The learner catches up with everything in the stream (bounded wait).
        client = sink_store.client
        deadline = time.monotonic() + 180
        while True:
            if learner.poll() is not None:  # the supervisor keeps restarting a learner that exits on its own
                learner_exits.append(learner.returncode)
                learner = _start_learner(env, log)
                learner_starts += 1
            last = _id(client.xinfo_stream(sink_store.stream_key)["last-generated-id"])
            g = _group(client, sink_store.stream_key, "reco-learner") or {"last-delivered-id": "0-0", "pending": -1}
            if _id(g["last-delivered-id"]) == last or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert _id(g["last-delivered-id"]) == last, log.read_text()[-3000:]
        learner_exits.append(_stop(learner, signal.SIGTERM))  # a clean stop publishes and acknowledges
        learner_pending = int(_group(client, sink_store.stream_key, "reco-learner")["pending"])
        final = drain_stream_to_lake(sink_store, lake)
    finally:
        if learner.poll() is None:
            learner_exits.append(_stop(learner, signal.SIGTERM))
        sink_store.client.close()
        redis_proc.kill()

    lake_ids = lake.read(columns=["event_id"]).column("event_id").to_pylist()
    distinct_sent = {e["event_id"] for e in events}
    print(
        f"\nFIGURE nothing-lost: events={len(events)} posts={counts['posts']} accepted={counts['accepted']} "
        f"duplicates={counts['duplicates']} refused_503={counts['refused_503']} distinct_202={len(accepted_ids)} "
        f"lake_rows={len(lake_ids)} lake_distinct={len(set(lake_ids))} learner_starts={learner_starts} "
        f"learner_exits={learner_exits} learner_pending={learner_pending} final_sink_redelivered={final.redelivered}"
    )
    assert counts["refused_503"] >= 1 and learner_starts >= 2
    assert len(lake_ids) == len(set(lake_ids))  # stored once
    assert set(lake_ids) == accepted_ids == distinct_sent  # every accepted event, nothing else
    assert counts["accepted"] == len(accepted_ids)  # each event counted accepted exactly once by the API
    assert lake.days() == [T0.date(), T0.date() + timedelta(days=1)]
