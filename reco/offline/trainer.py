"""Training the `SessionAwareRanker` from interaction events, with warm start.

**Examples.** Events are ordered per user chronologically (RecBole's float32-rescaled timestamp,
stable, so a later row never moves before an earlier one it ties with). Every prefix of a user's
sequence predicts the next item, as in RecBole's sequential setup; the encoder input is the user's
recent history capped at `max_session_len` items. (`session_id`, split at 30 minutes of inactivity,
is in the events too, but MovieLens "sessions" are rating bursts of a few items: too short to be the
encoder input, so the model reads the recent history across sessions, as serving's Redis session
history does.) Rather than materialising ~100k prefixes, each user's sequence is cut into windows of
`max_session_len` items with stride `window_stride`; one causal pass of the encoder yields every
prefix's embedding, and each target is scored exactly once, by the window in which it has the
longest past (at least `max_session_len - window_stride + 1` items, or all of them). No future item
can reach a prefix: the GRU is causal and the attention is causally masked.

**Objective.** The sum of two cross-entropies per (prefix, next item):
1. full softmax over all items of the retrieval score `<session, item>` (tied item embeddings);
2. sampled softmax with logQ correction of the served score (retrieval score + the MLP ranker over
   the joined features): `n_negatives` items drawn from a proposal that mixes the retrieval softmax
   (the items that compete at the top) with uniform (every item), each logit minus log q(item).
The first trains the embeddings and encoder on the whole catalogue cheaply; the second trains the
MLP as an estimate of the full softmax over the served score, so its correction is calibrated on
every item it will score. (Plain "top-k hardest" negatives taught the MLP to demote the top of the
retrieval ranking and promote the items just below it: test NDCG@10 0.045 vs 0.070 valid.)

**Warm start.** `init` (a previous `ModelBundle`) must have the same architecture (else
`WarmStartError`); the vocabulary may grow: known items' rows are copied by item id (also the
category/popularity features), new items get fresh rows, categories likewise by name. Popularity
buckets are then recomputed from the new training data (a data feature, not a learned weight).

Deterministic under `seed` at a fixed thread count (`threads`, default 1: on the 2 shared cores two
OpenMP threads spin while their partner is descheduled, measured 10x slower per epoch; the global
torch RNG is left untouched by forking it).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from reco.artifacts.bundle import PAD, ModelBundle
from reco.data.catalog import ItemCatalog
from reco.data.events import DEFAULT_DEVICE
from reco.offline.evaluation import chronological_order, evaluate_bundle

if TYPE_CHECKING:
    import torch

    from reco.models.ranker import SessionAwareRanker

log = logging.getLogger(__name__)
DEFAULT_PAGE = "home"  # the default of ModelBundle.score; a missing device is DEFAULT_DEVICE, as at serving


class WarmStartError(ValueError):
    """The initial model cannot seed this training run (architecture mismatch)."""


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32  # windows per step (each holds up to max_session_len examples)
    lr: float = 3e-3
    weight_decay: float = 0.0
    n_negatives: int = 32  # sampled negatives per example for the ranker loss
    proposal_mix: float = 0.5  # negatives ~ mix * softmax(retrieval) + (1 - mix) * uniform
    max_session_len: int = 50
    window_stride: int = 25
    grad_clip: float = 5.0
    patience: int = 6  # epochs without validation improvement before stopping (needs validation)
    seed: int = 0
    threads: int = 1  # measured: 2 OpenMP threads on 2 shared cores ran 10x slower (docs/benchmarks.md)
    model: dict[str, Any] = field(default_factory=dict)  # RankerConfig overrides (not the vocab sizes)

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "max_session_len", "window_stride", "threads", "n_negatives")
        bad = [k for k in positive if getattr(self, k) < 1] + [k for k in ("lr",) if self.lr <= 0]
        if bad or not 0.0 <= self.proposal_mix <= 1.0:
            raise ValueError(f"TrainConfig: {', '.join(bad) or 'proposal_mix'} out of range")


@dataclass
class TrainingWindows:
    """Windows of item rows (W, T), right-padded; targets (W, T) with 0 = no loss at that position;
    the page/device index of each target's event (W, T)."""

    windows: np.ndarray
    targets: np.ndarray
    page: np.ndarray
    device: np.ndarray
    user: np.ndarray  # (W,) index into `sequences`
    offset: np.ndarray  # (W,) position of the window's first item in its user's sequence
    sequences: list[np.ndarray] = field(default_factory=list)  # each user's item rows, chronological

    @property
    def n_examples(self) -> int:
        return int((self.targets > 0).sum())


