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
from reco.online.model import ArmModel, DotScorer
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


def _models(items: list[str]) -> dict[str, ArmModel]:
    """Control and treatment: the same architecture, different starting weights."""
    out = {}
    for seed, arm in enumerate(("control", "treatment")):
        torch.manual_seed(seed)
        out[arm] = ArmModel(DotScorer(len(items), dim=8), {it: k for k, it in enumerate(items, 1)}, base_version="1")
    return out


def _run(gt: GroundTruth, redis_url: str, prefix: str, seed: int) -> dict:
    """Traffic + online learning + the A/B report on a fresh prefix; what a user of the demo reads."""
    store = RedisStore(redis.Redis.from_url(redis_url), prefix)
    items = gt.items[:200]
    models = _models(items)
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
        "weights": {arm: (learner.published_version(arm), store.get_weights(arm).blob if learner.published_version(arm)
                          else None) for arm in models},  # fmt: skip
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
    items = ["1", "2", "3"]
    learner = OnlineLearner(store, {"control": ArmLearner(_models(items)["control"])}, publish_every_s=1.0)
    with pytest.raises(ValueError, match="publish_every_s=inf"):
        run_simulated(learner, SimClock(store.client, store.prefix), lambda: True)
