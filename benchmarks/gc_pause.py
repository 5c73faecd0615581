"""What a full garbage collection costs a serving process, with and without the start-up heap frozen.

The API's own start-up (`serving.app.start_services`: models from a local cache, Redis at `--redis-url` under a
fresh key prefix, deleted afterwards) serves `--requests` browse requests in process (one more view before
each, sessions of 20 views, both arms of the built-in experiment), then times a full collection
(`gc.collect()`) twice: with the start-up heap frozen as the app does (`serving.runtime.freeze_imported_heap`),
and after `gc.unfreeze()` (what every full pass cost before). Prints one JSON line.

    .venv/bin/python benchmarks/gc_pause.py [--requests 1500]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--redis-url", default=os.environ.get("RECO_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args()
    import serving_latency as sl

    from reco.ranking.recommend import RecoRequest
    from serving.models import ModelCache

    tmp = Path(tempfile.mkdtemp(prefix="reco-gc-"))
    bundle = sl.full_bundle()
    for arm in ("control", "treatment"):
        ModelCache(tmp / "cache").save(arm, "1", bundle)
    prefix = f"bench-gc-{uuid.uuid4().hex[:8]}"
    os.environ.update({"RECO_HOME": str(tmp / "home"), "RECO_REDIS_URL": args.redis_url, "RECO_REDIS_PREFIX": prefix,
                       "RECO_MLFLOW_TRACKING_URI": "http://127.0.0.1:1", "RECO_MODEL_CACHE_DIR": str(tmp / "cache"),
                       "RECO_MODEL_POLL_S": "3600"})  # fmt: skip
    from serving.app import start_services
    from serving.settings import Settings

    services, closers = start_services(Settings(), None)  # freezes the start-up heap, then loads the models
    store, rec = services.store, services.recommender
    try:
        rng = np.random.default_rng(11)
        items, users = bundle.item_ids[1:], sl.arm_users("bench-gc", 1)
        for i in range(args.requests):
            user = users[(i // 20) % len(users)]
            sid = f"{user}-s{i // 20}"
            sl._view(store, sid, user, sl.pick(rng, items), i)
            rec.recommend(RecoRequest(user_id=user, session_id=sid, limit=20, device="mobile"))
        frozen, tracked = gc.get_freeze_count(), len(gc.get_objects())
        t0 = time.perf_counter()
        gc.collect()
        with_freeze = time.perf_counter() - t0
        gc.unfreeze()
        t0 = time.perf_counter()
        gc.collect()
        without = time.perf_counter() - t0
    finally:
        for close in reversed(closers):
            close()
        keys = list(store.client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            store.client.delete(*keys)
    print(json.dumps({"benchmark": "gc_pause", "requests": args.requests, "objects_frozen": frozen,
                      "objects_tracked_besides": tracked, "full_collection_ms_frozen": round(with_freeze * 1e3, 1),
                      "full_collection_ms_unfrozen": round(without * 1e3, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
