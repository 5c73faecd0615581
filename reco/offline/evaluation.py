"""Offline evaluation: RecBole's sequential leave-one-out protocol, ranking metrics, MostPop.

Protocol (RecBole 1.2.1's sequential default, reproduced exactly): timestamps are rescaled to [0, 1]
and stored as float32 (so interactions within about a second of each other tie and keep file order),
all interactions are sorted by that value (stable), then per user: last = test, second-to-last =
validation, the rest = train. Every item of the catalogue is ranked for every user; by default the
user's history is NOT excluded (RecBole's sequential setting), a second table excludes it (what
serving does). A user with fewer than 3 interactions contributes only training data.

Ranks are 0-based; ties are broken by vocabulary order (an item ranks above the target on a tie
only when it comes first), so results are deterministic, also for MostPop's integer counts.
Scores come from `ModelBundle.score_batch`, a thin call of `SessionAwareRanker.forward` (serving's
`FrozenScorer` is held equal to it). The ranker's "seen" input (`reco.models.ranker.seen`) is true for
the items of the history given: it lets the model learn that ML-100k users never rate a movie twice, so
"history kept" is close to "history excluded" for the ranker; `seen=False` scores with an empty history
(the flag off), to measure what the flag contributes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from reco.data.events import DEFAULT_DEVICE

if TYPE_CHECKING:
    from reco.artifacts.bundle import ModelBundle

KS = (10, 20)


@dataclass
class LeaveOneOut:
    """Per-user chronological split (users in order of first appearance)."""

    users: list[str]
    train: list[list[str]]  # chronological training items of each user
    valid: list[str | None]  # None for users with fewer than 3 interactions
    test: list[str | None]
    train_rows: np.ndarray  # positions (iloc) in the events frame of the training interactions

    def sessions(self, which: str) -> tuple[list[list[str]], list[str], list[int]]:
        """Inputs and targets for "valid" (history = train) or "test" (history = train + valid),
        with the positions of the evaluated users."""
        if which not in ("valid", "test"):
            raise ValueError(f"which must be 'valid' or 'test', not {which!r}")
        keep = [u for u, t in enumerate(self.test) if t is not None]
        if which == "valid":
            return [self.train[u] for u in keep], [self.valid[u] for u in keep], keep  # type: ignore[misc]
        return [[*self.train[u], self.valid[u]] for u in keep], [self.test[u] for u in keep], keep  # type: ignore[misc]


def chronological_order(events: pd.DataFrame) -> np.ndarray:
    """Row positions sorted by RecBole's float32-rescaled timestamp (stable: ties keep row order)."""
    t = events["ts"].astype("int64").to_numpy() / 1e6  # seconds (datetime64[us])
    span = (t.max() - t.min()) or 1.0
    scaled = ((t - t.min()) / span).astype(np.float32)
    return np.argsort(scaled, kind="stable")


def leave_one_out(events: pd.DataFrame) -> LeaveOneOut:
    """Split events (any frame with user_id, item_id, ts) as RecBole's sequential default does."""
    if events.empty:
        raise ValueError("no events to split")
    order = chronological_order(events)
    users = events["user_id"].to_numpy()[order]
    items = events["item_id"].to_numpy()[order]
    per_user: dict[str, list[int]] = {}
    for pos, u in enumerate(users):
        per_user.setdefault(u, []).append(pos)
    split = LeaveOneOut(users=[], train=[], valid=[], test=[], train_rows=np.empty(0, dtype=np.int64))
    train_rows: list[int] = []
    for u, pos in per_user.items():
        cut = len(pos) - 2 if len(pos) >= 3 else len(pos)
        split.users.append(str(u))
        split.train.append([str(items[p]) for p in pos[:cut]])
        split.valid.append(str(items[pos[cut]]) if cut < len(pos) else None)
        split.test.append(str(items[pos[cut + 1]]) if cut < len(pos) else None)
        train_rows.extend(order[p] for p in pos[:cut])
    split.train_rows = np.sort(np.asarray(train_rows, dtype=np.int64))
    return split


def target_ranks(scores: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """0-based rank of each row's target column among all columns (ties: lower column first).

    `targets` < 0 means the target is not rankable (unknown item): rank = n_columns. `exclude[b]`
    lists columns removed from row b's ranking (the target itself is never removed).

    >>> target_ranks(np.array([[0.1, 0.9, 0.5], [3.0, 3.0, 1.0]]), np.array([2, 1])).tolist()
    [1, 1]
    >>> target_ranks(np.array([[0.1, 0.9, 0.5]]), np.array([2]), exclude=[np.array([1])]).tolist()
    [0]
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    rows = np.arange(len(scores))
    safe = np.maximum(targets, 0)
    own = scores[rows, safe]
    if exclude is not None:
        for b, cols in enumerate(exclude):
            scores[b, cols] = -np.inf
    scores[rows, safe] = np.where(targets >= 0, own, -np.inf)
    t = scores[rows, safe][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    ranks = (scores > t).sum(1) + ((scores == t) & (cols < safe[:, None])).sum(1)
    return np.where(targets >= 0, ranks, scores.shape[1])


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k, NDCG@k, MRR@k (one relevant item per user) from 0-based ranks, averaged.

    >>> m = ranking_metrics(np.array([0, 1, 12]), ks=(10,))
    >>> round(m["recall@10"], 4), round(m["ndcg@10"], 4), round(m["mrr@10"], 4)
    (0.6667, 0.5436, 0.5)
    """
    ranks = np.asarray(ranks)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean())
    return out


