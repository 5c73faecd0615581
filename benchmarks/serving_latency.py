"""Serving latency: POST /v1/recommendations over real HTTP vs the bare model forward, in one run.

Setup: a full-size `SessionAwareRanker` (default RankerConfig) over the MovieLens-100k catalogue
(1,682 items; weights seeded, latency does not depend on training), served by `reco serve` (uvicorn,
1 worker) from its local model cache; a 20-item session in Redis; every request ranks 500 candidates
and returns 20. The bare forward is `bundle.score(session, the same 500 candidates)` in this process.

    .venv/bin/python benchmarks/serving_latency.py [--requests 2000] [--redis-url redis://127.0.0.1:6379/0]

Prints one JSON line. Bars: p50 <= 1.5x the bare forward's p50; p99 < 30 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("RECO_TEST_ML100K", "/work/shared/data/movielens-100k"))


def full_bundle(seed: int = 0):
    import torch

    from reco.data.movielens import load_movielens
    from reco.models.bundle import PAD, ModelBundle
    from reco.models.ranker import RankerConfig, SessionAwareRanker

    catalog = load_movielens(ML100K).catalog
    torch.manual_seed(seed)
    config = RankerConfig(n_items=len(catalog) + 1, n_categories=len(catalog.categories) + 1)
    return ModelBundle(SessionAwareRanker(config), [PAD, *catalog.item_ids], catalog, {"version": "1"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--redis-url", default=os.environ.get("RECO_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--torch-threads", type=int, default=1)
    args = ap.parse_args()

    import httpx
    import torch

    from reco.data.events import Event
    from reco.recommend import Recommender, RecoRequest, ServedModel
    from reco.store import RedisStore, connect
    from serving.models import ModelCache

    torch.set_num_threads(args.torch_threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")  # as the server does (serving.app._tune_runtime)
    tmp = Path(tempfile.mkdtemp(prefix="reco-bench-"))
    bundle = full_bundle()
    for arm in ("control", "treatment"):
        ModelCache(tmp / "cache").save(arm, "1", bundle)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    store = RedisStore(connect(args.redis_url), prefix)
    items = bundle.item_ids[1:]
    rng = np.random.default_rng(0)
    session = [str(i) for i in rng.choice(items, 20, replace=False)]
    ts = datetime.now(UTC)
    store.ingest([Event(event_id=f"b{i}", ts=ts, user_id="bench", session_id="bench-s", item_id=it, event_type="view")
                  for i, it in enumerate(session)])  # fmt: skip
    store.ingest([Event(event_id=f"t{i}", ts=ts, user_id=f"t{i}", item_id=str(it), event_type="view")
                  for i, it in enumerate(rng.choice(items, 300))])  # fmt: skip

    # The exact 500 candidates a request ranks, from the same pipeline code.
    served = ServedModel.build(bundle, "1")
    from reco.experiments.assignment import Assignment, ExplorationConfig

    rec = Recommender(store=store, assign=lambda u: Assignment("e", "control", "arm-control", ExplorationConfig(), 0.0),
                      models=lambda a: served)  # fmt: skip
    from concurrent.futures import ThreadPoolExecutor

    from reco.candidates import trending_candidates
    from reco.recommend import _session_for_model

    features = store.request_context("bench", "bench-s", [], "control", served.categories)
    with ThreadPoolExecutor(1) as pool:
        trending = pool.submit(lambda: trending_candidates(store.trending(100)))
        req = RecoRequest("bench", session_id="bench-s", limit=20)
        cands = rec._candidates(req, served, _session_for_model(features, served.index), trending).candidates
    cand_ids = [c.item_id for c in cands]
    bare = []
    for i in range(args.requests // 2 + 50):
        t0 = time.perf_counter()
        bundle.score(session, cand_ids, "home", "mobile")
        if i >= 50:
            bare.append(time.perf_counter() - t0)

    port = free_port()
    env = {**os.environ, "RECO_HOME": str(tmp / "home"), "RECO_REDIS_URL": args.redis_url, "RECO_REDIS_PREFIX": prefix,
           "RECO_MLFLOW_TRACKING_URI": "http://127.0.0.1:1", "RECO_MODEL_CACHE_DIR": str(tmp / "cache"),
           "RECO_TORCH_THREADS": str(args.torch_threads), "RECO_MODEL_POLL_S": "3600"}  # fmt: skip
    reco = Path(sys.executable).parent / "reco"
    server = subprocess.Popen([str(reco), "serve", "--port", str(port)], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=10) as http:
            for _ in range(300):
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            body = {"user_id": "bench", "session_id": "bench-s", "limit": 20, "device": "mobile"}
            lat, server_lat, n_items = [], [], set()
            for i in range(args.requests + 100):
                t0 = time.perf_counter()
                r = http.post("/v1/recommendations", json=body)
                dt = time.perf_counter() - t0
                r.raise_for_status()
                if i >= 100:
                    lat.append(dt)
                    server_lat.append(r.json()["latency_ms"] / 1000)
                    n_items.add(len(r.json()["items"]))
    finally:
        server.terminate()
        server.wait(20)
        keys = list(store.client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            store.client.delete(*keys)
    http_p, bare_p = percentiles(lat), percentiles(bare)
    print(json.dumps({
        "benchmark": "serving_latency", "candidates": len(cand_ids), "limit": 20, "session": len(session),
        "requests": len(lat), "torch_threads": args.torch_threads, "http": http_p,
        "server_pipeline": percentiles(server_lat), "bare_forward": bare_p,
        "p50_ratio": round(http_p["p50_ms"] / bare_p["p50_ms"], 3),
        "bar_p50_ratio_le_1.5": http_p["p50_ms"] <= 1.5 * bare_p["p50_ms"], "bar_p99_lt_30ms": http_p["p99_ms"] < 30,
        "items_per_response": sorted(n_items),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