@dataclass
class TrainResult:
    bundle: ModelBundle
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


# --------------------------------------------------------------------------- data


def vocabulary(catalog: ItemCatalog, events: pd.DataFrame) -> list[str]:
    """[PAD] + catalogue items + items seen only in events (sorted)."""
    known = set(catalog.item_ids)
    extra = sorted(set(events["item_id"].astype(str)) - known)
    return [PAD, *catalog.item_ids, *extra]


def interactions(events: pd.DataFrame) -> pd.DataFrame:
    """The events that express interest (not impressions), each `event_id` once.

    >>> ev = pd.DataFrame({"event_id": ["a", "a", "b"], "event_type": ["view", "view", "impression"]})
    >>> interactions(ev).event_id.tolist()
    ['a']
    """
    if "event_type" in events.columns:
        events = events[events["event_type"].astype(str) != "impression"]
    if "event_id" in events.columns:
        events = events.drop_duplicates("event_id")
    return events


def _context_codes(values: pd.Series | None, vocab: Sequence[str], default: str, n: int) -> np.ndarray:
    """String column -> context index (0 = unknown value; missing -> `default`, as at serving)."""
    if values is None:
        values = pd.Series([None] * n)
    filled = values.astype(object).where(values.notna(), default)
    lookup = {v: i + 1 for i, v in enumerate(vocab)}
    return np.fromiter((lookup.get(v, 0) for v in filled), dtype=np.int64, count=n)


def build_examples(
    events: pd.DataFrame,
    item_ids: Sequence[str],
    max_session_len: int = 50,
    window_stride: int = 25,
    page_types: Sequence[str] = ("home", "product", "category", "cart"),
    devices: Sequence[str] = ("desktop", "mobile", "tablet"),
) -> TrainingWindows:
    """Per user chronological sequences -> windows of every prefix -> next item (see module doc).

    >>> ev = pd.DataFrame({"user_id": ["u"] * 4, "item_id": ["a", "b", "c", "d"],
    ...                    "ts": pd.to_datetime([1, 2, 3, 4], unit="s", utc=True)})
    >>> ex = build_examples(ev, ["<pad>", "a", "b", "c", "d"], max_session_len=2, window_stride=1)
    >>> ex.windows.tolist(), ex.targets.tolist()
    ([[1, 2], [2, 3]], [[2, 3], [0, 4]])
    """
    if not 1 <= window_stride <= max_session_len:
        raise ValueError("window_stride must be in [1, max_session_len]")
    order = chronological_order(events)
    ev = events.iloc[order]
    index = {iid: i for i, iid in enumerate(item_ids)}
    rows = np.fromiter((index.get(i, 0) for i in ev["item_id"].astype(str)), dtype=np.int64, count=len(ev))
    page = _context_codes(ev.get("page_type"), page_types, DEFAULT_PAGE, len(ev))
    dev = _context_codes(ev.get("device"), devices, DEFAULT_DEVICE, len(ev))
    T = max_session_len
    out: dict[str, list[np.ndarray]] = {"w": [], "t": [], "p": [], "d": []}
    users: list[int] = []
    offsets: list[int] = []
    sequences: list[np.ndarray] = []
    groups = pd.Series(np.arange(len(ev))).groupby(ev["user_id"].to_numpy(), sort=False)
    for _, pos in groups:
        idx = pos.to_numpy()
        idx = idx[rows[idx] > 0]  # items outside the vocabulary cannot be inputs or targets
        if len(idx) < 2:
            continue
        n_in = len(idx) - 1  # inputs idx[:-1] predict idx[1:]
        sequences.append(rows[idx])
        start = 0
        while True:
            sl = slice(start, min(start + T, n_in))
            own_from = 0 if start == 0 else T - window_stride  # earlier positions belong to the previous window
            w = np.zeros(T, np.int64)
            t = np.zeros(T, np.int64)
            p = np.zeros(T, np.int64)
            d = np.zeros(T, np.int64)
            n = sl.stop - sl.start
            w[:n] = rows[idx[sl]]
            tgt = idx[sl.start + 1 : sl.stop + 1]
            t[own_from:n] = rows[tgt][own_from:]
            p[:n], d[:n] = page[tgt], dev[tgt]
            for k, v in zip("wtpd", (w, t, p, d), strict=True):
                out[k].append(v)
            users.append(len(sequences) - 1)
            offsets.append(start)
            if start + T >= n_in:
                break
            start += window_stride
    if not out["w"]:
        raise ValueError("no training examples: every user needs at least 2 interactions with known items")
    return TrainingWindows(*(np.stack(out[k]) for k in "wtpd"), np.array(users), np.array(offsets), sequences)


