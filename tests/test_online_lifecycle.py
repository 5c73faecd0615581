"""Learner lifecycle against real services: a Redis restart under a running learner (R-4), a registry
alias moving to a new base version, bounded join/history state (O-1), and the CLI's MLflow start-up check."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
import torch
from reliability_helpers import RedisProcess
from test_online import _close_windows, _learner, _model, _one_thread, _online, _traffic  # noqa: F401 (fixture)

from reco.online.arm import ArmLearner
from reco.online.history import HistoryTracker
from reco.online.join import RewardJoiner
from reco.online.learner import OnlineLearner
from reco.state.snapshots import decode_weights
from reco.state.store import RedisStore, connect

pytestmark = pytest.mark.integration


def _group(client: redis.Redis, store: RedisStore, group: str) -> dict[str, int]:
    for g in client.xinfo_groups(store.stream_key):
        if g["name"].decode() == group:
            return {"lag": int(g.get("lag") or 0), "pending": int(g["pending"])}
    raise AssertionError(f"group {group} missing")


def test_learner_keeps_going_through_a_redis_restart(tmp_path) -> None:
    server = RedisProcess(tmp_path / "redis").start()
    try:
        store = RedisStore(connect(server.url, socket_timeout=2.0), "t")
        first = _traffic(300, seed=6)
        store.ingest(first)
        ol = _online(store, _learner(), reconnect_backoff_s=0.05, max_backoff_s=0.4)
        errors: list[BaseException] = []

        def target() -> None:
            try:
                ol.run(idle_exit_s=3.0)
            except BaseException as exc:  # the test asserts there is none
                errors.append(exc)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        deadline = time.monotonic() + 120  # generous: a loaded machine
        while ol.stats.read == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill()  # a crash under the running learner; it sees refused connections for a while
        time.sleep(0.6)
        server.start()
        second = _traffic(300, seed=7, start=300)
        store.ingest(second)
        _close_windows(store, 20_000)
        thread.join(timeout=300)
        assert not thread.is_alive() and errors == []
        assert ol.stats.reconnects >= 1
        # Everything was delivered; what stays pending is only what waits for the next step (the
        # at-least-once window), and the learner published from the new connection.
        group = _group(redis.Redis.from_url(server.url), store, ol.group)
        assert group == {"lag": 0, "pending": ol.held_entries()}
        n_imp = sum(e.event_type == "impression" for e in first + second)
        assert ol.joiner.counters["impressions"] >= n_imp
        snap = store.get_weights("treatment")
        assert snap is not None and snap.meta["snapshot"] == ol.arms["treatment"].snapshot_step > 0
    finally:
        server.kill()


def test_registry_base_change_switches_the_arm(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis.Redis.from_url(redis_url), redis_prefix)
    store.ingest(_traffic(300, seed=8))
    _close_windows(store, 10_000)
    torch.manual_seed(3)
    new_model = _model(seed=3)
    new_model.base_version = "8"
    new_base = {k: v.clone() for k, v in new_model.module.state_dict().items()}
    new = ArmLearner(new_model, lr=0.05, update_every=64, batch_size=64, replay=32, min_holdout=20, seed=0)
    asked: list[tuple[str, str]] = []

    def rebase(arm: str, current: str) -> ArmLearner | None:  # the alias moves from 7 to 8 once
        asked.append((arm, current))
        return new if current == "7" else None

    old = _learner()
    ol = _online(store, old, rebase=rebase, base_poll_s=3600.0)
    ol.run(idle_exit_s=0.5)
    assert old.counters.steps > 0 and store.get_weights("treatment").meta["base_version"] == "7"
    assert ol.maybe_rebase() == []  # not due yet (base_poll_s)
    assert ol.maybe_rebase(force=True) == ["treatment"] and asked == [("treatment", "7")]
    assert ol.arms["treatment"] is new and ol.stats.rebases == 1
    snap = store.get_weights("treatment")  # published at once: the new base, snapshot 0
    assert snap.meta["base_version"] == "8" and snap.meta["snapshot"] == 0
    assert all(torch.equal(new_base[k], v) for k, v in decode_weights(snap.blob).items())
    # The old base's examples waiting for a step were acknowledged; nothing is left pending.
    assert _group(store.client, store, ol.group) == {"lag": 0, "pending": 0}
    assert ol.maybe_rebase(force=True) == []  # same version again: nothing to do

    store.ingest(_traffic(300, seed=9, start=300))
    _close_windows(store, 20_000)
    ol.run(idle_exit_s=0.5)
    assert new.counters.steps > 0 and len(new._holdout) > 0
    snap = store.get_weights("treatment")
    assert snap.meta["base_version"] == "8" and snap.meta["snapshot"] == new.snapshot_step > 0


def test_registry_bases_follow_the_alias(mlflow_server: str) -> None:
    from serving_helpers import register_version, tiny_bundle

    from reco.online.handoff import RegistryBases

    name = f"rebase-{uuid.uuid4().hex[:8]}"
    v1 = register_version(mlflow_server, name, tiny_bundle(seed=0), "b1", ("arm-treatment",))
    built: list[str] = []

    def make(bundle, version: str) -> str:
        built.append(version)
        return version

    bases = RegistryBases(mlflow_server, name, {"treatment": "arm-treatment"}, make)
    assert bases("treatment", v1) is None and built == []
    v2 = register_version(mlflow_server, name, tiny_bundle(seed=1), "b2", ("arm-treatment",))
    assert bases("treatment", v1) == v2 and built == [v2]


def test_join_state_is_bounded_by_event_time_and_size() -> None:
    j = RewardJoiner(window_s=10, dedup_memory=50, closed_memory=1_000, max_pending=100)
    for t in range(2_000):  # one impression per second of event time, a click on every 10th
        imp = dict(sid=f"{t}-0", event_id=f"i{t}", event_type="impression", ts=float(t), request_id=f"r{t}",
                   item_id="x", arm="A", position=1, propensity=1.0)  # fmt: skip
        evs = [imp]
        if t % 10 == 0:
            evs.append(dict(sid=f"{t}-1", event_id=f"c{t}", event_type="click", ts=t + 1.0, request_id=f"r{t}",
                            item_id="x"))  # fmt: skip
        j.add(evs)
    sizes = j.sizes()
    assert sizes["pending"] <= 11 and sizes["closed"] <= 12 and sizes["seen"] <= 50
    assert j.counters["positives"] == 200 and j.counters["positives"] + j.counters["negatives"] >= 1_985
    # A window too long for the rate: the size cap closes the oldest open impressions as no-click.
    capped = RewardJoiner(window_s=1e9, max_pending=100)
    labelled, _ = capped.add([dict(imp, sid=f"{t}", event_id=f"e{t}", request_id=f"q{t}", ts=float(t))
                              for t in range(250)])  # fmt: skip
    assert capped.n_pending == 100 and capped.counters["evicted_pending"] == 150 == len(labelled)


def test_history_forgets_idle_keys_and_caps_their_number() -> None:
    h = HistoryTracker(max_items=3, max_keys=100, idle_s=60)
    for t in range(1_000):
        h.observe({"event_type": "view", "session_id": f"s{t}", "user_id": f"u{t % 7}", "item_id": str(t), "ts": t})
    assert h.sizes() == {"sessions": 61, "users": 7}
    assert h.context({"session_id": "s999", "user_id": "u0"}) == ("999",)
    assert h.context({"session_id": "s10", "user_id": "u3"}) == ("983", "990", "997")  # s10 forgotten: user's


def test_learn_cli_reports_an_unreachable_mlflow(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from reco.cli import app

    monkeypatch.setenv("RECO_HOME", str(tmp_path))
    monkeypatch.setenv("RECO_MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    result = CliRunner().invoke(app, ["learn", "--no-checkpoint", "--max-seconds", "1"])
    assert result.exit_code == 2, result.output
    assert "MLflow tracking server unreachable at http://127.0.0.1:1" in result.output
    assert "has no version or alias" not in result.output and "Traceback" not in result.output


def test_learner_constructor_keeps_parameters() -> None:
    store = RedisStore(connect("redis://127.0.0.1:1/0"), "never-used")
    ol = OnlineLearner(store, {}, reconnect_backoff_s=0.25, base_poll_s=5.0, history_args={"max_keys": 10})
    assert (ol.reconnect_backoff_s, ol.base_poll_s, ol.history.max_keys) == (0.25, 5.0, 10)


def test_check_reports_a_polling_learner_healthy_and_a_silent_one_not(
    redis_url: str, redis_prefix: str, monkeypatch
) -> None:
    """`reco learn --check` (the compose healthcheck) reads the heartbeat the run loop writes."""
    from typer.testing import CliRunner

    from reco.cli import app

    monkeypatch.setenv("RECO_REDIS_URL", redis_url)
    monkeypatch.setenv("RECO_REDIS_PREFIX", redis_prefix)
    store = RedisStore(redis.Redis.from_url(redis_url), redis_prefix)
    before = CliRunner().invoke(app, ["learn", "--check", "--consumer", "learner-1"])
    assert before.exit_code == 1 and "has not polled" in before.output

    ol = _online(store, _learner(), consumer="learner-1")
    ol.run(idle_exit_s=0.2)
    after = CliRunner().invoke(app, ["learn", "--check", "--consumer", "learner-1"])
    assert after.exit_code == 0 and "healthy" in after.output
