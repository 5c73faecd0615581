"""Training speed on MovieLens-100k: examples/s and epoch wall time, at a given torch thread count.

Trains on the leave-one-out training part (no validation, so only training is timed) and prints ONE
JSON line. An "example" is one (prefix -> next item) pair; an epoch is every training prefix once.

    python benchmarks/train_speed.py [--data DIR] [--epochs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from reco.data.movielens import load_movielens
    from reco.offline.evaluation import leave_one_out
    from reco.offline.trainer import TrainConfig, train

    ml = load_movielens(args.data)
    split = leave_one_out(ml.events)
    t0 = time.perf_counter()
    res = train(
        ml.events.iloc[split.train_rows], ml.catalog,
        TrainConfig(epochs=args.epochs, threads=args.threads, seed=args.seed), progress=False,
    )  # fmt: skip
    epochs = [h["epoch_s"] for h in res.history]
    line = {
        "benchmark": "train_speed_ml100k",
        "threads": args.threads,
        "epochs": args.epochs,
        "examples_per_epoch": res.metrics["n_examples"],
        "examples_per_s": round(res.metrics["examples_per_s"], 1),
        "epoch_s_mean": round(sum(epochs) / len(epochs), 2),
        "epoch_s_min": round(min(epochs), 2),
        "epoch_cpu_s_mean": round(sum(h["epoch_cpu_s"] for h in res.history) / len(epochs), 2),
        "examples_per_cpu_s": round(res.metrics["n_examples"] / min(h["epoch_cpu_s"] for h in res.history), 1),
        "total_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(line), flush=True)
    return line


if __name__ == "__main__":
    main()
