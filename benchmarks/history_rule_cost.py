"""CPU per request of the consumed-items rule on the holdout model: the store's decode of the user's history
(`P:uitems`, as LRANGE returns it), `excluded_items` and the rows mask of `rule_positions` over 500 candidates,
with the session's items only (`RuleConfig(drop_history=False)`) and with the history dropped too (the default).

    python benchmarks/history_rule_cost.py --model /tmp/holdout [--history 0 100 500] [--calls 200]

Prints the best and the median of 5 rounds of `--calls` calls, process CPU time per call.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from holdout_model import DEFAULT_DATA, load_or_train

from reco.ranking.recommend import ServedModel
from reco.ranking.rules import RuleConfig, excluded_items, rule_positions
from reco.state.redis_io import text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="holdout model folder (trained there if absent)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--history", type=int, nargs="+", default=[0, 100, 500], help="history lengths")
    p.add_argument("--calls", type=int, default=200)
    a = p.parse_args(argv)
    model = ServedModel.build(load_or_train(a.model, data=a.data)["bundle"], "eval")
    ids = [i for i in model.index.ids if i in model.index]
    rng = random.Random(0)
    cands = np.array(rng.sample(range(model.index.n_rows), 500), dtype=np.int64)
    cats = model.row_category_code[cands]
    for n_hist in a.history:
        raw = [i.encode() for i in rng.sample(ids, n_hist)]  # what LRANGE returns
        session = frozenset(text(v) for v in raw[-20:])
        for cfg in (RuleConfig(drop_history=False), RuleConfig()):
            rounds = []
            for _ in range(5):
                t = time.process_time()
                for _ in range(a.calls):
                    hist = [text(v) for v in raw]  # the store's decode
                    dropped = excluded_items("home", context_item_id=None, consumed=session, cart=(), history=hist,
                                             config=cfg)  # fmt: skip
                    rule_positions(cands, cats, drop=model.index.rows(dropped), window=10, config=cfg)
                rounds.append((time.process_time() - t) / a.calls * 1000)
            rounds.sort()
            print(f"history {n_hist} drop_history={cfg.drop_history}: best {rounds[0]:.3f} ms, "
                  f"median {rounds[2]:.3f} ms CPU per call", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
