"""Candidate generation: several cheap sources, run concurrently, each under its own time budget.

Sources (`Source`):

* `session_similar`: items whose embedding is closest (cosine) to any item of the current session;
  the session item that produced the best similarity is kept as the candidate's `anchor` (it names the
  item in "Because you viewed <title>").
* `context_similar`: on product pages, the items closest to the page's item.
* `trending`: the trending counters kept in Redis.
* `popular`: an in-process list computed once per model bundle, so that it answers with Redis down
  (`reco.ranking.popular.PopularIndex`).
* `new_items`: catalogue items the model was not trained on, least shown first (`reco.ranking.cold_start`).
* `session_query` (`ranker_rows`): the items with the highest retrieval score `<session query, item>` of the
  served model itself (the query the scorer computes anyway, remembered), exact below the ANN threshold, the
  ANN above. With `CandidateConfig.query_pool` > 0, the ranker's own full score over a pool of that many
  items instead (the whole catalogue when it is no larger, else the retrieval score's best); the scorer
  remembers the pool's scores and the ranking gathers them. Off by default: on MovieLens it served lists of
  the same quality for 1.4-1.6x the pipeline's CPU (docs/benchmarks.md, "Quality of the served list").

`EmbeddingIndex` holds the row-normalised embedding matrix once per model (built off the request
path, when the model is loaded) so that a lookup is a single matrix product; above `ANN_THRESHOLD` items
it searches an approximate index instead (`reco.ranking.ann`, built at load too).

`gather` runs the sources on an executor under one deadline (`CandidateConfig.source_timeout_s`): a slow
source is cut there and the request goes on without its candidates.

The request path stays in the model's embedding-row space: each source answers a `RowList` (rows and
anchor rows as int arrays) and `merge` dedups them in numpy, touching those rows only (of a per-thread
mask kept between requests), so no per-candidate Python object is built for the ~900 items the sources
return (that cost more than the model's forward pass).
`Candidate` is the object view, for callers outside the request path.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import repeat
from time import monotonic
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from reco.ranking.ann import AnnIndex

log = logging.getLogger(__name__)

PAD = "<pad>"


class Source(StrEnum):
    session_similar = "session_similar"
    context_similar = "context_similar"
    trending = "trending"
    popular = "popular"
    new_items = "new_items"
    session_query = "session_query"


#: Merge order when one item comes from several sources: the more specific source names it.
SOURCE_PRIORITY: tuple[Source, ...] = (
    Source.context_similar,
    Source.session_similar,
    Source.session_query,
    Source.trending,
    Source.new_items,
    Source.popular,
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One retrieved item. `score` is the source's own retrieval score (cosine, count, popularity)."""

    item_id: str
    source: Source
    score: float
    anchor: str | None = None  # the session/context item that led here (similarity sources only)


class RowList(NamedTuple):
    """One source's answer in embedding-row space, best first. Rows are distinct within one list."""

    rows: np.ndarray  # (k,) int64 rows of the model's item table
    anchors: np.ndarray  # (k,) int64 row of the item that led here; 0 = none

    @classmethod
    def of(cls, rows: Sequence[int] | np.ndarray) -> RowList:
        rows = np.asarray(rows, dtype=np.int64)
        return cls(rows, np.zeros(len(rows), dtype=np.int64))


#: Items above which the similarity sources search an ANN index (`reco.ranking.ann`) instead of all rows.
ANN_THRESHOLD = 20_000


