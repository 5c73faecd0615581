"""Training throughput at 1M-10M events: examples/s and epoch time of the production ranker (default
`RankerConfig` / `TrainConfig`: item_dim 64, GRU 2x128, windows of 50, batch 32, 32 sampled negatives) on seeded
synthetic sessions. Prints one JSON line.

    python benchmarks/training_scale.py --events 1_000_000 [--items 10000] [--threads 1]
    python benchmarks/training_scale.py --events 10_000_000 --train-fraction 0.05

Synthetic data: `events / 50` users, each a chronological run of views (sessions of ~8 items a few minutes
apart, sessions days apart), items drawn Zipf-like (s=1.1) from a catalogue of `--items` items in 18
categories, with a per-user favourite category for half of the views. Every step is timed on all the events
except training itself when `--train-fraction` < 1: then one full epoch is trained on that random share of the
users (same catalogue, same vocabulary: the per-example cost does not depend on how many examples there are)
and the epoch time over all the examples is extrapolated from its examples/s; the line says so
(`epoch_s_extrapolated`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
import pandas as pd


def sessions(events: int, items: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    users = max(events // 50, 1)
    user = np.sort(rng.integers(0, users, events))  # ~50 events per user, rows grouped by user
    first = np.r_[True, user[1:] != user[:-1]]
    new_session = first | (rng.random(events) < 1 / 8)
    gap = np.where(new_session, rng.exponential(3 * 86_400, events), rng.exponential(90, events))
    # seconds since the user's first event: cumulative gaps restarted at each user's first row
    cum = np.cumsum(gap)
    ts = cum - np.maximum.accumulate(np.where(first, cum - gap, 0.0))
    ts = (1_767_225_600 + rng.integers(0, 30 * 86_400, users)[user] + ts) * 1_000_000
    pop = 1.0 / np.arange(1, items + 1) ** 1.1
    item = rng.choice(items, events, p=pop / pop.sum())
    cat_of = rng.integers(0, 18, items)
    fav = rng.integers(0, 18, users)[user]
    by_cat = np.argsort(cat_of, kind="stable")  # item ids grouped by category
    count = np.bincount(cat_of, minlength=18)
    own = rng.random(events) < 0.5  # half the views: a uniform item of the user's favourite category
    c = fav[own]
    item[own] = by_cat[(count.cumsum() - count)[c] + (rng.random(c.size) * count[c]).astype(np.int64)]
    return pd.DataFrame(
        {
            "event_id": np.arange(events).astype(str),
            "user_id": pd.Categorical.from_codes(user, [f"u{i}" for i in range(users)]),
            "item_id": pd.Categorical.from_codes(item, [str(i) for i in range(items)]),
            "ts": pd.to_datetime(ts.astype("int64"), unit="us", utc=True),
            "event_type": "view",
            "page_type": pd.Categorical.from_codes(rng.integers(0, 3, events), ["home", "product", "category"]),
            "device": pd.Categorical.from_codes(rng.integers(0, 3, events), ["desktop", "mobile", "tablet"]),
        }
    ), cat_of


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-fraction", type=float, default=1.0, help="share of the users trained on (one epoch)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from reco.data.catalog import ItemCatalog
    from reco.offline.trainer import TrainConfig, build_examples, interactions, train, vocabulary

    t0 = time.perf_counter()
    events, cat_of = sessions(args.events, args.items, args.seed)
    gen_s = time.perf_counter() - t0
    catalog = ItemCatalog.from_records(
        {"item_id": str(i), "title": f"item {i}", "genres": [f"g{c}"]} for i, c in enumerate(cat_of)
    )
    cfg = TrainConfig(epochs=1, threads=args.threads, seed=args.seed)
    # data preparation on all the events, as `train` does it before its first epoch
    t0, c0 = time.perf_counter(), time.process_time()
    ev = interactions(events)
    ex = build_examples(ev, vocabulary(catalog, ev), cfg.max_session_len, cfg.window_stride)
    prep_s, prep_cpu_s, n_examples = time.perf_counter() - t0, time.process_time() - c0, ex.n_examples
    del ex
    train_events = events
    if args.train_fraction < 1:
        rng = np.random.default_rng(args.seed + 1)
        keep = rng.random(events["user_id"].cat.categories.size) < args.train_fraction
        train_events = events[keep[events["user_id"].cat.codes.to_numpy()]]
    res = train(train_events, catalog, cfg, progress=False)
    h = res.history[0]
    trained = res.metrics["n_examples"]
    line = {
        "benchmark": "training_scale", "events": args.events, "users": int(events["user_id"].cat.categories.size),
        "items": args.items, "torch_threads": args.threads, "examples_per_epoch": n_examples,
        "generate_s": round(gen_s, 1), "prepare_s": round(prep_s, 1), "prepare_cpu_s": round(prep_cpu_s, 1),
        "trained_examples": trained, "train_fraction_of_users": args.train_fraction,
        "examples_per_s": round(trained / h["epoch_s"]), "examples_per_cpu_s": round(trained / h["epoch_cpu_s"]),
        "epoch_s": round(n_examples / (trained / h["epoch_s"]), 1),
        "epoch_cpu_s": round(n_examples / (trained / h["epoch_cpu_s"]), 1),
        "epoch_s_extrapolated": args.train_fraction < 1,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_avg_1m": round(os.getloadavg()[0], 1), "cpus": os.cpu_count(),
    }  # fmt: skip
    print(json.dumps(line), flush=True)
    return line


if __name__ == "__main__":
    main()
