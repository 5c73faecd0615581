"""New-item cold start in the click simulator: items added to the catalogue mid-run.

The model (benchmarks/holdout_model.py) never saw `n_new` MovieLens items; the simulated users (reco.sim's
ground truth, fitted on all ratings) like them as they like any item. Users browse in sessions through the
request pipeline (`Recommender`, a greedy arm, pages of 10; each request's session has one more item: the
clicked one, else a view of another item the user likes). After a third of the requests the new items are
upserted (title + genres, as the catalogue API takes them) and the served model is rebuilt, as API workers
do at their next catalogue poll. Three conditions, each over the same seeds:

* `absent`: the new items are not served at all (the model's vocabulary; what reco did before the catalogue API);
* `content`: scored from content in the model's space, no deliberate exploration (bonus 0, no new_items source):
  the content scores alone rank no new item into a page of 10 (measured: 0 impressions in every seed);
* `cold_start`: content scores + the uncertainty bonus + the new_items source (the defaults served).

Per run, after the addition: overall CTR, the new items' share of impressions, requests until a new item had
`--n` impressions (median over the new items that got there), how many got there, and the error of their
CTR estimates (|clicks / impressions - mean true click probability of those impressions|). Prints one JSON
line per (condition, seed) and one summary line per condition (mean ± sd over seeds).

    python benchmarks/cold_start.py --model DIR [--seeds 0 1 2] [--users 200] [--requests 15] [--n 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from reco.state.records import RequestFeatures

sys.path.insert(0, str(Path(__file__).resolve().parent))

from holdout_model import DEFAULT_DATA, load_or_train

CONDITIONS = ("absent", "content", "cold_start")


class _Sessions:
    """The store protocol of `Recommender` over in-memory sessions (the simulator holds them)."""

    def __init__(self) -> None:
        self.sessions: dict[str, list[str]] = {}

    def request_context(self, user_id: str, session_id: str | None, *args: Any, **kwargs: Any) -> RequestFeatures:
        return RequestFeatures.of_session(list(self.sessions.get(session_id or "", []))[-50:])

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Greedy:
    arm, alias = "control", "arm-control"

    class exploration:
        strategy, rate = "none", 0.0


def run(condition: str, seed: int, got: dict, gt: Any, args: argparse.Namespace) -> dict[str, Any]:
    from reco.data.catalog import ItemRecord
    from reco.ranking.cold_start import ColdStartConfig
    from reco.ranking.recommend import PipelineConfig, Recommender, RecoRequest, ServedModel

    rng = np.random.default_rng(seed)
    bundle, new = got["bundle"], set(got["new_items"])
    full = got["full_catalog"]
    records = {iid: ItemRecord(item_id=iid, title=full.title(iid), categories=full.genres(iid)) for iid in new}
    cold = ColdStartConfig() if condition == "cold_start" else ColdStartConfig(bonus=0.0, source_k=0)
    state = {"model": ServedModel.build(bundle, "1")}
    store = _Sessions()
    config = PipelineConfig(features_inline=True, concurrent_sources=False, cold_start=cold)
    reco = Recommender(store=store, assign=lambda u: _Greedy(), models=lambda arm: state["model"], config=config)
    users = rng.choice(gt.users, size=args.users, replace=False)
    likes = {u: gt.top_items(u, 100) for u in users}
    order = np.repeat(np.arange(args.users), args.requests)
    rng.shuffle(order)
    add_at = len(order) // 3
    imps = clicks = 0
    new_imps: dict[str, int] = {}
    new_clicks: dict[str, int] = {}
    new_p: dict[str, float] = {}
    reached: dict[str, int] = {}
    for step, u_idx in enumerate(order.tolist()):
        if step == add_at and condition != "absent":
            state["model"] = ServedModel.build(bundle, "1", items=records)  # the workers' next catalogue poll
        user = str(users[u_idx])
        sid = f"{user}-s"
        session = store.sessions.setdefault(sid, [str(rng.choice(likes[user][:20]))])
        items = reco.recommend(RecoRequest(user_id=user, session_id=sid, limit=10)).items
        ids = [it.item_id for it in items]
        if not ids:
            continue
        p = gt.p_click(user, ids, np.arange(1, len(ids) + 1))
        clicked = rng.random(len(ids)) < p
        if step >= add_at:
            imps += len(ids)
            clicks += int(clicked.sum())
            for iid, pk, ck in zip(ids, p.tolist(), clicked.tolist(), strict=True):
                if iid in new:
                    new_imps[iid] = new_imps.get(iid, 0) + 1
                    new_clicks[iid] = new_clicks.get(iid, 0) + int(ck)
                    new_p[iid] = new_p.get(iid, 0.0) + pk
                    if new_imps[iid] == args.n:
                        reached[iid] = step - add_at + 1
        nxt = ids[int(np.flatnonzero(clicked)[0])] if clicked.any() else str(rng.choice(likes[user]))
        session.append(nxt)  # browsing: one more item per request
    errors = [abs(new_clicks[i] / new_imps[i] - new_p[i] / new_imps[i]) for i in reached]
    return {
        "benchmark": "cold_start",
        "condition": condition,
        "seed": seed,
        "requests_after_add": len(order) - add_at,
        "ctr": round(clicks / max(imps, 1), 5),
        "new_share": round(sum(new_imps.values()) / max(imps, 1), 4),
        "new_items_shown": len(new_imps),
        f"new_items_reaching_{args.n}": len(reached),
        f"median_requests_to_{args.n}": float(np.median(list(reached.values()))) if reached else None,
        "ctr_estimate_abs_err": round(float(np.mean(errors)), 4) if errors else None,
        "new_ctr": round(sum(new_clicks.values()) / max(sum(new_imps.values()), 1), 4),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--requests", type=int, default=15, help="requests per user")
    p.add_argument("--n", type=int, default=20, help="impressions a new item must reach")
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    args = p.parse_args(argv)

    import torch

    from reco.sim import GroundTruth

    torch.set_num_threads(1)
    got = load_or_train(args.model, data=args.data, epochs=args.epochs)
    gt = GroundTruth.fit(args.data)
    lines = []
    for condition in args.conditions:
        rows = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            row = run(condition, seed, got, gt, args)
            row["wall_s"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(row), flush=True)
            rows.append(row)
        summary: dict[str, Any] = {"benchmark": "cold_start", "summary": True, "condition": condition,
                                   "seeds": args.seeds}  # fmt: skip
        for key, value in rows[0].items():
            if (
                isinstance(value, float | int)
                and key not in ("seed", "wall_s")
                and all(r[key] is not None for r in rows)
            ):
                vals = [float(r[key]) for r in rows]
                summary[key] = round(statistics.mean(vals), 5)
                summary[f"{key}_sd"] = round(statistics.stdev(vals), 5) if len(vals) > 1 else 0.0
        print(json.dumps(summary), flush=True)
        lines += [*rows, summary]
    return lines


if __name__ == "__main__":
    main()
