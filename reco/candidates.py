"""Candidate generation: several cheap sources, run concurrently, each under its own time budget.

Sources (`Source`):

* `session_similar`: items whose embedding is closest (cosine) to any item of the current session;
  the session item that produced the best similarity is kept as the candidate's `anchor` (it names the
  item in "Because you viewed <title>").
* `context_similar`: on product pages, the items closest to the page's item.
* `trending`: the trending counters kept in Redis.
* `popular`: an in-process list computed once per model bundle, so that it answers with Redis down.

`EmbeddingIndex` holds the row-normalised embedding matrix once per model (built off the request
path, when the model is loaded) so that a lookup is a single matrix product.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from enum import StrEnum
from time import monotonic

import numpy as np

log = logging.getLogger(__name__)

PAD = "<pad>"


class Source(StrEnum):
    session_similar = "session_similar"
    context_similar = "context_similar"
    trending = "trending"
    popular = "popular"


#: Merge order when one item comes from several sources: the more specific source names it.
SOURCE_PRIORITY: tuple[Source, ...] = (
    Source.context_similar,
    Source.session_similar,
    Source.trending,
    Source.popular,
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One retrieved item. `score` is the source's own retrieval score (cosine, count, popularity)."""

    item_id: str
    source: Source
    score: float
    anchor: str | None = None  # the session/context item that led here (similarity sources only)


class EmbeddingIndex:
    """Cosine nearest neighbours over a fixed item embedding matrix.

    Rows are aligned with `item_ids`; a `<pad>` row and all-zero rows are never returned.

    >>> emb = np.array([[0, 0], [1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    >>> idx = EmbeddingIndex(["<pad>", "a", "b", "c"], emb)
    >>> [(c.item_id, c.anchor) for c in idx.similar(["a"], k=2)]
    [('b', 'a'), ('c', 'a')]
    >>> "a" in idx, "<pad>" in idx, len(idx)
    (True, False, 3)
    """

    def __init__(self, item_ids: Sequence[str], embeddings: np.ndarray) -> None:
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(item_ids):
            raise ValueError(f"embeddings shape {emb.shape} does not match {len(item_ids)} item ids")
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        self._unit = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
        self._ids = list(item_ids)
        self._row = {iid: i for i, iid in enumerate(self._ids) if iid != PAD}
        # Rows that must never be returned: padding and items without an embedding.
        self._invalid = (norms[:, 0] == 0) | np.array([iid == PAD for iid in self._ids])

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    def __len__(self) -> int:
        return len(self._row)

    def rows(self, item_ids: Iterable[str]) -> list[int]:
        """Matrix rows of the known ids (unknown ids are skipped)."""
        return [r for iid in item_ids if (r := self._row.get(iid)) is not None]

    def similarity(self, a_ids: Sequence[str], b_ids: Sequence[str]) -> np.ndarray:
        """Cosine similarity matrix (len(a), len(b)); unknown ids get all-zero rows/columns."""
        a = np.array([self._row.get(i, -1) for i in a_ids], dtype=np.int64)
        b = np.array([self._row.get(i, -1) for i in b_ids], dtype=np.int64)
        sims = self._unit[np.maximum(a, 0)] @ self._unit[np.maximum(b, 0)].T
        sims[a < 0, :] = 0.0
        sims[:, b < 0] = 0.0
        return sims

    def similar(
        self, query_ids: Sequence[str], k: int, exclude: Collection[str] = (), source: Source = Source.session_similar
    ) -> list[Candidate]:
        """The `k` items most similar to any query item (max over the queries), best first."""
        q = self.rows(query_ids)
        if not q or k <= 0:
            return []
        sims = self._unit @ self._unit[q].T  # (n_items, n_query)
        best_q = sims.argmax(axis=1)
        best = sims[np.arange(len(sims)), best_q]
        best[self._invalid] = -np.inf
        best[q] = -np.inf
        for iid in exclude:
            if (r := self._row.get(iid)) is not None:
                best[r] = -np.inf
        k = min(k, int(np.isfinite(best).sum()))
        if k == 0:
            return []
        top = np.argpartition(-best, k - 1)[:k]
        top = top[np.argsort(-best[top], kind="stable")]
        return [Candidate(self._ids[r], source, float(best[r]), self._ids[q[best_q[r]]]) for r in top]


