"""Promotion-gate decisions on good and bad candidates, MovieLens-100k: one JSON line per (seed, candidate)
and a summary line per candidate (mean ± sd over seeds, sample sd).

Per seed s, a champion is trained on the leave-one-out training rows (`--epochs`, seed s); three candidates
are trained on the same rows and compared with it on the same 943 test users (`reco.offline.gate`: paired
bootstrap over users of the relative NDCG@10 change, 2,000 resamples, 95 % percentile interval; reject when
its upper bound is below -margin):

* ``other seed``: the champion's config with seed s + 100 (an equivalent model: it should pass);
* ``1 epoch``: the same config trained one epoch (far fewer epochs: worse);
* ``shuffled labels``: the item column permuted across the training rows (popularity kept, sequence gone).

    python benchmarks/gate_decisions.py [--seeds 0 1 2] [--epochs 5] [--margin 0.05] [--users N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_ml100k import DEFAULT_DATA, deterministic, load_split

#: A small ranker (the served architecture, narrower) so 12 trainings fit a benchmark run on 2 cores.
SMALL = {"item_dim": 32, "hidden": 32, "attn_dim": 32, "mlp_dims": (64, 32)}


def _ranks(bundle: Any, split: Any) -> Any:
    from reco.offline.evaluation import evaluate_bundle

    sessions, targets, _ = split.sessions("test")
    out: dict[str, Any] = {}
    evaluate_bundle(bundle, sessions, targets, per_user=out)
    return out["all"]


def _train(rows: Any, catalog: Any, seed: int, epochs: int) -> Any:
    from reco.offline.trainer import TrainConfig, train

    with deterministic(seed, 1):
        return train(rows, catalog, TrainConfig(epochs=epochs, seed=seed, model=SMALL), progress=False).bundle


def run_seed(events: Any, catalog: Any, split: Any, seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    import numpy as np

    from reco.offline.gate import compare_ranks, decide

    rows = events.iloc[split.train_rows]
    shuffled = rows.copy()
    shuffled["item_id"] = np.random.default_rng(seed).permutation(shuffled["item_id"].to_numpy())
    champion = _ranks(_train(rows, catalog, seed, args.epochs), split)
    candidates = {
        "other seed": (rows, seed + 100, args.epochs),
        "1 epoch": (rows, seed, 1),
        "shuffled labels": (shuffled, seed, args.epochs),
    }
    out = []
    for name, (data, s, epochs) in candidates.items():
        t0 = time.perf_counter()
        cmp = compare_ranks(_ranks(_train(data, catalog, s, epochs), split), champion)
        n, r = cmp["ndcg@10"], cmp["recall@10"]
        line = {"seed": seed, "candidate": name, "ndcg@10": n["candidate"], "champion_ndcg@10": n["champion"],
                "rel_ndcg@10": n["relative_change"], "ci": n["ci"], "rel_recall@10": r["relative_change"],
                "recall_ci": r["ci"], "users": n["n"], "decision": "reject" if decide(n, args.margin) else "pass",
                "margin": args.margin, "train_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
        print(json.dumps(line), flush=True)
        out.append(line)
    return out


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.1%} ± {sd:.1%}"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--users", type=int, default=None, help="only the first N users (a quick slice)")
    args = parser.parse_args(argv)
    events, catalog, split = load_split(args.data, args.users)
    lines = [line for seed in args.seeds for line in run_seed(events, catalog, split, seed, args)]
    for name in dict.fromkeys(x["candidate"] for x in lines):
        mine = [x for x in lines if x["candidate"] == name]
        print(json.dumps({"summary": name, "rel_ndcg@10": _ms([x["rel_ndcg@10"] for x in mine]),
                          "ci_high": _ms([x["ci"][1] for x in mine]),
                          "rel_recall@10": _ms([x["rel_recall@10"] for x in mine]),
                          "rejected": f"{sum(x['decision'] == 'reject' for x in mine)}/{len(mine)}",
                          "champion_ndcg@10": statistics.mean(x["champion_ndcg@10"] for x in mine)}))  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
