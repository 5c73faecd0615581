"""Quality on MovieLens-100k: train + evaluate per seed, print one JSON line per seed and a summary line.

Protocol: `reco.offline.evaluation` (RecBole's sequential leave-one-out, full ranking of all 1,682 items,
history kept; a second table with history excluded). The model trains on the training part, picks its best
epoch by validation NDCG@10, and is scored on test through `ModelBundle.score_batch` (the ranker's forward,
which serving's `FrozenScorer` is held equal to). MostPop is scored on the same split. Each run is also
scored with the ranker's "seen" input off (`seen_off_*`: an empty history; see reco/offline/evaluation.py).

Reproducible: the same seed gives the same figures (one torch thread, deterministic algorithms, seeded
data order, negatives and dropout; `tests/test_quality_benchmark.py` checks it on a slice). The summary
line is the mean ± sd (sample sd, n - 1) over the seeds.

    python benchmarks/quality_ml100k.py [--seeds 0 1 2] [--epochs N] [--users N] [--out DIR] [--table]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k"
REPORTED = ("recall@10", "ndcg@10", "mrr@10", "recall@20", "ndcg@20", "mrr@20")


@contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Everything a run's figures depend on, fixed (RNGs, one thread count, deterministic kernels), and
    the process's previous torch settings restored afterwards."""
    import numpy as np
    import torch

    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def load_split(data: Path, users: int | None) -> tuple[Any, Any, Any]:
    """MovieLens-100k, optionally only its first `users` users (file order: a fixed slice), and the split."""
    from reco.data.movielens import load_movielens
    from reco.offline.evaluation import leave_one_out

    ml = load_movielens(data)
    events = ml.events
    if users is not None:
        keep = events["user_id"].drop_duplicates().iloc[:users]
        events = events[events["user_id"].isin(keep)].reset_index(drop=True)
    return events, ml.catalog, leave_one_out(events)


def run_seed(events: Any, catalog: Any, split: Any, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from reco.offline.evaluation import evaluate_split, format_table
    from reco.offline.trainer import TrainConfig, train

    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=args.epochs, seed=seed, threads=args.threads)
    valid_sessions, valid_targets, _ = split.sessions("valid")
    with deterministic(seed, args.threads):
        result = train(events.iloc[split.train_rows], catalog, cfg, progress=args.progress,
                       validation=(valid_sessions, valid_targets))  # fmt: skip
        train_s = time.perf_counter() - t0
        test = evaluate_split(result.bundle, split, "test", seen_off=True)
    if args.out:
        result.bundle.meta["test_metrics"] = test
        result.bundle.save(args.out / f"seed{seed}")
    if args.table:
        names = {"model": "reco", "model_seen_off": "reco, seen off", "mostpop": "MostPop"}
        print(format_table({names[k]: v for k, v in test.items()}), file=sys.stderr)
    m, off, pop = test["model"], test["model_seen_off"], test["mostpop"]
    return {
        "benchmark": "quality_ml100k",
        "seed": seed,
        "users": len(valid_targets),
        "items": len(result.bundle.item_ids) - 1,
        **{f"test_{k}": round(m["all"][k], 4) for k in REPORTED},
        **{f"test_excl_{k}": round(m["exclude_history"][k], 4) for k in REPORTED},
        **{f"seen_off_{k}": round(off["all"][k], 4) for k in REPORTED},
        **{f"seen_off_excl_{k}": round(off["exclude_history"][k], 4) for k in REPORTED},
        **{f"mostpop_{k}": round(pop["all"][k], 4) for k in REPORTED},
        **{f"mostpop_excl_{k}": round(pop["exclude_history"][k], 4) for k in REPORTED},
        "valid_ndcg@10": round(result.metrics.get("valid_ndcg@10", float("nan")), 4),
        "best_epoch": result.metrics["best_epoch"],
        "epochs_run": len(result.history),
        "epochs": args.epochs,
        "epoch_cpu_s": round(result.metrics["epoch_cpu_s"], 2),
        "train_s": round(train_s, 1),
        "total_s": round(time.perf_counter() - t0, 1),
        "threads": args.threads,
    }


def summarise(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample sd over seeds of every metric; the seeds and the best epochs."""
    out: dict[str, Any] = {"benchmark": "quality_ml100k", "summary": True, "seeds": [x["seed"] for x in lines]}
    for key in lines[0]:
        if any(key.startswith(p) for p in ("test_", "seen_off_", "mostpop_")) or key == "valid_ndcg@10":
            values = [x[key] for x in lines]
            out[key] = round(statistics.mean(values), 4)
            out[f"{key}_sd"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
    out["best_epochs"] = [x["best_epoch"] for x in lines]
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens-100k atomic files")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--users", type=int, default=None, help="only the first N users (a quick slice)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="save each seed's bundle under DIR/seed<S>")
    parser.add_argument("--table", action="store_true", help="also print the Markdown tables (stderr)")
    parser.add_argument("--progress", action="store_true", help="show the training progress bar (stderr)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")  # epochs -> stderr
    events, catalog, split = load_split(args.data, args.users)
    lines = []
    for seed in args.seeds:
        lines.append(run_seed(events, catalog, split, seed, args))
        print(json.dumps(lines[-1]), flush=True)
    if len(lines) > 1:
        lines.append(summarise(lines))
        print(json.dumps(lines[-1]), flush=True)
    return lines


if __name__ == "__main__":
    main()
