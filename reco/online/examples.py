"""Training examples rebuilt from what was served, as fixed-shape numpy columns, and the replay buffer.

An example is one labelled impression: the session items the request was ranked with (from the
request-context record), the served item, its position and logged propensity, and the label. Columns
are numpy arrays so that a mini-batch is built with one fancy-index per column (no per-example Python in
the training step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from reco.online.join import Labelled


@dataclass(slots=True)
class Examples:
    """Columns of `n` examples. `session[i, :lengths[i]]` are item indices (0 = padding, left-aligned)."""

    session: np.ndarray  # (n, L) int64
    lengths: np.ndarray  # (n,) int64
    items: np.ndarray  # (n,) int64
    positions: np.ndarray  # (n,) int64
    page: np.ndarray  # (n,) int64 page-type index (0 = unknown), as the model's context_index gives it
    device: np.ndarray  # (n,) int64 device index (0 = unknown)
    propensity: np.ndarray  # (n,) float32
    labels: np.ndarray  # (n,) float32
    base_logit: np.ndarray  # (n,) float32: the frozen base model's logit (holdout only; NaN elsewhere)
    tag: np.ndarray  # (n,) int64: the caller's sequence number (acknowledgement bookkeeping)

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def take(self, idx: np.ndarray | slice) -> Examples:
        return Examples(*(getattr(self, f)[idx] for f in _FIELDS))

    def with_width(self, width: int) -> Examples:
        """The same rows with the session matrix padded to `width` columns (an error if wider)."""
        have = self.session.shape[1]
        if have == width:
            return self
        if have > width:
            raise ValueError(f"sessions of width {have} exceed the learner's max_session {width}")
        session = np.zeros((len(self), width), np.int64)
        session[:, :have] = self.session
        return Examples(session, *(getattr(self, f) for f in _FIELDS[1:]))

    @staticmethod
    def zeros(n: int, max_session: int) -> Examples:
        """`n` all-zero rows (NaN base logits)."""
        ints = {f: np.zeros(n, np.int64) for f in ("lengths", "items", "positions", "page", "device", "tag")}
        floats = {f: np.zeros(n, np.float32) for f in ("propensity", "labels")}
        return Examples(
            np.zeros((n, max_session), np.int64), base_logit=np.full(n, np.nan, np.float32), **ints, **floats
        )

    @staticmethod
    def empty(max_session: int) -> Examples:
        return Examples.zeros(0, max_session)

    @staticmethod
    def concat(parts: Sequence[Examples]) -> Examples:
        return Examples(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = ("session", "lengths", "items", "positions", "page", "device", "propensity", "labels", "base_logit", "tag")


def encode(
    labelled: Sequence[Labelled],
    contexts: Mapping[str, Sequence[str]],
    index_of: Mapping[str, int],
    max_session: int,
    context_index: Callable[[str, str], tuple[int, int]] | None = None,
    min_session: int = 0,
) -> tuple[Examples, np.ndarray]:
    """Labelled impressions -> (examples, mask of the inputs kept).

    `contexts[request_id]` is the session the request was ranked with. Served items outside the model's
    vocabulary are dropped (no embedding row to learn), unknown session items are dropped from the
    session, and examples whose session has fewer than `min_session` known items are dropped (the ranker
    needs at least one). `context_index(page_type, device)` maps the request context to model indices.

    >>> from reco.online.join import Impression, Labelled
    >>> imp = Impression("r", "b", "A", 0.0, 2, 0.5, "1-0")
    >>> ex, kept = encode([Labelled(imp, 1)], {"r": ["a", "zz", "c"]}, {"a": 1, "b": 2, "c": 3}, 4, min_session=1)
    >>> ex.session.tolist(), ex.lengths.tolist(), ex.items.tolist(), ex.labels.tolist(), kept.tolist()
    ([[1, 3, 0, 0]], [2], [2], [1.0], [True])
    """
    n = len(labelled)
    items = np.fromiter((index_of.get(x.imp.item_id, -1) for x in labelled), np.int64, n)
    kept = items > 0
    session = np.zeros((n, max_session), np.int64)
    lengths = np.zeros(n, np.int64)
    for i, x in enumerate(labelled):
        if not kept[i]:
            continue
        ctx = contexts.get(x.imp.request_id, ())
        idx = [j for j in (index_of.get(s, 0) for s in ctx) if j > 0][-max_session:]
        session[i, : len(idx)] = idx
        lengths[i] = len(idx)
    kept &= lengths >= min_session
    ctx_of = context_index or (lambda page, device: (0, 0))
    ctx = np.array([ctx_of(x.imp.page_type, x.imp.device) for x in labelled], np.int64).reshape(n, 2)
    ex = Examples(
        session=session,
        lengths=lengths,
        items=items,
        positions=np.fromiter((x.imp.position for x in labelled), np.int64, n),
        page=ctx[:, 0],
        device=ctx[:, 1],
        propensity=np.fromiter((x.imp.propensity for x in labelled), np.float32, n),
        labels=np.fromiter((x.label for x in labelled), np.float32, n),
        base_logit=np.full(n, np.nan, np.float32),
        tag=np.zeros(n, np.int64),
    )
    return ex.take(kept), kept


class ReplayBuffer:
    """A bounded ring of examples; the oldest are overwritten. Sampling uses the buffer's own RNG.

    >>> buf = ReplayBuffer(capacity=3, max_session=2, seed=0)
    >>> for k in range(5):
    ...     row = Examples.zeros(1, 2)
    ...     row.items[:] = k + 1
    ...     buf.add(row)
    >>> len(buf), sorted(buf.all().items.tolist()), len(buf.sample(10))
    (3, [3, 4, 5], 3)
    """

    def __init__(self, capacity: int = 50_000, max_session: int = 20, seed: int | None = None):
        self.capacity = capacity
        self.max_session = max_session
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._data = Examples.zeros(capacity, max_session)
        self._n = 0
        self._head = 0

    def __len__(self) -> int:
        return self._n

    def add(self, ex: Examples) -> None:
        if len(ex) > self.capacity:
            ex = ex.take(slice(len(ex) - self.capacity, None))
        slots = (self._head + np.arange(len(ex))) % self.capacity
        for f in _FIELDS:
            getattr(self._data, f)[slots] = getattr(ex, f)
        self._head = int((self._head + len(ex)) % self.capacity)
        self._n = min(self.capacity, self._n + len(ex))

    def sample(self, k: int) -> Examples:
        if self._n == 0 or k <= 0:
            return Examples.empty(self.max_session)
        return self._data.take(self._rng.choice(self._n, size=min(k, self._n), replace=False))

    def all(self) -> Examples:
        return self._data.take(slice(0, self._n))