def _columns(item_ids: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    index = {iid: i for i, iid in enumerate(item_ids)}
    return np.fromiter((index.get(w, -1) for w in wanted), dtype=np.int64, count=len(wanted))


def _history_columns(item_ids: Sequence[str], sessions: Sequence[Sequence[str]]) -> list[np.ndarray]:
    cols = [_columns(item_ids, s) for s in sessions]
    return [c[c >= 0] for c in cols]


def evaluate_scores(
    score: Callable[[Sequence[Sequence[str]]], np.ndarray],
    items: Sequence[str],
    sessions: Sequence[Sequence[str]],
    targets: Sequence[str],
    batch_size: int = 64,
    per_user: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Rank `items` for each session by `score(batch of sessions) -> (len(batch), len(items))`; the one
    ranking code of every model measured here (the ranker, the benchmarks' baselines). Returns {"all":
    metrics with history kept, "exclude_history": metrics without it}; a `per_user` dict receives each
    setting's per-session target ranks (the promotion gate's paired bootstrap, `reco.offline.gate`)."""
    tcols = _columns(items, targets)
    ranks_all, ranks_excl = [], []
    for lo in range(0, len(sessions), batch_size):
        batch = sessions[lo : lo + batch_size]
        scores = score(batch)
        t = tcols[lo : lo + batch_size]
        ranks_all.append(target_ranks(scores, t))
        ranks_excl.append(target_ranks(scores, t, exclude=_history_columns(items, batch)))
    if per_user is not None:
        per_user["all"], per_user["exclude_history"] = np.concatenate(ranks_all), np.concatenate(ranks_excl)
    return {
        "all": ranking_metrics(np.concatenate(ranks_all)),
        "exclude_history": ranking_metrics(np.concatenate(ranks_excl)),
    }


def evaluate_bundle(
    bundle: ModelBundle,
    sessions: Sequence[Sequence[str]],
    targets: Sequence[str],
    batch_size: int = 64,
    page_type: str = "home",
    device: str = DEFAULT_DEVICE,
    seen: bool = True,
    per_user: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Rank every vocabulary item for each session through `ModelBundle.score_batch` (the ranker's
    forward): `evaluate_scores`. `seen=False` turns the ranker's "already seen" input off (module docstring)."""
    items = bundle.item_ids[1:]  # every real item; row 0 is padding

    def score(batch: Sequence[Sequence[str]]) -> np.ndarray:
        return bundle.score_batch(batch, items, page_type=page_type, device=device, seen=seen)[0]

    return evaluate_scores(score, items, sessions, targets, batch_size, per_user)


def most_popular(
    train: Sequence[Sequence[str]], item_ids: Sequence[str], sessions: Sequence[Sequence[str]], targets: Sequence[str]
) -> dict[str, dict[str, float]]:
    """MostPop baseline: every user gets the items ranked by their training interaction count."""
    counts = Counter(i for seq in train for i in seq)
    pop = np.array([counts.get(i, 0) for i in item_ids], dtype=np.float64)
    scores = np.broadcast_to(pop, (len(sessions), len(pop)))
    t = _columns(item_ids, targets)
    return {
        "all": ranking_metrics(target_ranks(scores, t)),
        "exclude_history": ranking_metrics(target_ranks(scores, t, exclude=_history_columns(item_ids, sessions))),
    }


def evaluate_split(
    bundle: ModelBundle, split: LeaveOneOut, which: str = "test", seen_off: bool = False
) -> dict[str, dict[str, dict[str, float]]]:
    """The model and MostPop on one side of a leave-one-out split: {"model": {...}, "mostpop": {...}},
    plus "model_seen_off" (the same model with its "seen" input off) when `seen_off`."""
    sessions, targets, _ = split.sessions(which)
    out = {
        "model": evaluate_bundle(bundle, sessions, targets),
        "mostpop": most_popular(split.train, bundle.item_ids[1:], sessions, targets),
    }
    if seen_off:
        out["model_seen_off"] = evaluate_bundle(bundle, sessions, targets, seen=False)
    return out


def format_table(results: dict[str, dict[str, dict[str, float]]], ks: Sequence[int] = KS) -> str:
    """A Markdown table: one row per (model, history setting)."""
    names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "mrr")]
    lines = ["| model | history | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for model, tables in results.items():
        for setting, metrics in tables.items():
            label = "kept" if setting == "all" else "excluded"
            lines.append(f"| {model} | {label} | " + " | ".join(f"{metrics[n]:.4f}" for n in names) + " |")
    return "\n".join(lines)
