"""`SessionEncoder` and `SessionAwareRanker`: the seed's architecture with its bugs fixed.

The seed's shape is kept: a 2-layer GRU over the session's item embeddings, attention over positions,
and an MLP over [item features, session embedding] that scores each candidate. What changed and why:

- the seed built the GRU input width (128) apart from the item embedding width and never defined an
  item embedding table: here one table `item_emb` feeds both the encoder and the candidate features;
- the seed ended the MLP in `Sigmoid` and trained with BCE on the probability (saturating, and
  numerically worse than BCE-with-logits): `forward` returns **logits**; apply sigmoid/softmax only
  where a probability is needed;
- padding could leak: sessions are **right-padded** with item 0 (a zero, frozen embedding row) and
  the attention softmax masks padded positions, so padding never changes the output. The GRU runs
  left to right, so trailing padding cannot reach a valid position; left padding is NOT supported
  (it would run through the GRU before the real items) and `right_align` converts it;
- the session embedding is the attention-pooled state joined with the last GRU state (NARM's
  local + global reading of "attention over positions"), projected into item space, so that
  `<session, item>` is a retrieval score over the whole catalogue (tied input/output embeddings);
- the final score is that dot product plus the MLP's correction over the joined features
  (item embedding, category, popularity bucket, context, session embedding, their element-wise
  product, and whether the candidate is already in the history given: `seen`, below, the one
  definition every caller uses).

The MLP's first layer is a Linear over the concatenation, computed as a sum of per-part Linears
(identical maths) so that item-only and session-only parts are computed once, not per pair.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAGE_TYPES = ("home", "product", "category", "cart")
DEVICES = ("desktop", "mobile", "tablet")


@dataclass(frozen=True)
class RankerConfig:
    """Constructor arguments of `SessionAwareRanker` (JSON-able via `to_dict`)."""

    n_items: int  # vocabulary size including padding row 0
    n_categories: int  # including row 0 = unknown category
    item_dim: int = 64
    hidden: int = 128
    gru_layers: int = 2
    attn_dim: int = 64
    category_dim: int = 16
    n_pop_buckets: int = 12
    pop_dim: int = 8
    context_dim: int = 8
    mlp_dims: tuple[int, ...] = (64, 32)
    dropout: float = 0.25  # on the encoder's input embeddings
    mlp_dropout: float = 0.0  # between MLP layers (its inputs are per pair: dropout there is costly)
    gru_dropout: float = 0.1
    max_session_len: int = 50
    page_types: tuple[str, ...] = PAGE_TYPES  # index 0 of the context tables = unknown value
    devices: tuple[str, ...] = DEVICES

    def __post_init__(self) -> None:
        # Sequences arrive as JSON lists from configs and params: store tuples so that two configs that
        # mean the same compare equal (a warm start compares architectures).
        for name in ("mlp_dims", "page_types", "devices"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RankerConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown RankerConfig fields: {sorted(unknown)}")
        return cls(**d)

    def architecture(self) -> dict[str, Any]:
        """Everything but the vocabulary sizes: what must match for a warm start."""
        d = self.to_dict()
        d.pop("n_items")
        d.pop("n_categories")
        return d


_SCRATCH = threading.local()


def seen(candidates: Any, history: Any, n_items: int) -> Any:
    """THE "already seen" input of the ranker, for every caller: candidate row c is seen when c > 0 and c
    occurs among the `history` rows, the user's history as the caller knows it (training: every earlier
    item of the user; evaluation: the whole history given; serving: the session rows it read), not only the
    encoder's window. Rows 0 (padding / unknown) are never seen and never make anything seen.

    candidates (..., C) and history (..., H) torch tensors -> (..., C) bool; or both 1-D numpy arrays (one
    session: the serving twin's path, a lookup of about 3 us in a per-thread table). Rows < `n_items`.

    >>> seen(torch.tensor([[3, 4, 0]]), torch.tensor([[4, 0]]), 5).tolist()
    [[False, True, False]]
    >>> seen(np.array([3, 4, 0]), np.array([4, 0]), 5).tolist()
    [False, True, False]
    """
    if isinstance(history, np.ndarray):
        # This thread's table, kept all False between calls: only the history's rows are set, then reset, so
        # a request's work is O(its rows), not O(n_items) (a fresh table per request: 34 us at 1M items).
        table = getattr(_SCRATCH, "table", None)
        if table is None or len(table) < n_items:
            table = _SCRATCH.table = np.zeros(n_items, dtype=bool)
        try:
            table[history] = True
            table[0] = False
            return table[candidates]
        finally:
            table[history] = False
    table = torch.zeros(*history.shape[:-1], n_items, dtype=torch.bool, device=history.device)
    table.scatter_(-1, history, True)[..., 0] = False
    return table.gather(-1, candidates)


def right_align(items: torch.Tensor) -> torch.Tensor:
    """Move left padding (0s) to the right, keeping item order: (B, L) -> (B, L).

    >>> right_align(torch.tensor([[0, 0, 5, 7], [3, 0, 4, 0]])).tolist()
    [[5, 7, 0, 0], [3, 4, 0, 0]]
    """
    # Stable sort on "is padding" keeps the relative order of the real items.
    order = torch.sort((items == 0).to(torch.int8), dim=1, stable=True).indices
    return torch.gather(items, 1, order)


class SessionEncoder(nn.Module):
    """2-layer GRU + attention over positions. Input is right-padded (padding at the end)."""

    def __init__(self, in_dim: int, hidden: int, layers: int, attn_dim: int, dropout: float) -> None:
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0)
        self.attention = nn.Sequential(nn.Linear(hidden, attn_dim), nn.Tanh(), nn.Linear(attn_dim, 1, bias=False))
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, in_dim), mask (B, L) True = real item -> (session (B, 2*hidden), attention (B, L))."""
        h, _ = self.gru(x)  # (B, L, H); trailing padding cannot reach earlier positions
        a = self.attention(h).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(dim=1)  # (B, L)
        a = torch.nan_to_num(a)  # an empty session (cold start) is all -inf -> zero weights, not NaN
        local = torch.bmm(a.unsqueeze(1), h).squeeze(1)  # (B, H)
        last = mask.sum(1).clamp(min=1) - 1  # index of the last real item
        glob = h[torch.arange(h.size(0)), last]  # (B, H)
        return torch.cat([local, glob], dim=-1), a

    def all_prefixes(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The session embedding of every prefix at once (training): (B, T, in) -> (B, T, 2*hidden).

        Row t equals `forward` on the first t+1 items: the GRU is causal and the attention is a
        causally masked softmax of the same per-position scores.
        """
        h, _ = self.gru(x)  # (B, T, H)
        s = self.attention(h).squeeze(-1)  # (B, T)
        T = x.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # [t, j]: j <= t
        allowed = causal.unsqueeze(0) & mask.unsqueeze(1)  # (B, T, T)
        a = s.unsqueeze(1).expand(-1, T, -1).masked_fill(~allowed, float("-inf"))
        a = torch.nan_to_num(a.softmax(dim=-1))  # rows of padded t are all -inf -> 0
        return torch.cat([torch.bmm(a, h), h], dim=-1)  # (B, T, 2H)


class SessionAwareRanker(nn.Module):
    """Scores candidate items for a session (and a page/device context). Outputs logits."""

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        c = self.config = config
        d = c.item_dim
        self.item_emb = nn.Embedding(c.n_items, d, padding_idx=0)
        self.cat_emb = nn.Embedding(c.n_categories, c.category_dim)
        self.pop_emb = nn.Embedding(c.n_pop_buckets, c.pop_dim)
        self.page_emb = nn.Embedding(len(c.page_types) + 1, c.context_dim)
        self.device_emb = nn.Embedding(len(c.devices) + 1, c.context_dim)
        # Item side features are data, not weights: they travel in the state_dict as buffers.
        self.register_buffer("item_category", torch.zeros(c.n_items, dtype=torch.long))
        self.register_buffer("item_pop", torch.zeros(c.n_items, dtype=torch.long))
        self.drop = nn.Dropout(c.dropout)
        self.encoder = SessionEncoder(d, c.hidden, c.gru_layers, c.attn_dim, c.gru_dropout)
        self.to_query = nn.Linear(self.encoder.out_dim, d)  # session embedding in item space
        m = c.mlp_dims[0]
        self.mlp_item = nn.Linear(d + c.category_dim + c.pop_dim, m)  # per item
        self.mlp_session = nn.Linear(d + 2 * c.context_dim, m, bias=False)  # per session
        self.mlp_pair = nn.Linear(d + 1, m, bias=False)  # per (session, item): product + "seen"
        layers: list[nn.Module] = []
        for a, b in zip(c.mlp_dims, c.mlp_dims[1:], strict=False):
            layers += [nn.ReLU(), nn.Dropout(c.mlp_dropout), nn.Linear(a, b)]
        self.mlp = nn.Sequential(*layers, nn.ReLU(), nn.Linear(c.mlp_dims[-1], 1))
        nn.init.normal_(self.item_emb.weight, std=0.05)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, session: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """session (B, L) right-padded item rows -> (query (B, d), attention (B, L))."""
        mask = session > 0
        state, attn = self.encoder(self.drop(self.item_emb(session)), mask)
        return self.to_query(state), attn

    def item_features(self, items: torch.Tensor) -> torch.Tensor:
        """First-layer MLP contribution of the item-only features: (...) -> (..., m)."""
        parts = [self.item_emb(items), self.cat_emb(self.item_category[items]), self.pop_emb(self.item_pop[items])]
        return self.mlp_item(torch.cat(parts, dim=-1))

    def context_index(self, page_type: str, device: str) -> tuple[int, int]:
        c = self.config
        page = c.page_types.index(page_type) + 1 if page_type in c.page_types else 0
        dev = c.devices.index(device) + 1 if device in c.devices else 0
        return page, dev

    def score_candidates(
        self,
        query: torch.Tensor,
        candidates: torch.Tensor,
        seen: torch.Tensor,
        page: torch.Tensor,
        device: torch.Tensor,
        item_part: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (B, d), candidates (B, C), seen (B, C) bool, page/device (B,) -> logits (B, C).

        `item_part` (B, C, m) or (C, m) may be passed precomputed (it depends on the candidates only).
        """
        e = self.item_emb(candidates)  # (B, C, d)
        dot = (e * query.unsqueeze(1)).sum(-1)  # (B, C) retrieval score
        sess = self.mlp_session(torch.cat([query, self.page_emb(page), self.device_emb(device)], -1))  # (B, m)
        pair = self.mlp_pair(torch.cat([e * query.unsqueeze(1), seen.unsqueeze(-1).to(e.dtype)], -1))  # (B, C, m)
        item = self.item_features(candidates) if item_part is None else item_part
        return dot + self.mlp(item + sess.unsqueeze(1) + pair).squeeze(-1)  # (B, C)

    def forward(
        self,
        session: torch.Tensor,
        candidates: torch.Tensor,
        page: torch.Tensor,
        device: torch.Tensor,
        history: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """THE scoring function (serving's `FrozenScorer` is its numpy twin, tested equal).

        session (B, L) right-padded encoder input; candidates (B, C), or (C,) shared by every session (its
        item-only features then computed once); page/device (B,); history (B, H) the rows that make a
        candidate `seen` (default: the session) -> (logits (B, C), attention (B, L)).
        """
        query, attn = self.encode(session)
        item_part = self.item_features(candidates) if candidates.dim() == 1 else None
        candidates = candidates.expand(len(session), -1)
        flag = seen(candidates, session if history is None else history, self.config.n_items)
        return self.score_candidates(query, candidates, flag, page, device, item_part), attn

    def retrieval_logits(self, query: torch.Tensor) -> torch.Tensor:
        """Dot product with every item: (..., d) -> (..., n_items); padding row gets -inf."""
        logits = query @ self.item_emb.weight.T
        return logits.index_fill(-1, torch.tensor([0], device=logits.device), float("-inf"))


def sampled_softmax_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the positive in column 0: (M, C) -> scalar."""
    return F.cross_entropy(logits, torch.zeros(logits.size(0), dtype=torch.long, device=logits.device))
