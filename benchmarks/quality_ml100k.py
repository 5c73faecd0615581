"""Quality on MovieLens-100k: train + evaluate in one command, print ONE JSON line.

Protocol: `reco.offline.evaluation` (RecBole's sequential leave-one-out, full ranking of all 1,682 items,
history kept; a second table with history excluded). The model trains on the training part, picks
its best epoch by validation NDCG@10, and is scored on test through `ModelBundle.score_batch` (the
served path). MostPop is scored on the same split.

    python benchmarks/quality_ml100k.py [--data DIR] [--epochs N] [--seed S] [--out DIR] [--table]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens-100k atomic files")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="save the trained bundle here")
    parser.add_argument("--table", action="store_true", help="also print the Markdown table (stderr)")
    parser.add_argument("--progress", action="store_true", help="show the training progress bar (stderr)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")  # epochs -> stderr

    from reco.data.movielens import load_movielens
    from reco.offline.evaluation import evaluate_split, format_table, leave_one_out
    from reco.offline.trainer import TrainConfig, train

    t0 = time.perf_counter()
    ml = load_movielens(args.data)
    split = leave_one_out(ml.events)
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed, threads=args.threads)
    valid_sessions, valid_targets, _ = split.sessions("valid")
    result = train(
        ml.events.iloc[split.train_rows], ml.catalog, cfg, progress=args.progress,
        validation=(valid_sessions, valid_targets),
    )  # fmt: skip
    train_s = time.perf_counter() - t0
    test = evaluate_split(result.bundle, split, "test")
    if args.out:
        result.bundle.meta["test_metrics"] = test
        result.bundle.save(args.out)
    if args.table:
        print(format_table({"reco": test["model"], "MostPop": test["mostpop"]}), file=sys.stderr)
    m, pop = test["model"], test["mostpop"]
    line = {
        "benchmark": "quality_ml100k",
        "users": len(valid_targets),
        "items": len(result.bundle.item_ids) - 1,
        **{f"test_{k}": round(v, 4) for k, v in m["all"].items()},
        **{f"test_excl_{k}": round(v, 4) for k, v in m["exclude_history"].items()},
        **{f"mostpop_{k}": round(v, 4) for k, v in pop["all"].items()},
        **{f"mostpop_excl_{k}": round(v, 4) for k, v in pop["exclude_history"].items()},
        "valid_ndcg@10": round(result.metrics.get("valid_ndcg@10", float("nan")), 4),
        "best_epoch": result.metrics["best_epoch"],
        "epochs_run": len(result.history),
        "examples_per_s": round(result.metrics["examples_per_s"], 1),
        "epoch_s": round(result.metrics["epoch_s"], 2),
        "epoch_cpu_s": round(result.metrics["epoch_cpu_s"], 2),
        "train_s": round(train_s, 1),
        "total_s": round(time.perf_counter() - t0, 1),
        "seed": args.seed,
        "threads": args.threads,
        "bar_ndcg@10": 0.080,
        "bar_met": m["all"]["ndcg@10"] >= 0.080,
    }
    print(json.dumps(line), flush=True)
    return line


if __name__ == "__main__":
    main()
