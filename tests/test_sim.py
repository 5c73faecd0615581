"""Click simulator: ground truth from MovieLens (held-out behaviour included), sessions, and the full
loop against the real Redis store (in-process API, real learner)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
import redis
import torch

from reco.online.arm import ArmLearner
from reco.online.learner import OnlineLearner
from reco.online.model import ArmModel, DotScorer
from reco.sim import Browsing, GroundTruth, position_bias, simulate_days
from reco.sim.inprocess import InProcessApi
from reco.state.store import RedisStore


@pytest.fixture(scope="module")
def gt(movielens_dir) -> GroundTruth:
    return GroundTruth.fit(movielens_dir)


def test_ground_truth_reflects_held_out_ratings(gt: GroundTruth, movielens_dir) -> None:
    import pandas as pd

    df = pd.read_csv(movielens_dir / "ml-100k.inter", sep="\t", dtype=str)
    df.columns = [c.split(":")[0] for c in df.columns]
    df["timestamp"] = df["timestamp"].astype(float)
    last = df.sort_values("timestamp", kind="stable").groupby("user_id").tail(1)  # each user's test item
    liked = last[last["rating"].astype(float) >= 4]
    rel = np.array([gt.relevance(u, [i])[0] for u, i in zip(liked["user_id"], liked["item_id"], strict=True)])
    everyone = np.concatenate([gt.relevance(u, gt.items[:200]) for u in gt.users[:50]])
    assert rel.mean() > everyone.mean() + 0.1  # held-out favourites are clicked more than average items
    assert position_bias(np.array([1]))[0] == 1.0 and gt.p_click("1", ["1"], [4])[0] < gt.relevance("1", ["1"])[0]


def test_simulated_traffic_is_joined_by_the_learner(gt: GroundTruth, redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis.Redis.from_url(redis_url), redis_prefix)
    torch.manual_seed(0)
    items = gt.items[:300]
    model = ArmModel(DotScorer(len(items), dim=8), {it: k for k, it in enumerate(items, 1)}, base_version="1")
    api = InProcessApi(store, {"treatment": model}, lambda u: "treatment", items)
    stats = simulate_days(api, gt, users=20, days=2, start_day=date(1998, 5, 1), sessions_per_user_day=1.0,
                          seed=3, browsing=Browsing(limit=5))  # fmt: skip
    other = InProcessApi(
        RedisStore(store.client, redis_prefix + "x"), {"treatment": model}, lambda u: "treatment", items
    )
    again = simulate_days(other, gt, users=20, days=2, start_day=date(1998, 5, 1), sessions_per_user_day=1.0,
                          seed=3, browsing=Browsing(limit=5))  # fmt: skip
    t = stats.arms["treatment"]
    assert stats.sessions == 40 and t.impressions > 0 and 0 < t.clicks < t.impressions
    assert (again.arms["treatment"].clicks, again.arms["treatment"].impressions) == (t.clicks, t.impressions)  # seeded

    learner = OnlineLearner(store, {"treatment": ArmLearner(model, update_every=32, batch_size=32, seed=0)},
                            window_s=600, publish_every_s=0)  # fmt: skip
    while learner.poll(block_ms=None):
        pass
    j = learner.joiner.counters
    # Simulated days: event time, not wall time, closes the windows (all but the last day's last ones).
    assert j["positives"] == t.clicks
    assert j["negatives"] > 0 and j["positives"] + j["negatives"] + learner.joiner.n_pending == t.impressions
    store.client.delete(*store.client.keys(f"{redis_prefix}x:*"))
