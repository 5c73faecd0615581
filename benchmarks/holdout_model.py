"""The model the cold-start and served-list benchmarks share: trained on MovieLens-100k without `n_new` items
(mid-popular ones, seeded), which the cold-start benchmark later adds through the catalogue as new items.

    python benchmarks/holdout_model.py --out DIR [--epochs N] [--n-new 50] [--seed 0]

`load_or_train(out, ...)` reuses DIR when it holds a bundle trained with the same settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k"


def held_out_items(events: Any, n_new: int, seed: int) -> list[str]:
    """`n_new` items drawn among the 100th-400th most viewed (liked by enough simulated users to matter)."""
    counts = events["item_id"].value_counts()
    pool = sorted(counts.index[100:400].tolist())
    return sorted(np.random.default_rng(seed).choice(pool, size=n_new, replace=False).tolist())


def load_or_train(out: Path, *, data: Path = DEFAULT_DATA, epochs: int = 8, n_new: int = 50, seed: int = 0) -> dict:
    """{bundle, events (without the new items), catalog (without them), full_catalog, new_items, split}."""
    import torch

    from reco.artifacts.bundle import ModelBundle
    from reco.data.catalog import ItemCatalog
    from reco.data.movielens import load_movielens
    from reco.offline.evaluation import leave_one_out
    from reco.offline.trainer import TrainConfig, train

    ml = load_movielens(data)
    new = held_out_items(ml.events, n_new, seed)
    events = ml.events[~ml.events["item_id"].isin(new)].reset_index(drop=True)
    catalog = ItemCatalog(ml.catalog.items[~ml.catalog.items["item_id"].isin(new)].reset_index(drop=True))
    split = leave_one_out(events)
    settings = {"epochs": epochs, "n_new": n_new, "seed": seed}
    marker = out / "holdout.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        bundle = ModelBundle.load(out)
    else:
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        valid = split.sessions("valid")[:2]
        bundle = train(events.iloc[split.train_rows], catalog, TrainConfig(epochs=epochs, seed=seed),
                       progress=False, validation=valid).bundle  # fmt: skip
        bundle.meta["popularity"] = {str(k): float(v) for k, v in events["item_id"].value_counts().items()}
        bundle.save(out)
        marker.write_text(json.dumps(settings))
        print(f"trained in {time.perf_counter() - t0:.0f} s -> {out}", file=sys.stderr)
    return {"bundle": bundle, "events": events, "catalog": catalog, "full_catalog": ml.catalog, "new_items": new,
            "split": split}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--n-new", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    got = load_or_train(a.out, data=a.data, epochs=a.epochs, n_new=a.n_new, seed=a.seed)
    print(
        json.dumps({"model": str(a.out), "items": len(got["bundle"].item_ids) - 1, "new_items": len(got["new_items"])})
    )


if __name__ == "__main__":
    main()