class PopularIndex:
    """Most popular items overall and per category, computed once (no I/O at request time).

    >>> pop = PopularIndex({"a": 5, "b": 9, "c": 1}, {"a": "Drama", "b": "Comedy", "c": "Drama"})
    >>> [c.item_id for c in pop.top(2)], [c.item_id for c in pop.top(5, exclude={"b"})]
    (['b', 'a'], ['a', 'c'])
    >>> [c.item_id for c in pop.top_in("Drama", 5)]
    ['a', 'c']
    """

    def __init__(self, counts: Mapping[str, float], category_of: Mapping[str, str]) -> None:
        # Stable order: count descending, then item id, so equal counts never reshuffle between loads.
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        top = ranked[0][1] if ranked and ranked[0][1] > 0 else 1.0
        self._ranked = [(iid, float(c) / top) for iid, c in ranked]
        self._by_cat: dict[str, list[tuple[str, float]]] = {}
        self._top: dict[int, list[Candidate]] = {}
        for iid, score in self._ranked:
            self._by_cat.setdefault(category_of.get(iid, ""), []).append((iid, score))

    def __len__(self) -> int:
        return len(self._ranked)

    def top(self, n: int, exclude: Collection[str] = ()) -> list[Candidate]:
        if not exclude:  # the request path: one list per size, built once (candidates are immutable)
            cached = self._top.get(n)
            if cached is None:
                cached = self._top[n] = _take(self._ranked, n, ())
            return list(cached)
        return _take(self._ranked, n, exclude)

    def top_in(self, category: str, n: int, exclude: Collection[str] = ()) -> list[Candidate]:
        return _take(self._by_cat.get(category, []), n, exclude)


def _take(ranked: list[tuple[str, float]], n: int, exclude: Collection[str]) -> list[Candidate]:
    out: list[Candidate] = []
    for iid, score in ranked:
        if len(out) >= n:
            break
        if iid not in exclude:
            out.append(Candidate(iid, Source.popular, score))
    return out


@dataclass(frozen=True)
class CandidateConfig:
    """Per-source sizes, the per-source time budget and the cap on the merged list."""

    session_k: int = 300
    context_k: int = 100
    trending_k: int = 100
    popular_k: int = 500
    max_candidates: int = 500
    source_timeout_s: float = 0.05


@dataclass
class CandidateResult:
    candidates: list[Candidate]
    per_source: dict[str, int] = field(default_factory=dict)  # merged count by winning source
    failed: list[str] = field(default_factory=list)  # sources that errored or ran past their budget


#: An in-process source: a zero-argument callable returning candidates.
SourceFn = Callable[[], list[Candidate]]


def gather(
    sources: Mapping[Source, SourceFn | Future[list[Candidate]]],
    fallback: SourceFn,
    *,
    config: CandidateConfig,
    exclude: Collection[str] = (),
    valid: Callable[[str], bool] | None = None,
) -> CandidateResult:
    """Collect every source, then merge.

    A source is either a `Future` already running elsewhere (I/O: Redis), waited for under
    `config.source_timeout_s` counted from this call, or a callable run inline (CPU-only numpy work,
    which gains nothing from a thread hop). A source that raises or runs late is left out and named in
    `failed`; it never fails the request. `fallback` (the in-process popular list) fills up to
    `config.max_candidates`. Items in `exclude` or rejected by `valid` are dropped.
    """
    deadline = monotonic() + config.source_timeout_s
    results: dict[Source, list[Candidate]] = {}
    failed: list[str] = []
    # Inline sources first: they overlap with the I/O the futures are waiting on.
    ordered = sorted(sources.items(), key=lambda kv: isinstance(kv[1], Future))
    for name, src in ordered:
        try:
            if isinstance(src, Future):
                results[name] = src.result(timeout=max(0.0, deadline - monotonic()))
            else:
                results[name] = src()
        except FutureTimeout:
            src.cancel()
            failed.append(str(name))
            log.warning("candidate source %s ran past %.0f ms", name, config.source_timeout_s * 1000)
        except Exception as exc:  # a broken source degrades the answer, never fails it
            failed.append(str(name))
            log.warning("candidate source %s failed: %s", name, exc)
    results[Source.popular] = fallback()
    merged = merge(results, config.max_candidates, exclude=exclude, valid=valid)
    per_source: dict[str, int] = {}
    for c in merged:
        per_source[str(c.source)] = per_source.get(str(c.source), 0) + 1
    return CandidateResult(merged, per_source, failed)


def merge(
    results: Mapping[Source, list[Candidate]],
    limit: int,
    *,
    exclude: Collection[str] = (),
    valid: Callable[[str], bool] | None = None,
) -> list[Candidate]:
    """Dedup by item id (the first source in `SOURCE_PRIORITY` keeps the item), cap at `limit`.

    >>> a = Candidate("x", Source.trending, 3.0)
    >>> b = Candidate("x", Source.session_similar, 0.9, anchor="s")
    >>> [(c.item_id, c.source) for c in merge({Source.trending: [a], Source.session_similar: [b]}, 10)]
    [('x', <Source.session_similar: 'session_similar'>)]
    """
    seen: set[str] = set(exclude)
    out: list[Candidate] = []
    for source in SOURCE_PRIORITY:
        for c in results.get(source, ()):
            if len(out) >= limit:
                return out
            if c.item_id in seen or (valid is not None and not valid(c.item_id)):
                continue
            seen.add(c.item_id)
            out.append(c)
    return out


def trending_candidates(scores: Sequence[tuple[str, float]]) -> list[Candidate]:
    """Redis trending `(item_id, score)` pairs (best first) -> candidates."""
    return [Candidate(str(iid), Source.trending, float(s)) for iid, s in scores]
