"""Simulated time (`RECO_SIMULATED_CLOCK`): the simulator drives the clock, the learner learns and publishes at
its ticks only, the API adopts snapshots at the first request of an epoch. The same seed gives the same
CTRs, online weights and A/B verdict twice (the learner in its own thread, racing the simulator as `reco
learn` does); another seed does not."""

from __future__ import annotations

import math
import threading
import uuid
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pytest
import redis
import torch

from reco.experiments.report import ReportConfig, build_report
from reco.online.arm import ArmLearner
from reco.online.learner import OnlineLearner
from reco.online.model import ArmModel, from_bundle
from reco.online.simulated import run_simulated
from reco.sim import Browsing, ClockedApi, GroundTruth, simulate_days
from reco.sim.inprocess import InProcessApi
from reco.state.online import decode_event
from reco.state.simclock import SimClock, SimClockTimeout
from reco.state.store import RedisStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gt(movielens_dir) -> GroundTruth:
    return GroundTruth.fit(movielens_dir)


@pytest.fixture
def prefixes(redis_url: str):
    made: list[str] = []
    yield made
    client = redis.Redis.from_url(redis_url)
    for prefix in made:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)


def _models(n_items: int = 200) -> dict[str, ArmModel]:
    """Control and treatment: the served architecture (with dropout in training), different weights."""
    from serving_helpers import tiny_bundle

    return {arm: from_bundle(tiny_bundle(n_items=n_items, seed=seed), "1")
            for seed, arm in enumerate(("control", "treatment"))}  # fmt: skip


def _published(store: RedisStore, version: int | None, arm: str) -> tuple[int | None, bytes | None]:
    return version, (store.get_weights(arm, version).blob if version else None)


def _run(gt: GroundTruth, redis_url: str, prefix: str, seed: int) -> dict:
    """Traffic + online learning + the A/B report on a fresh prefix; what a user of the demo reads."""
    store = RedisStore(redis.Redis.from_url(redis_url), prefix)
    models = _models()
    items = list(models["control"].index_of)
    learner = OnlineLearner(
        store,
        {arm: ArmLearner(m, lr=0.05, update_every=32, batch_size=32, holdout_fraction=0.25, min_holdout=20, seed=0)
         for arm, m in models.items()},
        window_s=1800, publish_every_s=math.inf,
    )  # fmt: skip
    api = InProcessApi(store, models, lambda u: ("control", "treatment")[int(u) % 2], items)
    stop = threading.Event()
    clock = SimClock(store.client, prefix, store.stream_key)
    thread = threading.Thread(target=run_simulated, args=(learner, clock, stop.is_set), daemon=True)
    thread.start()
    try:
        clocked = ClockedApi(api, clock, tick_s=3600, timeout_s=120)
        stats = simulate_days(clocked, gt, users=40, days=2, start_day=date(1998, 5, 1), sessions_per_user_day=1.0,
                              seed=seed, browsing=Browsing(limit=5))  # fmt: skip
        clocked.finish()
    finally:
        stop.set()
        thread.join(30)
    rows = []
    for sid, fields in store.client.xrange(store.stream_key):
        ev = decode_event(sid.decode(), fields)
        ev["ts"] = datetime.fromtimestamp(ev["ts"], UTC)
        rows.append({k: ev.get(k) for k in ("event_id", "ts", "user_id", "item_id", "event_type", "request_id", "arm")})
    report = build_report(pa.Table.from_pylist(rows), ReportConfig(control="control"))
    return {
        "ctr": {arm: (t.impressions, t.clicks) for arm, t in sorted(stats.arms.items())},
        "verdict": (report["decision"]["action"], report["decision"]["arm"]),
        "lift": report["comparisons"][0]["user_level"]["lift"]["relative"],
        "weights": {arm: _published(store, learner.published_version(arm), arm) for arm in models},
        "ticks": clocked.ticks,
        "steps": {arm: a.counters.steps for arm, a in learner.arms.items()},
    }