class EmbeddingIndex:
    """Cosine nearest neighbours over a fixed item embedding matrix.

    Rows are aligned with `item_ids`; a `<pad>` row and all-zero rows are never returned. The request
    path works on rows (`row_list`, `similar_rows`); `similar` is the same search as `Candidate` objects.
    With more than `ann_threshold` items the search is approximate (`AnnIndex`, built here: off the
    request path); below it, exact.

    >>> emb = np.array([[0, 0], [1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    >>> idx = EmbeddingIndex(["<pad>", "a", "b", "c"], emb)
    >>> [(c.item_id, c.anchor) for c in idx.similar(["a"], k=2)]
    [('b', 'a'), ('c', 'a')]
    >>> "a" in idx, "<pad>" in idx, len(idx), idx.row_list(["c", "zz", "a"]).rows.tolist()
    (True, False, 3, [3, 1])
    """

    #: Searches remembered per index (see `similar_rows`): ~6 KB each at the default k = 300, ~6 MB in all.
    MEMO = 1024
    #: Bytes of per-session search state remembered (`_best`): 4 bytes an item, 6.7 KB a session at 1,682
    #: items, 80 KB at 20,000 (~400 sessions).
    STATE_BYTES = 32 << 20

    def __init__(self, item_ids: Sequence[str], embeddings: np.ndarray, *, ann_threshold: int | None = None) -> None:
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(item_ids):
            raise ValueError(f"embeddings shape {emb.shape} does not match {len(item_ids)} item ids")
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        self._unit = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
        self.ids: list[str] = list(item_ids)  # row -> item id
        self._row = {iid: i for i, iid in enumerate(self.ids) if iid != PAD}
        # Rows that must never be returned: padding and items without an embedding.
        self._invalid = (norms[:, 0] == 0) | np.array([iid == PAD for iid in self.ids])
        self.valid_rows = np.flatnonzero(~self._invalid)  # every row a search may return
        self.valid_rows.flags.writeable = False
        self._invalid_rows = np.flatnonzero(self._invalid)  # padding, rows without an embedding
        self._memo = functools.lru_cache(maxsize=self.MEMO)(self._similar_of_key)
        self._states: OrderedDict[bytes, np.ndarray] = OrderedDict()  # LRU, see `_best`
        self._state_bytes = 0
        self._state_lock = threading.Lock()
        threshold = ANN_THRESHOLD if ann_threshold is None else ann_threshold
        self.ann: AnnIndex | None = None
        if len(self._row) > threshold:
            from reco.ranking.ann import AnnIndex

            self.ann = AnnIndex(self._unit, np.flatnonzero(~self._invalid))
            # One query row's neighbours, remembered: a browsing session adds one row per request.
            self._row_memo = functools.lru_cache(maxsize=16 * self.MEMO)(self._ann_row)
            self._unit_t = np.zeros((emb.shape[1], 0), dtype=np.float32)  # not needed: saves a copy of the table
        else:
            self._unit_t = np.ascontiguousarray(self._unit.T)
        # The raw rows: `query_rows` ranks by the model's own dot product. The exact search reads them all on every
        # request: contiguous (a strided view of the scorer's item table took 393 vs 319 us at 20,000 items). Above
        # the threshold, where the ANN answers those searches, a view is kept as given: no copy (256 MB at 10^6).
        self._emb = emb if self.ann is not None else np.ascontiguousarray(emb)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    def with_rows(
        self, item_ids: Sequence[str], rows: np.ndarray, embeddings: np.ndarray, table: np.ndarray | None = None
    ) -> EmbeddingIndex:
        """A new index with item `rows` set to these embeddings (k, d): rows past the end append (contiguously,
        `item_ids` naming them), others are replaced (their ids unchanged). This index is unchanged (it may be
        serving). Same kind as this one: the exact matrix grows; the ANN keeps its trained cells and gets the
        new vectors added (`AnnIndex.with_rows`, no k-means), where a full build (at a model swap) trains anew.
        `table`, when given, is that whole updated embedding matrix, already held elsewhere (the updated scorer's
        `item_embeddings()`): read instead of built, and an ANN index keeps it as its raw rows, as `__init__` does.
        Cost: copies of the tables, O(catalogue) memory, no search structure rebuilt."""
        rows = np.asarray(rows, dtype=np.int64)
        n = len(self.ids)
        ids = [*self.ids, *item_ids]
        if len(rows) and rows.max() >= len(ids):
            raise ValueError("appended rows must follow the table contiguously")
        if table is None:
            emb = np.zeros((len(ids), self._emb.shape[1]), dtype=np.float32)
            emb[:n] = self._emb
            emb[rows] = embeddings
        else:
            emb = table
        out = EmbeddingIndex(ids, emb, ann_threshold=len(ids) + 1)  # the exact tables; the ANN is extended below
        if self.ann is not None:
            out.ann = self.ann.with_rows(out._unit, add=rows[~out._invalid[rows]], remove=rows[rows < n])
            out._row_memo = functools.lru_cache(maxsize=16 * self.MEMO)(out._ann_row)
            out._unit_t = np.zeros((emb.shape[1], 0), dtype=np.float32)
            out._emb = emb
        return out

    def __len__(self) -> int:
        return len(self._row)

    @property
    def n_rows(self) -> int:
        return len(self.ids)

    def row_of(self, item_id: str) -> int | None:
        """The item's row (None: not in this index)."""
        return self._row.get(item_id)

    def rows(self, item_ids: Iterable[str]) -> list[int]:
        """Matrix rows of the known ids (unknown ids are skipped)."""
        get = self._row.get
        return [r for iid in item_ids if (r := get(iid)) is not None]

    def row_array(self, item_ids: Collection[str]) -> np.ndarray:
        """Rows of the ids as an int64 array, unknown ids at row 0 (padding, never a candidate): the rules' drop
        list, ~500 ids a request, converted without a Python frame per id."""
        return np.fromiter(map(self._row.get, item_ids, repeat(0)), dtype=np.int64, count=len(item_ids))

    def row_list(self, item_ids: Iterable[str]) -> RowList:
        """A source list of the known ids, in the order given (unknown and repeated ids are skipped)."""
        return RowList.of(self.rows(dict.fromkeys(item_ids)))

    def similarity(self, a_ids: Sequence[str], b_ids: Sequence[str]) -> np.ndarray:
        """Cosine similarity matrix (len(a), len(b)); unknown ids get all-zero rows/columns."""
        a = np.array([self._row.get(i, -1) for i in a_ids], dtype=np.int64)
        b = np.array([self._row.get(i, -1) for i in b_ids], dtype=np.int64)
        sims = self._unit[np.maximum(a, 0)] @ self._unit[np.maximum(b, 0)].T
        sims[a < 0, :] = 0.0
        sims[:, b < 0] = 0.0
        return sims

    def similarity_rows(self, a_rows: Sequence[int], b_rows: Sequence[int]) -> np.ndarray:
        """`similarity` by rows (the request path has them); padding rows get zeros."""
        a, b = np.asarray(a_rows, dtype=np.int64), np.asarray(b_rows, dtype=np.int64)
        sims = self._unit[a] @ self._unit[b].T
        sims[self._invalid[a], :] = 0.0
        sims[:, self._invalid[b]] = 0.0
        return sims

    def similar_rows(
        self, query_rows: Sequence[int], k: int, exclude_rows: Sequence[int] = ()
    ) -> tuple[RowList, np.ndarray]:
        """The `k` rows most similar to any query row (max over the queries), best first, each with the
        query row behind it as anchor; plus their cosine similarities (read-only arrays).

        Without `exclude_rows` (the request path) the answer is remembered per (query rows, k): a session
        asks the same question on every request until its next event (pages, carousels, refreshes), and
        the search over the catalogue is the costly part. The index never changes, so neither do answers.
        Over a catalogue above `INCREMENTAL_ROWS` and below `GROWING` query rows, the exact search also
        remembers, per query rows, each item's best similarity (`_best`, 4 bytes an item): a browsing
        session's next query, the same rows plus a new one, computes the new row's similarities only; equal
        to that query searched in full within float rounding.
        """
        q = np.asarray(query_rows, dtype=np.int64)
        if not len(exclude_rows):
            return self._memo(q.tobytes(), k)
        return self._similar_rows(q, k, exclude_rows)

    def _similar_of_key(self, query: bytes, k: int) -> tuple[RowList, np.ndarray]:
        found, sims = self._similar_rows(np.frombuffer(query, dtype=np.int64), k, ())
        for a in (found.rows, found.anchors, sims):
            a.flags.writeable = False  # shared by every request that asks again
        return found, sims

    def _similar_rows(self, q: np.ndarray, k: int, exclude_rows: Sequence[int]) -> tuple[RowList, np.ndarray]:
        if not len(q) or k <= 0:
            return RowList.of([]), np.zeros(0)
        if self.ann is not None:
            return self._ann_similar(q, k, exclude_rows)
        # Each item's best similarity over the query rows: one product, or, over a larger catalogue, the
        # session's remembered best extended by its new rows (`_best`).
        remembered = len(q) < self.GROWING and self.n_rows > self.INCREMENTAL_ROWS
        sims = None if remembered else self._unit[q] @ self._unit_t  # (n_query, n_items)
        best = self._best(q).copy() if remembered else sims.max(axis=0)
        best[self._invalid_rows] = -np.inf
        best[q] = -np.inf
        best[np.asarray(exclude_rows, dtype=np.int64)] = -np.inf
        k = min(k, int(np.isfinite(best).sum()))
        if k == 0:
            return RowList.of([]), np.zeros(0)
        top = np.argpartition(-best, k - 1)[:k]
        top = top[np.argsort(-best[top], kind="stable")]
        # Anchor: the query row each found item is closest to (the first on a tie), for the k found only (an
        # anchor per catalogue item, kept with the remembered best, cost a new session numpy's argmax over the
        # rows of a (rows, catalogue) matrix: 80 us at 20 x 1,682).
        near = sims[:, top] if sims is not None else self._unit[q] @ self._unit[top].T
        return RowList(top, q[near.argmax(axis=0)]), best[top]

    #: Queries of fewer rows are remembered (`_best`): a session growing to the window the request path asks
    #: about (its last `recommend.MAX_SESSION` rows). Longer ones (the window, sliding) are searched in full.
    GROWING = 50
    #: Catalogues above this many rows remember sessions' best similarities (`_best`); below it the search in
    #: full is as cheap (selecting the k best dominates): a session growing 1 -> 20 views, median per search,
    #: 235 vs 227 us at 1,683 rows, 937 vs 361 us at 20,000 (docs/benchmarks.md, "Serving on realistic traffic").
    INCREMENTAL_ROWS = 5_000
    #: Query rows a remembered state may lack and still be extended (events between two requests).
    _EXTEND = 3

    def _best(self, q: np.ndarray) -> np.ndarray:
        """Per item, the best similarity over the query rows `q` (read-only), remembered (LRU, `STATE_BYTES` in
        all). A remembered state of `q` less its last rows (up to `_EXTEND`) is extended with their
        similarities only; else (a new session, a state forgotten) all rows are searched in one product. BLAS
        rounds a row of a matrix product differently with the batch's size, so a state grown one row at a time
        equals the one computed at once within float rounding (1e-6), not to the bit."""
        key = q.tobytes()
        with self._state_lock:
            for short in range(min(self._EXTEND, len(q) - 1) + 1):
                found = self._states.get(key[: len(key) - 8 * short])
                if found is not None:
                    self._states.move_to_end(key[: len(key) - 8 * short])
                    break
        if found is not None and short == 0:
            return found
        if found is None:
            best = (self._unit[q] @ self._unit_t).max(axis=0)
        else:
            best = np.maximum(found, (self._unit[q[len(q) - short :]] @ self._unit_t).max(axis=0))  # a new array
        best.flags.writeable = False
        with self._state_lock:
            if key not in self._states:
                self._states[key] = best
                self._state_bytes += best.nbytes
                while self._state_bytes > self.STATE_BYTES and len(self._states) > 1:
                    self._state_bytes -= self._states.popitem(last=False)[1].nbytes
        return best

    def query_rows(self, query: np.ndarray, k: int, exclude_rows: Sequence[int] = ()) -> RowList:
        """The `k` rows with the highest `<query, item>` (the model's retrieval score), best first, without
        `exclude_rows`; above the ANN threshold the ANN's cosine neighbours of the query (item norms ignored)."""
        exclude = np.asarray(exclude_rows, dtype=np.int64)
        if self.ann is not None:
            found, _ = self.ann.search(np.asarray(query, dtype=np.float32)[None, :], k + len(exclude) + 1)
            rows = found[0][found[0] > 0]
            return RowList.of(rows[_without(rows, exclude, self.n_rows)][:k])
        scores = self._emb @ np.asarray(query, dtype=np.float32)
        scores[self._invalid] = -np.inf
        scores[exclude] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        if k <= 0:
            return RowList.of([])
        top = np.argpartition(-scores, k - 1)[:k]
        return RowList.of(top[np.argsort(-scores[top], kind="stable")])

    def _ann_row(self, row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.ann is not None
        found, sims = self.ann.search(self._unit[row][None, :], k, items=True)  # an item's own vector
        keep = found[0] >= 0
        return found[0][keep], sims[0][keep]

    def _ann_similar(self, q: np.ndarray, k: int, exclude_rows: Sequence[int]) -> tuple[RowList, np.ndarray]:
        """`_similar_rows` over the ANN: each query row's neighbours (remembered per row), then the best
        similarity per item over the rows, as the exact search's max over the queries."""
        # Each query row contributes its share of the k (3k / rows, a power of two from 64), not k each: 20
        # rows x 300 was 6,000 rows to merge; 16 extra cover the query rows and exclusions found among a row's
        # neighbours. A row is searched once for the full k + 16 and remembered; a share is that answer's head
        # (an IVF top-m is the head of its top-(k + 16): same cells, same order). Searched at the share's size,
        # a growing session searched all its rows again each time the share changed (at 4, 8 and 15 rows):
        # 2.2 searches per request over a 20-view session instead of 1, the new row's.
        share = k if len(q) == 1 else min(k, max(64, 1 << int(np.ceil(np.log2(3 * k / len(q))))))
        parts = [(p[0][: share + 16], p[1][: share + 16]) for p in (self._row_memo(int(r), k + 16) for r in q.tolist())]
        if len(parts) == 1:  # a new session: one answer, distinct rows already best first
            rows, sims = parts[0]
            anchors = np.full(len(rows), q[0], dtype=np.int64)
        else:
            rows = np.concatenate([p[0] for p in parts])
            sims = np.concatenate([p[1] for p in parts])
            anchors = np.repeat(q, [len(p[0]) for p in parts])
        # The ANN holds valid rows only (built and extended over them): drop the query and excluded rows.
        keep = _without(rows, np.concatenate([q, np.asarray(exclude_rows, dtype=np.int64)]), self.n_rows)
        rows, sims, anchors = rows[keep], sims[keep], anchors[keep]
        if len(parts) == 1:
            return RowList(rows[:k], anchors[:k]), sims[:k].astype(np.float64)
        # Best first, each item at its best query row. Only the 2k best entries are sorted when they hold k
        # distinct items: an item outside them has every similarity below theirs, so the k best items are
        # among them (sorting the whole ~2,000-entry list twice was half this search's CPU); else all are.
        m = min(len(sims), 2 * k)
        head = np.sort(np.argpartition(-sims, m - 1)[:m]) if m < len(sims) else np.arange(len(sims))
        order = head[np.argsort(-sims[head], kind="stable")]  # ties: the earlier query row, as a full sort
        _, first = np.unique(rows[order], return_index=True)
        if len(first) < k and m < len(sims):
            order = np.argsort(-sims, kind="stable")
            _, first = np.unique(rows[order], return_index=True)
        pick = order[np.sort(first)[:k]]
        return RowList(rows[pick], anchors[pick]), sims[pick].astype(np.float64)

    def similar(
        self, query_ids: Sequence[str], k: int, exclude: Collection[str] = (), source: Source = Source.session_similar
    ) -> list[Candidate]:
        """`similar_rows` by item id, as candidates (score = cosine similarity)."""
        found, sims = self.similar_rows(self.rows(query_ids), k, self.rows(exclude))
        ids = self.ids
        return [
            Candidate(ids[r], source, float(s), ids[a])
            for r, a, s in zip(found.rows.tolist(), found.anchors.tolist(), sims.tolist(), strict=True)
        ]


@dataclass(frozen=True)
class CandidateConfig:
    """Per-source sizes, the per-source time budget and the cap on the merged list."""

    session_k: int = 300
    context_k: int = 100
    trending_k: int = 100
    popular_k: int = 500
    max_candidates: int = 500
    source_timeout_s: float = 0.05
    new_items_k: int = 20
    query_k: int = 300
    query_pool: int = 0  # > 0: `session_query` is the ranker's top over this many items (`ranker_rows`)


def ranker_rows(
    index: EmbeddingIndex,
    scorer: Any,
    session_rows: np.ndarray,
    config: CandidateConfig,
    page_type: str,
    device: str,
    exclude_rows: Sequence[int] = (),
) -> RowList:
    """The `session_query` source: the `config.query_k` items with the highest score of the ranker itself
    (`scorer.retrieval_scores`, the logits the page is ranked by), best first, without `exclude_rows`.

    `query_pool` 0 (the default) or a scorer without `retrieval_scores`: the retrieval score `<session query,
    item>` alone (`EmbeddingIndex.query_rows`: the ANN above its threshold). Otherwise the ranker's score,
    ~100x a dot product per item (its MLP), over a pool of at most `config.query_pool` items: every item when
    the catalogue is no larger (the served list then holds the full ranking's top), else the retrieval score's
    best (sub-linear in the catalogue above the ANN threshold). Measured on MovieLens-100k (docs/benchmarks.md):
    the same served NDCG@10 as the retrieval score alone, for 1.4x the pipeline's CPU, so it is off by default.
    """
    rows = np.asarray(session_rows, dtype=np.int64)
    exclude = np.asarray(exclude_rows, dtype=np.int64)
    retrieval = getattr(scorer, "retrieval_scores", None)
    if retrieval is None or config.query_pool <= 0:
        return index.query_rows(scorer.session_query(rows), config.query_k, exclude)
    if len(index) <= config.query_pool:
        pool = index.valid_rows
    else:
        pool = index.query_rows(scorer.session_query(rows), config.query_pool, exclude).rows
    scores = np.array(retrieval(rows, pool, page_type, device), dtype=np.float64)
    scores[~_without(pool, exclude, index.n_rows)] = -np.inf
    k = min(config.query_k, int(np.isfinite(scores).sum()))
    if k <= 0:
        return RowList.of([])
    top = np.argpartition(-scores, k - 1)[:k]
    return RowList.of(pool[top[np.argsort(-scores[top], kind="stable")]])


#: Source code (`CandidateResult.sources`) -> source.
SOURCES: tuple[Source, ...] = tuple(Source)
_CODE = {source: code for code, source in enumerate(SOURCES)}


@dataclass
class CandidateResult:
    """The merged candidates as parallel arrays (merge order), in the model's embedding-row space."""

    rows: np.ndarray  # (C,) int64 item rows
    sources: np.ndarray  # (C,) int8 codes into SOURCES: the source that keeps the item
    anchors: np.ndarray  # (C,) int64 row of the session/context item that led here; 0 = none
    per_source: dict[str, int] = field(default_factory=dict)  # merged count by winning source
    failed: list[str] = field(default_factory=list)  # sources that errored or ran past their budget

    def __len__(self) -> int:
        return len(self.rows)

    def candidates(self, item_ids: Sequence[str]) -> list[Candidate]:
        """As `Candidate` objects (`item_ids`: row -> id); score is not kept by the merge: 0.0."""
        return [
            Candidate(item_ids[r], SOURCES[s], 0.0, item_ids[a] if a else None)
            for r, s, a in zip(self.rows.tolist(), self.sources.tolist(), self.anchors.tolist(), strict=True)
        ]


#: A source: a zero-argument callable (in-process numpy work) or a Future (I/O running elsewhere).
SourceFn = Callable[[], RowList]


def gather(
    sources: Mapping[Source, SourceFn | Future[RowList]],
    fallback: SourceFn,
    *,
    config: CandidateConfig,
    n_rows: int,
    exclude: Sequence[int] = (),
    executor: Executor | None = None,
    blocked: np.ndarray | None = None,
    inline: Collection[Source] = (),
) -> CandidateResult:
    """Collect every source under one deadline, then merge.

    A source is a `Future` already running elsewhere (I/O) or a callable. With an `executor`, callables
    run there, all at once, and every source is waited for until `config.source_timeout_s` after this
    call: a source still running then is cut (its answer, when it comes, is dropped) and the request goes
    on. Sources named in `inline` (instant ones: a list already in memory) and every callable without an
    executor run on the calling thread. A source that raises or runs late is left out and named in
    `failed`; it never fails the request. `fallback` (the in-process popular list) fills up to
    `config.max_candidates`. Rows in `exclude`, rows set in `blocked` (unavailable items) and row 0
    (padding) are dropped; `n_rows` is the size of the model's item table.
    """
    deadline = monotonic() + config.source_timeout_s
    results: dict[Source, RowList] = {}
    failed: list[str] = []
    pending: dict[Source, SourceFn | Future[RowList]] = {}
    for name, src in sources.items():
        if executor is not None and callable(src) and name not in inline:
            pending[name] = executor.submit(src)
        else:
            pending[name] = src
    # Inline sources first: they overlap with the work the futures are doing.
    ordered = sorted(pending.items(), key=lambda kv: isinstance(kv[1], Future))
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
    merged = merge(results, config.max_candidates, n_rows=n_rows, exclude=exclude, blocked=blocked)
    merged.failed = failed
    return merged


def merge(
    results: Mapping[Source, RowList],
    limit: int,
    *,
    n_rows: int,
    exclude: Sequence[int] = (),
    blocked: np.ndarray | None = None,
) -> CandidateResult:
    """Dedup by row (the first source in `SOURCE_PRIORITY` keeps the item), cap at `limit`, in numpy.

    >>> session = RowList(np.array([1]), np.array([4]))  # item row 1, found from session item row 4
    >>> out = merge({Source.trending: RowList.of([3, 1]), Source.session_similar: session}, 10, n_rows=5)
    >>> out.rows.tolist(), [str(SOURCES[s]) for s in out.sources], out.anchors.tolist(), out.per_source
    ([1, 3], ['session_similar', 'trending'], [4, 0], {'session_similar': 1, 'trending': 1})
    """
    # The "taken" mask is this thread's, kept between requests and all False between them: only the rows the
    # sources returned are set and then reset, so a request's work is O(its candidates), not O(catalogue)
    # (a fresh catalogue-sized mask, and a copy of `blocked`, per request: 0.12 ms at 1M items, 3x this).
    taken = _scratch_mask(n_rows)
    marked = [np.zeros(1, dtype=np.int64), np.asarray(exclude, dtype=np.int64)]  # padding, excluded
    parts: list[tuple[np.ndarray, np.ndarray, int]] = []
    n = 0
    try:
        for m in marked:
            taken[m] = True
        for source in SOURCE_PRIORITY:
            found = results.get(source)
            if found is None or n >= limit:
                continue
            rows, anchors = found
            keep = ~taken[rows] if blocked is None else ~(taken[rows] | blocked[rows])
            rows, anchors = rows[keep][: limit - n], anchors[keep][: limit - n]
            taken[rows] = True
            marked.append(rows)
            parts.append((rows, anchors, _CODE[source]))
            n += len(rows)
    finally:
        for m in marked:
            taken[m] = False
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return CandidateResult(empty, np.zeros(0, dtype=np.int8), empty)
    return CandidateResult(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([np.full(len(p[0]), p[2], dtype=np.int8) for p in parts]),
        np.concatenate([p[1] for p in parts]),
        {str(SOURCES[code]): len(rows) for rows, _, code in parts if len(rows)},
    )


_SCRATCH = threading.local()


def _without(rows: np.ndarray, drop: np.ndarray, n_rows: int) -> np.ndarray:
    """Mask of `rows` not in `drop` (rows of a table of `n_rows`): this thread's scratch mask set at `drop`,
    read at `rows` and reset, O(len(rows) + len(drop)); `np.isin` sorts both: 26 vs 2.5 us for 1,600 rows."""
    if not len(drop):
        return np.ones(len(rows), dtype=bool)
    mask = _scratch_mask(n_rows)
    try:
        mask[drop] = True
        return ~mask[rows]
    finally:
        mask[drop] = False


def _scratch_mask(n_rows: int) -> np.ndarray:
    """This thread's all-False boolean mask of at least `n_rows` rows (callers reset what they set)."""
    mask = getattr(_SCRATCH, "mask", None)
    if mask is None or len(mask) < n_rows:
        mask = _SCRATCH.mask = np.zeros(n_rows, dtype=bool)
    return mask
