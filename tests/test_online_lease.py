"""One writer per arm, enforced: the lease and its fencing token on the real Redis, the fenced snapshot write,
the API refusing a stale snapshot, idle-time claims, and a standby `reco learn` taking over after the
leader is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from serving_helpers import register_version, tiny_bundle
from test_online import _close_windows, _learner, _one_thread, _online, _traffic  # noqa: F401 (fixture)

from reco.state.lease import Lease
from reco.state.snapshots import StaleToken, encode_weights
from reco.state.store import RedisStore
from serving.models import ModelCache, ModelManager

pytestmark = pytest.mark.integration


class Clock:
    """A hand-driven clock (the lease's renewal schedule reads it; Redis expires keys on its own)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(redis_url: str, redis_prefix: str) -> RedisStore:
    return RedisStore(redis.Redis.from_url(redis_url), redis_prefix)


def test_lease_is_exclusive_fenced_renewed_and_released(store: RedisStore) -> None:
    clock = Clock()
    a = Lease(store.client, store.prefix, "treatment", "a", ttl_ms=300, clock=clock)
    b = Lease(store.client, store.prefix, "treatment", "b", ttl_ms=300, clock=clock)
    assert a.acquire() == 1 and b.acquire() is None and a.holder() == ("a", 1)
    assert a.renew_due() and a.renew()  # renewing keeps it
    store.client.pexpire(a.key, 1)  # the holder stops renewing: the lease expires
    deadline = time.monotonic() + 10
    while store.client.exists(a.key) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b.acquire() == 2  # a newer holder always has a larger token
    clock.now += 1.0
    assert not a.renew_due() and not a.held  # the old holder finds out it lost the lease
    a.release()  # releasing a lease it lost never deletes the successor's
    assert b.holder() == ("b", 2) and b.newest_token() == 2
    b.release()
    assert b.holder() is None and Lease(store.client, store.prefix, "treatment", "c").acquire() == 3


def test_a_write_under_a_stale_token_is_refused_and_the_api_never_serves_one(tmp_path, store: RedisStore) -> None:
    old = Lease(store.client, store.prefix, "control", "old")
    assert old.acquire() == 1
    bundle = tiny_bundle()
    state = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    state["item_emb.weight"][1:] += 0.5
    v1 = store.put_weights("control", encode_weights(state), {"base_version": "4"}, token=1)
    assert store.get_weights("control").meta["token"] == 1
    store.client.delete(old.key)  # the old holder stalls past its lease; a new one takes over
    assert Lease(store.client, store.prefix, "control", "new").acquire() == 2
    with pytest.raises(StaleToken):  # the old holder wakes up and tries to publish: refused inside Redis
        store.put_weights("control", encode_weights(state), {"base_version": "4"}, token=1)
    assert store.latest_weights_version("control") == v1

    cache = ModelCache(tmp_path)
    cache.save("control", "4", bundle)
    refused: list[tuple[str, str]] = []
    manager = ModelManager({"control": "arm-control"}, None, cache, store=store,
                           on_refused=lambda arm, kind: refused.append((arm, kind)))  # fmt: skip
    manager.refresh()
    v2 = store.put_weights("control", encode_weights(state), {"base_version": "4"}, token=2)
    assert manager.refresh_weights() == {"control": v2}
    # A snapshot that carries an older token (written before the fence, or by a writer without it).
    store.put_weights("control", encode_weights(state), {"base_version": "4", "token": 1})
    assert manager.refresh_weights() == {} and refused == [("control", "stale")]
    assert manager.get("control").online_snapshot == v2


def test_pending_entries_are_claimed_only_after_a_real_idle_time(store: RedisStore) -> None:
    store.ingest(_traffic(60, seed=11))
    store.ensure_group("g", start_id="0")
    taken = store.read_events("g", "dead", count=50)  # delivered to a consumer that then dies
    assert len(taken) == 50
    assert store.claim_from_others("g", "alive", min_idle_ms=60_000, count=100) == []  # not idle long enough
    assert store.claim_idle("g", "alive", min_idle_ms=60_000, count=100) == 0
    time.sleep(0.3)
    claimed = store.claim_from_others("g", "alive", min_idle_ms=200, count=100)
    assert [sid for sid, _ in claimed] == [sid for sid, _ in taken]
    assert store.claim_from_others("g", "alive", min_idle_ms=200, count=100) == []  # never its own entries


def test_a_second_in_process_learner_stands_by_until_the_first_releases(store: RedisStore) -> None:
    store.ingest(_traffic(200, seed=12))
    _close_windows(store, 10_000)
    first = _online(store, _learner(), lease_ttl_ms=5_000, consumer="a", owner="a", claim_idle_ms=300)
    second = _online(store, _learner(), lease_ttl_ms=5_000, consumer="b", owner="b", claim_idle_ms=300)
    assert first.hold_leases() and not second.hold_leases() and not second.leading
    with pytest.raises(RuntimeError, match="another learner holds"):
        second.poll(block_ms=None)
    first.run(idle_exit_s=0.3)  # learns, publishes under its token, releases at a clean stop
    assert store.get_weights("treatment").meta["token"] == first.stats.leaderships == 1
    left = first.held_entries()  # the examples waiting for a step stay pending with consumer "a"
    assert left > 0 and second.hold_leases() and second.token("treatment") == 2
    time.sleep(0.4)  # idle for longer than claim_idle_ms: the new writer claims them at its start
    second.run(idle_exit_s=0.3)
    assert second.stats.claimed == left
    pending = store.client.xpending(store.stream_key, second.group)
    assert [c["name"] for c in pending["consumers"]] == [b"b"]  # nothing left with the old consumer


def _learn_process(env: dict[str, str], consumer: str, log: Path) -> subprocess.Popen:
    reco = str(Path(sys.executable).parent / "reco")
    argv = [reco, "learn", "--arms", "treatment", "--no-checkpoint", "--consumer", consumer, "--lease-ttl-s", "2",
            "--update-every", "64", "--batch-size", "64", "--window-s", "60", "--publish-every-s", "0.2",
            "--threads", "1"]  # fmt: skip
    return subprocess.Popen(argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _until(predicate, timeout_s: float, what: str, step_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := predicate()) is not None and value is not False:
            return value
        time.sleep(step_s)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_standby_reco_learn_takes_over_after_the_leader_is_killed(
    tmp_path, mlflow_server: str, redis_url: str, redis_prefix: str
) -> None:
    name = f"lease-{uuid.uuid4().hex[:8]}"
    version = register_version(mlflow_server, name, tiny_bundle(seed=0), "lease", ("arm-control", "arm-treatment"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
    env.update(RECO_HOME=str(tmp_path / "home"), RECO_MLFLOW_TRACKING_URI=mlflow_server, RECO_REGISTERED_MODEL=name,
               RECO_REDIS_URL=redis_url, RECO_REDIS_PREFIX=redis_prefix)  # fmt: skip
    store = RedisStore(redis.Redis.from_url(redis_url), redis_prefix)
    lease = Lease(store.client, redis_prefix, "treatment", "observer")
    procs = [_learn_process(env, "learner-a", tmp_path / "a.log")]
    try:
        _until(lambda: lease.holder(), 180, "the first learner to take the lease")
        procs.append(_learn_process(env, "learner-b", tmp_path / "b.log"))
        _until(lambda: "standby" in (tmp_path / "b.log").read_text(), 180, "the second learner to stand by")
        store.ingest(_traffic(300, seed=13))
        _close_windows(store, 10_000)
        first = _until(lambda: store.get_weights("treatment"), 120, "the leader's first publication")
        assert first.meta["token"] == 1 and first.meta["base_version"] == version
        assert lease.holder()[0].startswith("learner-a@")

        os.kill(procs[0].pid, signal.SIGKILL)  # no clean stop: the lease is left to expire
        killed = time.monotonic()
        holder = _until(lambda: (h := lease.holder()) and h[0].startswith("learner-b@") and h, 60, "the takeover")
        takeover_s = time.monotonic() - killed
        print(f"standby took over {takeover_s:.2f} s after SIGKILL (lease TTL 2 s, retry every 0.67 s)")
        assert holder[1] == 2
        # The new writer claims what the dead one left pending, learns and publishes under its token.
        store.ingest(_traffic(300, seed=14, start=300))
        _close_windows(store, 20_000)
        snap = _until(lambda: (s := store.get_weights("treatment")) and s.meta["token"] == 2 and s, 120,
                      "a publication by the new writer")  # fmt: skip
        assert snap.meta["snapshot"] >= first.meta["snapshot"]
        _until(lambda: store.group_lag("reco-learner")["lag"] == 0, 120, "the stream consumed")

        def dead_consumer_has_none() -> bool:  # what it read shortly before dying is claimed once idle 2 s
            pending = store.client.xpending(store.stream_key, "reco-learner")
            return not any(c["name"] == b"learner-a" for c in pending["consumers"] or [])

        _until(dead_consumer_has_none, 120, "the dead consumer's pending entries claimed by the new writer")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        store.client.close()
