"""Per-request cost of the `session_query` source ranking by the ranker itself (`ranker_rows`), against the
retrieval score alone (`query_pool` 0, the source before), on benchmarks/scale.py's synthetic catalogues.

Each request runs the whole in-process pipeline (`Recommender.recommend`: sources inline, ranking, rules; no
Redis, no HTTP) on realistic traffic: a new session, or the current one with one more view (sessions of 1-20
views). The two settings serve the same request sequence, interleaved (alternating which goes first), each on
its own `ServedModel` (the scorer's memos are per model). Reported per setting: the request thread's CPU time
per request (median and mean; load-independent, unlike wall time on the shared machine) and the wall p50.

    python benchmarks/session_query_cost.py [--sizes 1682 10000 100000] [--requests 300] [--pool 2000]

Prints one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import synthetic_bundle

from reco.state.records import RequestFeatures


class _Store:
    """The store protocol of `Recommender` over one in-memory session."""

    def __init__(self) -> None:
        self.session: list[str] = []

    def request_context(self, *args: Any, **kwargs: Any) -> RequestFeatures:
        return RequestFeatures.of_session(self.session[-50:])

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Greedy:
    arm, alias = "bench", "bench"

    class exploration:
        strategy, rate = "none", 0.0


def _sessions(item_ids: list[str], n: int, seed: int) -> list[tuple[str, list[str]]]:
    """(session id, its views so far) per request: a new session, or the last one grown by one view."""
    rng = np.random.default_rng(seed)
    out, views, target, sid = [], [], 0, 0
    for _ in range(n):
        if len(views) >= target:
            sid, views, target = sid + 1, [], int(rng.integers(1, 21))
        views = [*views, item_ids[int(rng.integers(len(item_ids)))]]
        out.append((f"s{sid}", views))
    return out


def measure(n_items: int, requests: int, pool: int) -> dict[str, Any]:
    from reco.ranking.candidates import CandidateConfig
    from reco.ranking.recommend import PipelineConfig, Recommender, RecoRequest, ServedModel

    bundle = synthetic_bundle(n_items)
    settings = {"retrieval_score": 0, "ranker_pool": pool}
    recos, stores = {}, {}
    for name, p in settings.items():
        stores[name] = store = _Store()
        config = PipelineConfig(candidates=CandidateConfig(query_pool=p), features_inline=True,
                                concurrent_sources=False)  # fmt: skip
        model = ServedModel.build(bundle, name)
        recos[name] = Recommender(store=store, assign=lambda u: _Greedy(), models=lambda arm, m=model: m, config=config)
    cpu: dict[str, list[float]] = {name: [] for name in settings}
    wall: dict[str, list[float]] = {name: [] for name in settings}
    for k, (sid, views) in enumerate(_sessions(list(bundle.item_ids[1:]), requests + 20, seed=1)):
        for name in list(settings)[:: 1 if k % 2 else -1]:
            stores[name].session = views
            c0, w0 = time.thread_time(), time.perf_counter()
            recos[name].recommend(RecoRequest(user_id=sid, session_id=sid, limit=20))
            if k >= 20:  # warm-up requests left out
                cpu[name].append((time.thread_time() - c0) * 1e3)
                wall[name].append((time.perf_counter() - w0) * 1e3)
    out: dict[str, Any] = {"benchmark": "session_query_cost", "items": n_items, "requests": requests, "pool": pool}
    for name in settings:
        out[f"{name}_cpu_ms_median"] = round(float(np.median(cpu[name])), 3)
        out[f"{name}_cpu_ms_mean"] = round(float(np.mean(cpu[name])), 3)
        out[f"{name}_wall_ms_p50"] = round(float(np.median(wall[name])), 3)
    out["cpu_ratio_median"] = round(out["ranker_pool_cpu_ms_median"] / out["retrieval_score_cpu_ms_median"], 2)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1682, 10_000, 100_000])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--pool", type=int, default=2000, help="query_pool of the ranker setting")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = []
    for n in a.sizes:
        rows.append(measure(n, a.requests, a.pool))
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
