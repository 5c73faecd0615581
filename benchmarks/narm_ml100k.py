"""NARM (Li et al., CIKM 2017) on MovieLens-100k, history excluded: the fair baseline of quality_ml100k.

The split, the ranking and the metrics are reco's own (`reco.offline.evaluation`: RecBole's sequential
leave-one-out, all 1,682 items ranked, ties by vocabulary order), so the figures sit next to the ranker's
on the identical split. The model is RecBole 1.2.1's NARM: item embedding 64, a 1-layer GRU (128, no bias),
the global encoder = the last hidden state, the local encoder = attention over the session's positions
with the last state as query (alpha_tj = v' sigmoid(A1 h_j + A2 h_t), unnormalised, padding masked),
[local, global] through dropout 0.5 and a bilinear map into item space, scored against every item
embedding; input embedding dropout 0.25; cross-entropy over all items; Adam.

Training examples are reco's: every prefix of each user's training sequence predicts the next item, read
in windows of 50 with stride 25 (one causal GRU pass per window gives every prefix; the attention of each
prefix is masked to its own past), so each prefix sees between 26 and 50 past items where RecBole gives
it exactly min(length, 50). The best epoch is picked by validation NDCG@10 with history excluded (what it
is measured on), early stop after `--patience` epochs without gain. Same seed, same figures.

    python benchmarks/narm_ml100k.py [--seeds 0 1 2] [--epochs N] [--users N] [--lr LR]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_ml100k import DEFAULT_DATA, REPORTED, deterministic, load_split

log = logging.getLogger("narm")


class NARM(nn.Module):
    def __init__(self, n_items: int, emb: int = 64, hidden: int = 128, dropout: tuple[float, float] = (0.25, 0.5)):
        super().__init__()
        self.item_emb = nn.Embedding(n_items, emb, padding_idx=0)
        self.emb_drop = nn.Dropout(dropout[0])
        self.gru = nn.GRU(emb, hidden, batch_first=True, bias=False)
        self.a1 = nn.Linear(hidden, hidden, bias=False)
        self.a2 = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)
        self.ct_drop = nn.Dropout(dropout[1])
        self.b = nn.Linear(2 * hidden, emb, bias=False)
        for m in self.modules():  # RecBole's initialisation
            if isinstance(m, nn.Embedding | nn.Linear):
                nn.init.xavier_normal_(m.weight)
            elif isinstance(m, nn.GRU):
                for w in m.parameters():
                    nn.init.xavier_uniform_(w)

    def prefixes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T) right-padded item rows -> (B, T, emb): the session representation of every prefix."""
        h, _ = self.gru(self.emb_drop(self.item_emb(x)))  # (B, T, H), causal
        T = x.size(1)
        past = torch.ones(T, T, dtype=torch.bool, device=x.device).tril() & (x > 0).unsqueeze(1)  # [b, t, j]
        scores = torch.sigmoid(self.a1(h).unsqueeze(1) + self.a2(h).unsqueeze(2))  # (B, T, T, H)
        alpha = self.v(scores).squeeze(-1) * past  # (B, T, T): position j's weight for prefix t
        local = torch.bmm(alpha, h)  # (B, T, H)
        return self.b(self.ct_drop(torch.cat([local, h], dim=-1)))

    def logits(self, c: torch.Tensor) -> torch.Tensor:
        out = c @ self.item_emb.weight.T
        return out.index_fill(-1, torch.tensor([0]), float("-inf"))  # padding is never an answer


def score_sessions(model: NARM, index: dict[str, int], sessions: list[list[str]], max_len: int = 50) -> np.ndarray:
    """(len(sessions), n_items - 1) scores of every real item for each session's last max_len known items."""
    rows = [[index[i] for i in s if i in index][-max_len:] or [0] for s in sessions]
    x = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    for b, r in enumerate(rows):
        x[b, : len(r)] = torch.tensor(r)
    with torch.inference_mode():
        c = model.prefixes(x)[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])]
        return model.logits(c)[:, 1:].numpy()