def popularity_buckets(counts: np.ndarray, n_buckets: int) -> np.ndarray:
    """floor(log2(1 + count)), capped at n_buckets - 1: 0 -> 0, 1-2 -> 1, 3-6 -> 2, 7-14 -> 3, ...

    >>> popularity_buckets(np.array([0, 1, 3, 7, 1000]), 6).tolist()
    [0, 1, 2, 3, 5]
    """
    b = np.floor(np.log2(np.maximum(counts, 0) + 1.0)).astype(np.int64)
    return np.minimum(b, n_buckets - 1)


# --------------------------------------------------------------------------- model setup


def _new_model(config: TrainConfig, n_items: int, n_categories: int) -> SessionAwareRanker:
    from reco.models.ranker import RankerConfig, SessionAwareRanker

    overrides = {"max_session_len": config.max_session_len, **config.model}
    return SessionAwareRanker(RankerConfig(n_items=n_items, n_categories=n_categories, **overrides))


def warm_start(
    init: ModelBundle, model: SessionAwareRanker, item_ids: Sequence[str], categories: Sequence[str]
) -> SessionAwareRanker:
    """Copy `init`'s weights into the freshly initialised `model` (new vocabulary `item_ids`,
    category vocabulary `categories`): item rows by item id, category rows by name, all other
    tensors whole. Raises `WarmStartError` on an architecture mismatch."""
    import torch

    old_arch, new_arch = init.model.config.architecture(), model.config.architecture()
    diff = sorted(k for k in new_arch if old_arch.get(k) != new_arch[k])
    if diff:
        detail = ", ".join(f"{k}: {old_arch.get(k)!r} -> {new_arch[k]!r}" for k in diff)
        raise WarmStartError(f"cannot warm-start: architecture differs ({detail})")
    old_items = {iid: i for i, iid in enumerate(init.item_ids)}
    new_rows = [i for i, iid in enumerate(item_ids) if iid in old_items]
    old_rows = [old_items[item_ids[i]] for i in new_rows]
    old_cats = {c: i + 1 for i, c in enumerate(init.meta.get("categories", []))}
    cat_new = [0] + [i + 1 for i, c in enumerate(categories) if c in old_cats]
    cat_old = [0] + [old_cats[c] for c in categories if c in old_cats]
    cat_map = torch.zeros(init.model.config.n_categories, dtype=torch.long)  # old category index -> new
    cat_map[torch.tensor(cat_old)] = torch.tensor(cat_new)
    old_state, state = init.model.state_dict(), model.state_dict()
    by_item = {"item_emb.weight", "item_category", "item_pop"}
    with torch.no_grad():
        for k, v in old_state.items():
            if k in by_item:
                state[k][new_rows] = v[old_rows]
            elif k == "cat_emb.weight":
                state[k][cat_new] = v[cat_old]
            elif state[k].shape != v.shape:
                raise WarmStartError(
                    f"cannot warm-start: {k} has shape {tuple(v.shape)}, expected {tuple(state[k].shape)}"
                )
            else:
                state[k].copy_(v)
        state["item_category"][new_rows] = cat_map[state["item_category"][new_rows]]
    model.load_state_dict(state)
    return model


def _set_item_features(
    model: SessionAwareRanker, item_ids: Sequence[str], catalog: ItemCatalog, categories: Sequence[str], counts: Counter
) -> None:
    import torch

    cat_index = {c: i + 1 for i, c in enumerate(categories)}
    cats = [0] + [cat_index.get(c, 0) for c in catalog.categories_of(item_ids[1:])]
    pop = popularity_buckets(np.array([0] + [counts.get(i, 0) for i in item_ids[1:]]), model.config.n_pop_buckets)
    model.item_category.copy_(torch.tensor(cats))
    model.item_pop.copy_(torch.from_numpy(pop))


