"""Quality of what the API serves next to the model's full ranking, on the same leave-one-out test cases.

Full ranking: `reco.offline.evaluation.evaluate_split` (every item ranked, history kept / excluded).
Served list: `reco.offline.served_eval.evaluate_served` (the request pipeline with the API's defaults: <= 500
candidates from the sources, the rules dropping the session (last 50 items) and the user's history as Redis
keeps it (`RECO_USER_ITEMS_MAX`, 500), the per-category cap of 3, a page of 10).
The model is benchmarks/holdout_model.py's (MovieLens-100k without 50 items kept for the cold-start run).

    python benchmarks/served_quality.py --model DIR [--epochs 8] [--users N] [--max-per-category 3 [100 ...]]
        [--query-pool 2000 [0 ...]] [--seen-window 500 [...]] [--session-only] [--ann-threshold 20000 [0 ...]]

Prints one JSON line per setting (every combination of the lists; the full ranking is evaluated once).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from holdout_model import DEFAULT_DATA, load_or_train

from reco.offline.served_eval import USER_ITEMS_MAX
from reco.ranking.candidates import ANN_THRESHOLD, CandidateConfig

CANDIDATES = CandidateConfig()  # serving's defaults


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="holdout model folder (trained there if absent)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--users", type=int, default=None, help="evaluate the first N test users only")
    p.add_argument("--max-per-category", type=int, nargs="+", default=[3], help="caps to serve with (100: none)")
    p.add_argument(
        "--query-pool",
        type=int,
        nargs="+",
        default=[CANDIDATES.query_pool],
        help="items the ranker scores for session_query (0, serving's default: the retrieval score alone)",
    )
    p.add_argument(
        "--ann-threshold",
        type=int,
        nargs="+",
        default=[ANN_THRESHOLD],
        help="search the ANN above this many items (0: the >20k-item path on this catalogue)",
    )
    p.add_argument(
        "--seen-window",
        type=int,
        nargs="+",
        default=[USER_ITEMS_MAX],
        help="the user's history Redis keeps (RECO_USER_ITEMS_MAX; the rules drop it; the session is its last 50)",
    )
    p.add_argument(
        "--session-only", action="store_true", help="drop the session's items only (RECO_DROP_HISTORY=false)"
    )
    a = p.parse_args(argv)

    import torch

    from reco.offline.evaluation import evaluate_bundle
    from reco.offline.served_eval import evaluate_served
    from reco.ranking.recommend import ServedModel

    torch.set_num_threads(1)
    got = load_or_train(a.model, data=a.data, epochs=a.epochs)
    bundle, split = got["bundle"], got["split"]
    sessions, targets, _ = split.sessions("test")
    if a.users:
        sessions, targets = sessions[: a.users], targets[: a.users]
    t0 = time.perf_counter()
    full = evaluate_bundle(bundle, sessions, targets)
    base = {
        "benchmark": "served_quality",
        "cases": len(targets),
        "full_ndcg@10": round(full["all"]["ndcg@10"], 4),
        "full_excl_history_ndcg@10": round(full["exclude_history"]["ndcg@10"], 4),
        "full_recall@10": round(full["all"]["recall@10"], 4),
        "full_excl_history_recall@10": round(full["exclude_history"]["recall@10"], 4),
        "full_s": round(time.perf_counter() - t0, 1),
    }
    rows = []
    for threshold in a.ann_threshold:
        model = ServedModel.build(bundle, "eval", ann_threshold=threshold)  # one per setting: its own memos
        for pool, cap, window in itertools.product(a.query_pool, a.max_per_category, a.seen_window):
            t1 = time.perf_counter()
            config = replace(CANDIDATES, query_pool=pool)
            served = evaluate_served(model, sessions, targets, max_per_category=cap, candidates=config,
                                     seen_window=window, drop_history=not a.session_only)  # fmt: skip
            ndcg = served["ndcg@10"]
            rows.append({
                **base, "query_pool": pool, "max_per_category": cap, "seen_window": window,
                "drop_history": not a.session_only,
                "ann": model.index.ann is not None,
                **{f"served_{k}": round(v, 4) if isinstance(v, float) else v for k, v in served.items()
                   if k != "cases"},
                "served_vs_full_ndcg@10": round(ndcg / max(full["all"]["ndcg@10"], 1e-12), 3),
                "served_vs_full_excl_ndcg@10": round(ndcg / max(full["exclude_history"]["ndcg@10"], 1e-12), 3),
                "served_s": round(time.perf_counter() - t1, 1),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