def run_seed(events: Any, catalog: Any, split: Any, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from reco.offline.evaluation import evaluate_scores
    from reco.offline.trainer import build_examples, vocabulary

    t0 = time.perf_counter()
    train_events = events.iloc[split.train_rows]
    item_ids = vocabulary(catalog, train_events)  # the ranker's vocabulary: the same columns, the same ties
    index = {iid: i for i, iid in enumerate(item_ids) if i > 0}
    ex = build_examples(train_events, item_ids, 50, 25)
    windows, targets = torch.from_numpy(ex.windows), torch.from_numpy(ex.targets)
    valid_sessions, valid_targets, _ = split.sessions("valid")
    test_sessions, test_targets, _ = split.sessions("test")
    with deterministic(seed, args.threads):
        model = NARM(len(item_ids))
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        rng = np.random.default_rng(seed)
        n_batches = math.ceil(len(windows) / args.batch_size)
        best, best_state, best_epoch, stale, history = -1.0, None, 0, 0, []
        for epoch in range(1, args.epochs + 1):
            model.train()
            e0, total = time.process_time(), 0.0
            for b in np.array_split(rng.permutation(len(windows)), n_batches):
                x, y = windows[torch.from_numpy(b)], targets[torch.from_numpy(b)]
                sel = y > 0
                loss = F.cross_entropy(model.logits(model.prefixes(x)[sel]), y[sel])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
            model.eval()
            valid = evaluate_scores(lambda s: score_sessions(model, index, s), item_ids[1:], valid_sessions,
                                    valid_targets)["exclude_history"]  # fmt: skip
            history.append({"epoch": epoch, "loss": total / n_batches, "valid_ndcg@10": valid["ndcg@10"],
                            "epoch_cpu_s": time.process_time() - e0})  # fmt: skip
            log.info("seed %s %s", seed, {k: round(v, 4) for k, v in history[-1].items()})
            if valid["ndcg@10"] > best:
                best, best_state, best_epoch, stale = valid["ndcg@10"], copy.deepcopy(model.state_dict()), epoch, 0
            else:
                stale += 1
                if stale >= args.patience:
                    break
        model.load_state_dict(best_state)
        model.eval()
        test = evaluate_scores(lambda s: score_sessions(model, index, s), item_ids[1:], test_sessions, test_targets)
    return {
        "benchmark": "narm_ml100k",
        "seed": seed,
        "users": len(test_targets),
        **{f"test_excl_{k}": round(test["exclude_history"][k], 4) for k in REPORTED},
        **{f"test_{k}": round(test["all"][k], 4) for k in REPORTED},
        "valid_excl_ndcg@10": round(best, 4),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "epochs": args.epochs,
        "lr": args.lr,
        "epoch_cpu_s": round(statistics.mean(h["epoch_cpu_s"] for h in history), 2),
        "total_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)  # RecBole's default
    parser.add_argument("--batch-size", type=int, default=64, help="windows per step (~1,500 prefixes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--users", type=int, default=None, help="only the first N users (a quick slice)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    events, catalog, split = load_split(args.data, args.users)
    lines = []
    for seed in args.seeds:
        lines.append(run_seed(events, catalog, split, seed, args))
        print(json.dumps(lines[-1]), flush=True)
    if len(lines) > 1:
        summary: dict[str, Any] = {"benchmark": "narm_ml100k", "summary": True, "seeds": args.seeds}
        for key in (k for k in lines[0] if k.startswith("test_")):
            values = [x[key] for x in lines]
            summary[key], summary[f"{key}_sd"] = round(statistics.mean(values), 4), round(statistics.stdev(values), 4)
        summary["best_epochs"] = [x["best_epoch"] for x in lines]
        lines.append(summary)
        print(json.dumps(summary), flush=True)
    return lines


if __name__ == "__main__":
    main()