# --------------------------------------------------------------------------- loop


def _seen(batch: dict[str, torch.Tensor], sel: torch.Tensor, cands: torch.Tensor, ex: TrainingWindows, n_items: int):
    """(M, C) bool: the ranker's `seen` over the user's history up to the example's prefix (all of it, not
    only the window: serving passes the whole known history). That history is the items before the window
    (one per window, shared by its examples) plus the window's items up to the prefix."""
    import torch

    from reco.models.ranker import seen

    w = batch["w"]  # (B, T); w[b, j] is item offset[b] + j of the user's sequence
    B, T = w.shape
    offsets = batch["o"].tolist()
    before = np.zeros((B, max([1, *offsets])), dtype=np.int64)
    for b, (u, o) in enumerate(zip(batch["u"].tolist(), offsets, strict=True)):
        before[b, :o] = ex.sequences[u][:o]
    grid = torch.zeros(B, T, cands.size(1), dtype=cands.dtype)  # each window's candidates, one row per window
    grid[sel] = cands
    earlier = seen(grid.flatten(1), torch.from_numpy(before), n_items).view(B, T, -1)[sel]
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # [t, j]: item j is in prefix t
    prefix = w.unsqueeze(1).expand(B, T, T).masked_fill(~causal, 0)[sel]  # (M, T)
    return earlier | seen(cands, prefix, n_items)


def _batch_loss(
    model: SessionAwareRanker,
    batch: dict[str, torch.Tensor],
    cfg: TrainConfig,
    gen: torch.Generator,
    ex: TrainingWindows,
):
    import torch
    import torch.nn.functional as F

    from reco.models.ranker import sampled_softmax_loss

    x, y = batch["w"], batch["t"]  # (B, T)
    states = model.encoder.all_prefixes(model.drop(model.item_emb(x)), x > 0)  # (B, T, 2H)
    sel = y > 0
    q = model.to_query(states[sel])  # (M, d)
    target = y[sel]  # (M,)
    full = model.retrieval_logits(q)  # (M, N)
    loss_retrieval = F.cross_entropy(full, target)
    with torch.no_grad():  # proposal: retrieval softmax mixed with uniform (covers every item)
        uniform = torch.full_like(full, 1.0 / (full.size(1) - 1))
        uniform[:, 0] = 0.0
        proposal = cfg.proposal_mix * full.softmax(-1) + (1 - cfg.proposal_mix) * uniform
        neg = torch.multinomial(proposal, cfg.n_negatives, replacement=True, generator=gen)  # (M, S)
    cands = torch.cat([target[:, None], neg], dim=1)  # (M, C), positive first
    log_q = proposal.gather(1, cands).log()  # logQ correction: unbiased for the full softmax
    seen = _seen(batch, sel, cands, ex, model.config.n_items)
    item_part = model.item_features(torch.arange(model.config.n_items))[cands]  # item-only part once per item
    logits = model.score_candidates(q, cands, seen, batch["p"][sel], batch["d"][sel], item_part=item_part) - log_q
    clash = cands == target[:, None]
    clash[:, 0] = False  # a random negative that happens to be the target is not a negative
    loss_ranker = sampled_softmax_loss(logits.masked_fill(clash, float("-inf")))
    return loss_retrieval + loss_ranker, len(target)