def test_same_seed_same_ctrs_weights_and_verdict(gt: GroundTruth, redis_url: str, prefixes: list[str]) -> None:
    torch.set_num_threads(1)
    runs = []
    for seed in (5, 5, 6):
        prefixes.append(f"reco-test-simclock-{uuid.uuid4().hex[:8]}")
        runs.append(_run(gt, redis_url, prefixes[-1], seed))
    first, again, other = runs
    assert first["ticks"] > 20 and all(s > 0 for s in first["steps"].values())  # it learned, hour by hour
    assert all(v is not None for v, _ in first["weights"].values())  # and published
    assert first == again  # the same CTRs, snapshots (bytes), lift and verdict
    assert other["ctr"] != first["ctr"] and other["lift"] != first["lift"]


def test_a_tick_without_a_learner_fails_clearly(redis_url: str, prefixes: list[str]) -> None:
    prefixes.append(f"reco-test-simclock-{uuid.uuid4().hex[:8]}")
    clock = SimClock(redis.Redis.from_url(redis_url), prefixes[-1])
    with pytest.raises(SimClockTimeout, match="RECO_SIMULATED_CLOCK=true"):
        clock.tick(1, 3600.0, timeout_s=0.2)
    assert clock.due() == (1, "0-0") and clock.now() == 3600.0
    clock.finish(1)
    assert clock.due() is None and np.isclose(clock.now() or 0, 3600.0)


def test_the_simulated_learner_refuses_wall_clock_publication(redis_url: str, prefixes: list[str]) -> None:
    prefixes.append(f"reco-test-simclock-{uuid.uuid4().hex[:8]}")
    store = RedisStore(redis.Redis.from_url(redis_url), prefixes[-1])
    learner = OnlineLearner(store, {"control": ArmLearner(_models(3)["control"])}, publish_every_s=1.0)
    with pytest.raises(ValueError, match="publish_every_s=inf"):
        run_simulated(learner, SimClock(store.client, store.prefix), lambda: True)


class _Bundles:
    """A `ModelSource` without MLflow: every alias at version 4 (the tiny served architecture)."""

    def current_version(self, alias: str) -> str:
        return "4"

    def load(self, alias: str, version: str):
        from serving_helpers import tiny_bundle

        return tiny_bundle()


def test_the_api_adopts_snapshots_at_epochs_only_and_logs_before_answering(
    tmp_path, redis_url: str, redis_prefix: str
) -> None:
    import io
    import time

    from fastapi.testclient import TestClient
    from serving_helpers import serving_settings

    from serving.app import create_app

    settings = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, simulated_clock=True,
                                log_impressions_async=True, model_poll_s=0.1)  # fmt: skip
    assert settings.honour_event_time_header  # implied: the simulator's requests carry their simulated time
    store = RedisStore(redis.Redis.from_url(redis_url), redis_prefix)

    def publish(arm: str) -> None:
        from serving_helpers import tiny_bundle

        buf = io.BytesIO()
        torch.save(tiny_bundle(seed=len(arm)).model.state_dict(), buf)
        store.put_weights(arm, buf.getvalue(), {"base_version": "4"})

    def ask(epoch: int | None, when: str = "1998-05-01T10:00:00+00:00") -> dict:
        headers = {"X-Reco-Event-Time": when} | ({"X-Reco-Sim-Epoch": str(epoch)} if epoch is not None else {})
        r = client.post("/v1/recommendations", json={"user_id": "u1", "session_id": "s1", "limit": 3}, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    with TestClient(create_app(settings, model_source=_Bundles()), raise_server_exceptions=False) as client:
        first = ask(1)
        arm = first["experiment_group"]
        assert first["online_snapshot"] is None
        # The impression write has landed when the answer arrives (a click can never overtake it) ...
        logged = [f for _, f in store.client.xrange(store.stream_key) if b"impression" in f[b"e"]]
        assert len(logged) == len(first["items"]) and b"1998-05-01T10:00:00" in logged[0][b"e"]
        publish(arm)
        time.sleep(0.5)  # several poll periods: the poll thread adopts nothing on simulated time
        assert ask(1)["online_snapshot"] is None and ask(None)["online_snapshot"] is None
        assert ask(2)["online_snapshot"] == 1  # the next epoch's first request adopts what the tick published
        publish(arm)
        assert ask(2)["online_snapshot"] == 1 and ask(1)["online_snapshot"] == 1  # never mid-epoch, never back
        assert ask(3)["online_snapshot"] == 2
        r = client.post("/v1/recommendations", json={"user_id": "u1", "limit": 3}, headers={"X-Reco-Sim-Epoch": "x"})
        assert r.status_code == 422
