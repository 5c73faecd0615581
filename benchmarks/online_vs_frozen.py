"""Online learning vs the same base model frozen, on the click simulator: prints one JSON line.

Both runs serve the served model: a `SessionAwareRanker` scored by its own forward (the scoring
definition, which the API's `FrozenScorer` is held equal to by tests/test_scoring.py), and the online run
serves exactly the snapshots `OnlineLearner` publishes (each checked on the holdout before publication).

Protocol: the base ranker is trained on MovieLens-100k's leave-one-out training rows (or loaded with
--bundle). Two runs with the same simulator seed (same users, session start times and click-draw
stream): `frozen` serves the base weights throughout; `online` serves the weights the learner publishes
(the learner runs in the same process, polled after every session, reward window in simulated time).
The click model is the simulator's ground truth (all ratings, held-out items included). CTR =
clicks / impressions; the difference is tested with a two-proportion z-test
(reco.experiments.stats.two_proportion_ztest), and with a Welch test over per-user CTRs.

    .venv/bin/python benchmarks/online_vs_frozen.py [--users 300 --days 6 --epochs 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import uuid
from datetime import date
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/movielens-100k"))
    ap.add_argument("--bundle", type=Path, default=None, help="a saved ModelBundle; trained and saved there if missing")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--days", type=int, default=6)
    ap.add_argument("--sessions-per-user-day", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--update-every", type=int, default=256)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import redis
    import torch

    from reco.artifacts.bundle import ModelBundle
    from reco.experiments.stats import two_proportion_ztest, welch_ttest_samples
    from reco.online import ArmLearner, OnlineLearner, from_bundle
    from reco.sim import Browsing, GroundTruth, simulate_days
    from reco.sim.inprocess import InProcessApi
    from reco.state.store import RedisStore

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.bundle and args.bundle.exists():
        bundle = ModelBundle.load(args.bundle)
    else:
        from reco.data.movielens import load_movielens
        from reco.offline.evaluation import leave_one_out
        from reco.offline.trainer import TrainConfig, train

        ml = load_movielens(args.data)
        split = leave_one_out(ml.events)
        bundle = train(ml.events.iloc[split.train_rows], ml.catalog, TrainConfig(epochs=args.epochs, seed=0),
                       progress=False).bundle  # fmt: skip
        if args.bundle:
            bundle.save(args.bundle)
    train_s = time.perf_counter() - t0
    gt = GroundTruth.fit(args.data)
    popular = sorted(bundle.item_ids[1:], key=lambda i: -float((bundle.meta.get("popularity") or {}).get(i, 0)))
    client = redis.Redis.from_url(args.redis_url)
    results = {}
    for mode in ("frozen", "online"):
        prefix = f"bench-ovf-{uuid.uuid4().hex[:8]}"
        store = RedisStore(client, prefix)
        base = from_bundle(copy.deepcopy(bundle), "1")
        api = InProcessApi(store, {"arm": base}, lambda u: "arm", bundle.item_ids[1:], popular=popular)
        learner = None
        if mode == "online":
            arm = ArmLearner(from_bundle(copy.deepcopy(bundle), "1"), lr=args.lr, update_every=args.update_every,
                             batch_size=args.update_every, replay=128, seed=0)  # fmt: skip
            learner = OnlineLearner(store, {"arm": arm}, window_s=600, publish_every_s=0)

            def poll(_day: date, learner: OnlineLearner = learner) -> None:
                while learner.poll(block_ms=None):
                    pass

            # Learn after every simulated session: wrap run_session via the per-day hook plus a store hook.
            orig = api.recommend

            def recommend(*a, _orig=orig, _learner=learner, **kw):
                _learner.poll(block_ms=None)
                return _orig(*a, **kw)

            api.recommend = recommend  # type: ignore[method-assign]
        t1 = time.perf_counter()
        stats = simulate_days(api, gt, users=args.users, days=args.days, start_day=date(1998, 5, 1),
                              sessions_per_user_day=args.sessions_per_user_day, seed=args.seed,
                              browsing=Browsing(limit=10))  # fmt: skip
        tally = stats.arms["arm"]
        per_user = np.array([c / i for (_, _), (i, c) in stats.per_user.items() if i])
        results[mode] = {"impressions": tally.impressions, "clicks": tally.clicks, "ctr": tally.ctr,
                         "sim_s": round(time.perf_counter() - t1, 1), "per_user": per_user}  # fmt: skip
        if learner is not None:
            results[mode].update(steps=learner.arms["arm"].counters.steps,
                                 reverts=learner.arms["arm"].counters.reverts,
                                 snapshot=learner.arms["arm"].snapshot_step)  # fmt: skip
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    on, fr = results["online"], results["frozen"]
    z, p = two_proportion_ztest(on["clicks"], on["impressions"], fr["clicks"], fr["impressions"])
    _, _, p_users = welch_ttest_samples(on.pop("per_user"), fr.pop("per_user"))  # two-sided
    print(json.dumps({
        "benchmark": "online_vs_frozen", "users": args.users, "days": args.days, "seed": args.seed,
        "base_train_s": round(train_s, 1), "frozen": fr, "online": on,
        "ctr_lift_rel": round(on["ctr"] / fr["ctr"] - 1, 4) if fr["ctr"] else None,
        "z": round(float(z), 3), "p_value_one_sided": float(p) / 2 if z > 0 else 1 - float(p) / 2,
        "p_value_per_user_welch": float(p_users),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