def train(
    events: pd.DataFrame,
    catalog: ItemCatalog,
    config: TrainConfig | None = None,
    init: ModelBundle | None = None,
    progress: bool = True,
    validation: tuple[Sequence[Sequence[str]], Sequence[str]] | None = None,
) -> TrainResult:
    """Train on `events` (user_id, item_id, ts; page_type/device optional; impressions and repeated
    event_ids are dropped: see `interactions`). With `validation`
    (sessions, next items), every epoch is scored through the served path and the best epoch by
    validation NDCG@10 is kept (early stop after `patience` epochs without improvement)."""
    import torch

    cfg = config or TrainConfig()
    events = interactions(events)
    item_ids = vocabulary(catalog, events)
    categories = catalog.categories
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
        try:
            model = _new_model(cfg, len(item_ids), len(categories) + 1)
            if init is not None:
                model = warm_start(init, model, item_ids, categories)
            _set_item_features(model, item_ids, catalog, categories, Counter(events["item_id"].astype(str)))
            ex = build_examples(
                events, item_ids, cfg.max_session_len, cfg.window_stride, model.config.page_types, model.config.devices
            )
            history = _fit(model, ex, cfg, item_ids, catalog, categories, validation, progress)
        finally:
            torch.set_num_threads(threads)
    best = next(h for h in reversed(history) if "_state" in h)  # the best (or, without validation, last) epoch
    model.load_state_dict(best.pop("_state"))
    metrics = {
        "best_epoch": best.get("epoch"),
        "n_examples": ex.n_examples,
        "examples_per_s": float(np.mean([h["examples_per_s"] for h in history])),
        "epoch_s": float(np.mean([h["epoch_s"] for h in history])),
        "epoch_cpu_s": float(np.mean([h["epoch_cpu_s"] for h in history])),
        **{k: v for k, v in best.items() if k.startswith("valid_")},
    }
    meta = {
        "train_config": asdict(cfg),
        "categories": categories,
        "metrics": metrics,
        "n_events": len(events),
        "parent": init.meta.get("version") if init is not None else None,
        "warm_start": init is not None,
        # per-epoch curves (loss, validation metrics, speed): the registry logs them as MLflow metric steps
        "history": [{k: v for k, v in h.items() if k != "_state"} for h in history],
    }
    return TrainResult(ModelBundle(model.eval(), item_ids, catalog, meta), metrics, history)


def _fit(
    model, ex: TrainingWindows, cfg: TrainConfig, item_ids, catalog, categories, validation, progress
) -> list[dict]:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data = {"w": ex.windows, "t": ex.targets, "p": ex.page, "d": ex.device, "u": ex.user, "o": ex.offset}
    data = {k: torch.from_numpy(v) for k, v in data.items()}
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_batches = math.ceil(len(ex.windows) / cfg.batch_size)
    # cosine decay to lr/10 over the configured epochs: late epochs settle instead of oscillating
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * n_batches, eta_min=cfg.lr / 10)
    history: list[dict] = []
    best, stale = -1.0, 0
    columns = (TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("loss {task.fields[loss]:.3f}  {task.fields[info]}"))  # fmt: skip
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=cfg.epochs * n_batches, epoch=0, loss=0.0, info="")
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            t0, c0, total, seen = time.perf_counter(), time.process_time(), 0.0, 0
            for b in np.array_split(rng.permutation(len(ex.windows)), n_batches):
                batch = {k: v[torch.from_numpy(b)] for k, v in data.items()}
                loss, n = _batch_loss(model, batch, cfg, gen, ex)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                total, seen = total + loss.item() * n, seen + n
                bar.update(task, advance=1, epoch=epoch, loss=total / seen)
            elapsed = time.perf_counter() - t0
            # CPU seconds (all threads) next to wall time: on a shared machine the wall figure is noisy
            cpu = time.process_time() - c0
            row: dict[str, Any] = {"epoch": epoch, "loss": total / seen, "epoch_s": elapsed, "epoch_cpu_s": cpu,
                                   "examples_per_s": seen / elapsed}  # fmt: skip
            if validation is not None:
                model.eval()
                bundle = ModelBundle(model, list(item_ids), catalog, {"categories": categories})
                valid = evaluate_bundle(bundle, validation[0], validation[1])["all"]
                row.update({f"valid_{k}": v for k, v in valid.items()})
                if valid["ndcg@10"] > best:
                    best, stale = valid["ndcg@10"], 0
                    for h in history:  # keep one copy: the best epoch's
                        h.pop("_state", None)
                    row["_state"] = copy.deepcopy(model.state_dict())
                else:
                    stale += 1
                bar.update(task, info=f"valid ndcg@10 {valid['ndcg@10']:.4f} (best {best:.4f})")
            history.append(row)
            log.info("epoch %s", {k: round(v, 4) for k, v in row.items() if k != "_state"})
            if validation is not None and stale >= cfg.patience:
                break
    if validation is None and history:
        history[-1]["_state"] = copy.deepcopy(model.state_dict())
    return history
