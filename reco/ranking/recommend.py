"""The recommendation request pipeline, as a library (no HTTP here).

    assignment -> candidates (sources concurrently, per-source timeout) -> features (one Redis round trip)
    -> rank (the arm's model) -> business rules -> exploration -> explanations -> impression events

Everything with side effects is passed in: the Redis store, a model lookup per arm, the experiment
assignment and the exploration policy factory. A part that fails (Redis down, a slow source, an arm
without a model) degrades the answer and is named in `RecoResult.degraded`; it never fails the request.
Only "no model at all" is an error (`NoModelAvailable`), which the API maps to 503.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import monotonic, perf_counter
from typing import Any, NamedTuple, Protocol

import numpy as np

from reco.data.catalog import UNKNOWN_CATEGORY, ItemRecord
from reco.data.events import Event, EventType, PageType
from reco.ranking.candidates import (
    SOURCES,
    CandidateConfig,
    CandidateResult,
    EmbeddingIndex,
    PopularIndex,
    RowList,
    Source,
    SourceFn,
    gather,
)
from reco.ranking.cold_start import ColdItems, ColdStartConfig, ImpressionCounts, extend_bundle
from reco.ranking.explain import anchors_by_attention, reason
from reco.ranking.rules import RuleConfig, excluded_items, rule_positions
from reco.state.store import ImpressionRecord

log = logging.getLogger(__name__)

#: Longest session prefix fed to the encoder (the most recent items).
MAX_SESSION = 50


class NoModelAvailable(RuntimeError):
    """No arm has a model loaded yet (the API answers 503 until the model manager is ready)."""


# --- what the pipeline needs from its collaborators (structural, so tests pass small real objects) ---


class Store(Protocol):
    def request_context(
        self,
        user_id: str,
        session_id: str | None,
        item_ids: Sequence[str],
        arm: str,
        categories: Sequence[str],
        *,
        item_features: bool = True,
        trending_k: int = 0,
        profile: bool = True,
    ) -> Any: ...
    def log_request(
        self,
        request_id: str,
        user_id: str,
        arm: str,
        ts: datetime,
        impressions: Sequence[ImpressionRecord],
        session: Sequence[str],
    ) -> Any: ...


class Selection(Protocol):
    item: Any
    is_exploration: bool
    propensity: float


class Explorer(Protocol):
    def select(self, ranked: Sequence[Any], n: int) -> Sequence[Selection]: ...


class Ranked(NamedTuple):
    """A scored candidate. `category` feeds the diversity rule and Thompson sampling. (A tuple: 500 are
    built per request, and a frozen dataclass costs several times more to construct.)"""

    item_id: str
    score: float
    source: Source
    category: str
    anchor: str | None = None
    row: int = 0  # the item's row in the model's tables (0: not known)


class RankedList(Sequence[Ranked]):
    """The ranked candidates of one request as parallel arrays, in serving order; a `Ranked` is built
    only for the items read (the page and the exploration picks), not for all ~500 candidates.

    `scores` and `categories` are the columns Thompson sampling reads without touching the items.
    """

    def __init__(self, model: ServedModel, rows: np.ndarray, scores: np.ndarray, sources: np.ndarray,
                 anchors: np.ndarray) -> None:  # fmt: skip
        self._model = model
        self._rows, self._sources, self._anchors = rows.tolist(), sources.tolist(), anchors.tolist()
        self.scores = scores

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        ids, r, a = self._model.index.ids, self._rows[k], self._anchors[k]
        return Ranked(ids[r], float(self.scores[k]), SOURCES[self._sources[k]], self._model.row_category[r],
                      ids[a] if a else None, r)  # fmt: skip

    @property
    def categories(self) -> list[str]:
        cat = self._model.row_category
        return [cat[r] for r in self._rows]


@dataclass(frozen=True, slots=True)
class Greedy:
    """No exploration: the top `n`, each chosen with probability 1."""

    item: Ranked
    is_exploration: bool = False
    propensity: float = 1.0


class GreedyExplorer:
    """The policy for arms configured without exploration.

    >>> r = [Ranked("a", 0.9, Source.popular, "x"), Ranked("b", 0.5, Source.popular, "y")]
    >>> [(s.item.item_id, s.propensity) for s in GreedyExplorer().select(r, 1)]
    [('a', 1.0)]
    """

    def select(self, ranked: Sequence[Ranked], n: int) -> list[Greedy]:
        return [Greedy(r) for r in ranked[:n]]


class ArmPolicies:
    """One long-lived exploration policy per arm, built from the arm's `ExplorationConfig`.

    Epsilon-greedy keeps its decay state across requests (`set_interactions` adopts the shared count
    from the store); Thompson sampling takes the per-request Beta evidence read with the features.
    With no evidence (Redis down) Thompson samples its prior, still a valid policy with propensities.

    >>> from types import SimpleNamespace as S
    >>> pol = ArmPolicies(seed=0)
    >>> a = S(arm="c", exploration=S(strategy="none", rate=0.0))
    >>> type(pol.explorer(a, {})).__name__
    'GreedyExplorer'
    """

    def __init__(self, seed: int | None = None, max_per_category: int | None = None) -> None:
        self.seed = seed
        self.max_per_category = max_per_category  # the rules' cap, kept by exploration too (bandits docstring)
        self._eps: dict[str, Any] = {}
        self._ts: dict[str, Any] = {}

    def explorer(self, assignment: Any, thompson: Mapping[str, tuple[float, float]]) -> Explorer:
        from reco.ranking.bandits import EpsilonGreedy, ThompsonSampling

        cfg, arm, cap = assignment.exploration, assignment.arm, self.max_per_category
        if cfg.strategy == "epsilon_greedy" and cfg.rate > 0:
            if arm not in self._eps:
                self._eps[arm] = EpsilonGreedy(epsilon=cfg.rate, max_per_category=cap, seed=self.seed)
            return self._eps[arm]
        if cfg.strategy == "thompson" and cfg.rate > 0:
            if arm not in self._ts:
                self._ts[arm] = ThompsonSampling(weight=cfg.rate, max_per_category=cap, seed=self.seed)
            return _WithStats(self._ts[arm], thompson)
        return GreedyExplorer()

    def set_interactions(self, arm: str, n: int) -> None:
        if arm in self._eps:
            self._eps[arm].set_interactions(n)


@dataclass(frozen=True)
class _WithStats:
    policy: Any
    stats: Mapping[str, tuple[float, float]]

    def select(self, ranked: Sequence[Ranked], n: int) -> Sequence[Selection]:
        return self.policy.select(ranked, n, self.stats)


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version with what serving precomputes for it (built off the request path).

    Requests take a reference to one `ServedModel` at the start and use it to the end, so a hot swap
    (a new object put in place by the model manager) never changes the model under a running request.
    """

    bundle: Any  # reco.artifacts.bundle.ModelBundle
    version: str
    index: EmbeddingIndex
    scorer: Any  # reco.models.scorer.FrozenScorer of `bundle`
    popular_rows: RowList  # every item, most popular first, as the `popular` source answers it
    online_snapshot: int | None = None
    categories: tuple[str, ...] = ()  # every catalogue category (Thompson evidence is read for all)
    # Plain lookups for the request path (the catalogue is a DataFrame: ~0.1 ms per title lookup).
    title_of: Mapping[str, str] = field(default_factory=dict)
    row_category: Sequence[str] = ()  # embedding row -> category
    row_category_code: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # row -> code
    # The catalogue API's state when this model was built: rows of unavailable items (never served) and the
    # new items scored from content (`reco.ranking.cold_start`); `catalog_version` = the version read.
    blocked: np.ndarray | None = None
    cold: ColdItems | None = None
    catalog_version: int = 0

    @classmethod
    def build(
        cls,
        bundle: Any,
        version: str,
        *,
        popularity: Mapping[str, float] | None = None,
        online_snapshot: int | None = None,
        items: Mapping[str, ItemRecord] | None = None,
        catalog_version: int = 0,
        ann_threshold: int | None = None,
    ) -> ServedModel:
        """Precompute the normalised embedding matrix, the scorer's item table and the popular lists of `bundle`.

        `popularity` (item -> count) defaults to the bundle's `meta["popularity"]`, then to catalogue order.
        `items` (the catalogue API's records) adds the items `bundle` was not trained on, scored from their
        content, and blocks the unavailable ones; `bundle` itself is kept unchanged (online weight snapshots
        are loaded into it), the tables served are the extended ones.
        """
        served, cold = extend_bundle(bundle, items) if items else (bundle, None)
        emb = served.item_embeddings()
        emb = emb.detach().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb)
        index = EmbeddingIndex(list(served.item_ids), emb, ann_threshold=ann_threshold)
        catalog = served.catalog
        counts = popularity or (getattr(bundle, "meta", None) or {}).get("popularity")
        if not counts:
            ids = [i for i in bundle.item_ids if i in index]
            counts = {iid: float(len(ids) - k) for k, iid in enumerate(ids)}
        counts = {iid: c for iid, c in counts.items() if iid in index}
        ids = catalog.item_ids
        all_categories = dict(zip(ids, catalog.categories_of(ids), strict=True))
        popular = PopularIndex(counts, all_categories)  # its stable order: count descending, then item id
        titles = {iid: t for iid in ids if (t := catalog.title(iid)) is not None}
        row_category = [all_categories.get(iid, UNKNOWN_CATEGORY) for iid in index.ids]
        codes = {c: k for k, c in enumerate(dict.fromkeys(row_category))}
        blocked = None
        if items and any(not r.available for r in items.values()):
            blocked = np.zeros(index.n_rows, dtype=bool)
            blocked[index.rows(iid for iid, r in items.items() if not r.available)] = True
        return cls(
            bundle, str(version), index, served.frozen_scorer(), index.row_list(popular.item_ids),
            online_snapshot, tuple(catalog.categories), titles, row_category,
            np.array([codes[c] for c in row_category], dtype=np.int32), blocked, cold, catalog_version,
        )  # fmt: skip


@dataclass(frozen=True)
class RecoRequest:
    user_id: str
    page_type: PageType = PageType.home
    context_item_id: str | None = None
    session_id: str | None = None
    device: str = "unknown"
    limit: int = 20
    ts: datetime | None = None  # event time of the served impressions; None = now (simulations set it)


class RecoItem(NamedTuple):
    item_id: str
    score: float
    reason: str
    source: str
    position: int
    is_exploration: bool
    propensity: float
    category: str = "unknown"


@dataclass
class RecoResult:
    request_id: str
    user_id: str
    items: list[RecoItem]
    model_version: str
    online_snapshot: int | None
    latency_ms: float
    experiment_group: str
    alias: str
    degraded: list[str]
    candidates_per_source: dict[str, int] = field(default_factory=dict)
    # `recommend(..., defer_log=True)`: starts the impression write; the caller runs it exactly once (the API:
    # after the response is sent). None when there is nothing to write.
    start_log: Callable[[], None] | None = None


@dataclass(frozen=True)
class PipelineConfig:
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    rules: RuleConfig = field(default_factory=RuleConfig)
    features_timeout_s: float = 0.05
    # True: read the features on the request thread (no thread hop; the store's own socket timeout must
    # then be the budget: `reco.state.store.connect(url, socket_timeout=features_timeout_s)`).
    features_inline: bool = False
    # The trending list is the same for every request: it is read (in the features round trip) at most
    # once per this many seconds per process, not parsed anew for every request. 0 = every request.
    trending_refresh_s: float = 1.0
    # After a features read that failed slowly (half the budget or more: a hung Redis), requests skip the
    # read for this long (served degraded at once) instead of each waiting out the budget again.
    features_cooldown_s: float = 1.0
    cold_start: ColdStartConfig = field(default_factory=ColdStartConfig)
    # Similarity sources run on the executor under the per-source budget (`gather`); False: inline, uncut.
    concurrent_sources: bool = True


class Recommender:
    """Runs one request end to end. Thread-safe: per-request state lives on the stack.

    `models(arm)` returns the arm's current `ServedModel` (None when it has none); `fallback_model()`
    any loaded model (used, flagged as degraded "model", when the arm has none). `explorer_for(assignment,
    thompson)` builds the arm's exploration policy for this request. `log_executor` runs impression
    logging off the request path (None: inline); `on_log_error` sees every failed impression write.
    `log_store` (default: `store`) takes the impression writes (the API gives the reads a client whose
    socket timeout is the features budget, and the writes one with the ordinary timeout).
    """

    def __init__(
        self,
        *,
        store: Store | None,
        assign: Callable[[str], Any],
        log_store: Store | None = None,
        models: Callable[[str], ServedModel | None],
        fallback_model: Callable[[], ServedModel | None] = lambda: None,
        explorer_for: Callable[[Any, Mapping[str, tuple[float, float]]], Explorer] = lambda a, t: GreedyExplorer(),
        config: PipelineConfig = PipelineConfig(),
        executor: Executor | None = None,
        log_executor: Executor | None = None,
        on_log_error: Callable[[Exception], None] = lambda exc: None,
        phase_of: Callable[[str, str], int | None] = lambda arm, version: None,
    ) -> None:
        self.store = store
        self.log_store = log_store or store
        self.assign = assign
        self.models = models
        self.fallback_model = fallback_model
        self.explorer_for = explorer_for
        self.config = config
        self._executor = executor or ThreadPoolExecutor(max_workers=8, thread_name_prefix="reco-src")
        self._log_executor = log_executor
        self._on_log_error = on_log_error
        self.phase_of = phase_of  # (arm, served version) -> experiment phase stamped on impressions
        self._trending: tuple[float, list[str]] | None = None  # (monotonic read time, item ids best first)
        self._features_paused_until = 0.0  # monotonic time; see PipelineConfig.features_cooldown_s
        self._trending_in_rows: tuple[list[str], EmbeddingIndex, RowList] | None = None
        self.cold_counts = ImpressionCounts()  # impressions this process served per new item (the bonus's n)

    def recommend(self, req: RecoRequest, *, defer_log: bool = False) -> RecoResult:
        """Run the pipeline. The impression write starts at once, or with `defer_log` when the caller runs
        `result.start_log()` (the API does after sending the response, so that the log thread does not
        take the GIL from the response path)."""
        t0 = perf_counter()
        request_id = _request_id()
        degraded: list[str] = []
        assignment = self.assign(req.user_id)
        model = self.models(assignment.arm)
        if model is None:
            model = self.fallback_model()
            if model is None:
                raise NoModelAvailable(f"no model loaded for arm {assignment.arm!r}")
            degraded.append("model")

        # Redis first, in one pipelined round trip: session and cart, user history, the Thompson evidence
        # (Thompson arms) and, when the process's copy is stale, the trending list. On the request thread
        # with `features_inline` (the store's socket timeout is then the budget), else on the executor under
        # `features_timeout_s`; the in-process sources need the session anyway.
        features, trending = self._read_features(req, assignment, model)
        if features is None:
            degraded.append("features")
        session = _session_for_model(features, model.index)
        cands = self._candidates(req, model, session, trending)
        degraded += [f"candidates:{s}" for s in cands.failed]
        ranked, attention, bonus = self._rank(model, req, session, cands, features, degraded)
        thompson = dict(features.thompson) if features is not None else {}
        chosen = self.explorer_for(assignment, thompson).select(ranked, req.limit)
        items = self._explain(model, chosen, session, attention, bonus)
        start_log = None
        if self.store is None:
            degraded.append("impressions")
        else:
            start_log = self._log(req, request_id, assignment.arm, model.version, items, session.items)
            if features is None:
                degraded.append("impressions")  # Redis is failing: the write will most likely fail too
            if start_log is not None and not defer_log:
                start_log()
                start_log = None
        return RecoResult(
            request_id=request_id,
            user_id=req.user_id,
            items=items,
            model_version=model.version,
            online_snapshot=model.online_snapshot,
            latency_ms=round((perf_counter() - t0) * 1000, 3),
            experiment_group=assignment.arm,
            alias=assignment.alias,
            degraded=degraded,
            candidates_per_source=cands.per_source,
            start_log=start_log,
        )

    # --- steps ---

    def _candidates(
        self, req: RecoRequest, model: ServedModel, session: _Session, trending: list[str] | None
    ) -> CandidateResult:
        cfg = self.config.candidates
        index = model.index
        sources: dict[Source, SourceFn | Future] = {}
        if len(session.rows):
            recent = session.rows[-MAX_SESSION:]
            sources[Source.session_similar] = lambda: index.similar_rows(recent, cfg.session_k)[0]
        context = index.rows([req.context_item_id]) if req.page_type == PageType.product and req.context_item_id else []
        if context:
            sources[Source.context_similar] = lambda: index.similar_rows(context, cfg.context_k)[0]
        if self.store is not None:
            # Read with the features (or cached); with both missing (Redis failing) the source failed too.
            sources[Source.trending] = (
                (lambda: self._trending_rows(index, trending)) if trending is not None else _unavailable
            )
        if model.cold is not None:
            fresh = RowList.of(self.cold_counts.source_rows(model.cold, index.ids, self.config.cold_start))
            sources[Source.new_items] = lambda: fresh
        popular = model.popular_rows
        return gather(
            sources,
            lambda: RowList(popular.rows[: cfg.popular_k], popular.anchors[: cfg.popular_k]),
            config=cfg,
            n_rows=index.n_rows,
            exclude=context,
            executor=self._executor if self.config.concurrent_sources else None,
            blocked=model.blocked,
            inline=(Source.trending, Source.new_items),
        )

    def _read_features(
        self, req: RecoRequest, assignment: Any, model: ServedModel
    ) -> tuple[Any | None, list[str] | None]:
        """(the request's features, the trending item ids); either is None when Redis failed."""
        if self.store is None or monotonic() < self._features_paused_until:
            return None, None
        trending = self._cached_trending()
        trending_k = self.config.candidates.trending_k if trending is None else 0
        # Only Thompson sampling reads the per-category evidence (about 40 fields to parse per request).
        exploration = getattr(assignment, "exploration", None)
        categories = model.categories if getattr(exploration, "strategy", None) == "thompson" else ()
        read = functools.partial(
            self.store.request_context, req.user_id, req.session_id, [], assignment.arm, categories,
            item_features=False, trending_k=trending_k, profile=False,
        )  # fmt: skip
        if not self.config.features_inline:
            features = self._features(self._executor.submit(read))
        else:
            started = monotonic()
            try:
                features = read()
            except Exception as exc:  # Redis down or past its socket timeout: rank without online features
                log.warning("request features unavailable: %s", exc)
                features = None
                if monotonic() - started >= self.config.features_timeout_s / 2:
                    # A read that fails slowly (a hung Redis, not a refused connection) would cost every
                    # request its whole budget: serve without features for a while, then try again.
                    self._features_paused_until = monotonic() + self.config.features_cooldown_s
        if features is None:  # Redis is failing: no trending list either (the popular fallback serves)
            self._trending = None
            return None, None
        if trending_k:
            trending = [str(iid) for iid, _ in features.trending_top]
            self._trending = (monotonic(), trending)
        return features, trending

    def _trending_rows(self, index: EmbeddingIndex, trending: list[str]) -> RowList:
        """The trending list in `index`'s rows, converted once per list read and model (not per request)."""
        cached = self._trending_in_rows  # one read: another thread may replace it
        if cached is None or cached[0] is not trending or cached[1] is not index:
            rows = index.row_list(trending)
            rows.rows.flags.writeable = rows.anchors.flags.writeable = False  # shared by the requests to come
            cached = self._trending_in_rows = (trending, index, rows)
        return cached[2]

    def _cached_trending(self) -> list[str] | None:
        """The process's trending list while it is fresh (None: read it again)."""
        cached = self._trending  # one read: another thread may replace it
        if cached is None or monotonic() - cached[0] >= self.config.trending_refresh_s:
            return None
        return cached[1]

    def _features(self, fut: Future) -> Any | None:
        try:
            return fut.result(timeout=self.config.features_timeout_s)
        except FutureTimeout:
            fut.cancel()
            log.warning("request features ran past %.0f ms", self.config.features_timeout_s * 1000)
            self._features_paused_until = monotonic() + self.config.features_cooldown_s
        except Exception as exc:  # Redis down: rank without online features
            log.warning("request features unavailable: %s", exc)
        return None

    def _rank(
        self,
        model: ServedModel,
        req: RecoRequest,
        session: _Session,
        cands: CandidateResult,
        features: Any | None,
        degraded: list[str],
    ) -> tuple[RankedList, np.ndarray | None, frozenset[int]]:
        """Score every candidate with the arm's model (one forward), add the new items' exploration bonus,
        order best first and apply the business rules; plus the session attention and the rows that carry a
        bonus. All in arrays: items are built later, for the page only."""
        if not len(cands):
            return RankedList(model, cands.rows, np.zeros(0), cands.sources, cands.anchors), None, frozenset()
        result = model.scorer.score(session.rows, cands.rows, str(req.page_type), req.device)
        scores = np.asarray(result.scores, dtype=np.float64).reshape(-1)
        boosted: frozenset[int] = frozenset()
        if model.cold is not None:
            bonus = self.cold_counts.bonus(model.cold, cands.rows, model.index.ids, self.config.cold_start)
            scores = scores + bonus
            boosted = frozenset(cands.rows[bonus > 0].tolist())
        attention: np.ndarray | None = np.asarray(result.attention).reshape(-1)
        if not np.all(np.isfinite(scores)):
            # A broken forward (NaN/inf) must not reach users: keep the retrieval order instead.
            log.warning("model %s produced non-finite scores; serving retrieval order", model.version)
            degraded.append("ranker")
            scores = np.linspace(1.0, 0.0, num=len(cands), endpoint=False)
            attention = None
        order = np.argsort(-scores, kind="stable")
        rows = cands.rows[order]
        dropped = excluded_items(
            req.page_type,
            context_item_id=req.context_item_id,
            consumed=session.consumed,
            cart=features.cart_items if features is not None else (),
            config=self.config.rules,
        )
        keep = rule_positions(
            rows,
            model.row_category_code[rows],
            drop=model.index.rows(dropped),
            window=req.limit,
            config=self.config.rules,
        )
        final = order[keep]
        ranked = RankedList(model, cands.rows[final], scores[final], cands.sources[final], cands.anchors[final])
        return ranked, attention, boosted

    def _explain(
        self,
        model: ServedModel,
        chosen: Sequence[Selection],
        session: _Session,
        attention: np.ndarray | None,
        boosted: frozenset[int] = frozenset(),
    ) -> list[RecoItem]:
        ranked: list[Ranked] = [s.item for s in chosen]
        if model.cold is not None:  # the new items served now count towards their bonus's n
            self.cold_counts.served(r.item_id for r in ranked if model.cold.is_new[r.row])
        anchors: list[str | None] = [r.anchor for r in ranked]
        if session.items and ranked:
            # Name the session item behind each session-based pick: attention x similarity (explain.py).
            sims = model.index.similarity_rows([r.row for r in ranked], session.rows)
            att = attention if attention is not None and len(attention) == len(session.items) else None
            by_attention = anchors_by_attention(sims, att, session.items)
            anchors = [
                (a or r.anchor) if r.source == Source.session_similar else r.anchor
                for r, a in zip(ranked, by_attention, strict=True)
            ]
        title_of = model.title_of.get
        return [
            RecoItem(
                item_id=r.item_id,
                score=round(r.score, 6),
                reason=reason(r.source, is_exploration=s.is_exploration, anchor=a, title_of=title_of, genre=r.category),
                source=str(r.source),
                position=pos,
                # A bonus-lifted new item is deliberate exploration; its propensity is still the policy's.
                is_exploration=bool(s.is_exploration) or r.row in boosted,
                propensity=float(s.propensity),
                category=r.category,
            )
            for pos, (s, r, a) in enumerate(zip(chosen, ranked, anchors, strict=True), start=1)
        ]

    def _log(
        self, req: RecoRequest, request_id: str, arm: str, version: str, items: list[RecoItem], session: list[str]
    ) -> Callable[[], None] | None:
        """The impression write of this request, not started (None: nothing to write)."""
        if not items:
            return None
        args = (req, request_id, arm, version, items, session, req.ts or datetime.now(UTC))
        if self._log_executor is None:
            return functools.partial(self._write_impressions, *args)
        # The records are built on the log thread too: nothing of the write stays on the request path.
        return functools.partial(self._log_executor.submit, self._write_impressions, *args)

    def _write_impressions(
        self,
        req: RecoRequest,
        request_id: str,
        arm: str,
        version: str,
        items: list[RecoItem],
        session: list[str],
        ts: datetime,
    ) -> None:
        assert self.log_store is not None
        try:
            # The category of each served item drives the arm's Thompson statistics in the store; the
            # session the ranker saw is the learner's request-context record (same round trip).
            phase = self.phase_of(arm, version)
            records = impression_records(req, request_id, arm, version, items, ts=ts, phase=phase)
            self.log_store.log_request(request_id, req.user_id, arm, ts, records, session)
        except Exception as exc:  # counted by the caller's hook; the response has already been decided
            log.warning("impression log failed for %d items: %s", len(items), exc)
            self._on_log_error(exc)


# Request ids: a random per-process prefix plus a counter: unique across workers and restarts, and no
# entropy syscall per request (uuid4 reads os.urandom every call).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def _reseed_ids() -> None:  # a forked worker must not repeat its parent's ids
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX, _ID_COUNTER = os.urandom(8).hex(), itertools.count(1)


os.register_at_fork(after_in_child=_reseed_ids)


def _request_id() -> str:
    """A new request id (32 hex characters, like a uuid4 hex).

    >>> a, b = _request_id(), _request_id()
    >>> a != b and len(a) == len(b) == 32
    True
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


@dataclass(frozen=True)
class _Session:
    items: list[str]  # what the encoder sees (known items, most recent last)
    rows: np.ndarray  # their embedding rows
    consumed: frozenset[str]  # what the rules drop


def _session_for_model(features: Any | None, index: EmbeddingIndex) -> _Session:
    """The session from the features round trip. A user without a current session is ranked (and gets
    candidates) from their recent history (`user_items`), which is not dropped as consumed."""
    items = list(features.session_items) if features is not None else []
    consumed = frozenset(items)
    if not items and features is not None:
        items = list(getattr(features, "user_items", []) or [])
    known = [i for i in items if i in index][-MAX_SESSION:]
    return _Session(known, np.asarray(index.rows(known), dtype=np.int64), consumed)


def _unavailable() -> RowList:
    raise RuntimeError("store unavailable")


def _impression_fields(
    req: RecoRequest,
    request_id: str,
    arm: str,
    model_version: str,
    items: Sequence[RecoItem],
    *,
    phase: int | None = None,
) -> list[dict[str, Any]]:
    """Each served item's impression event, but `ts`: values already valid for `Event` (device cut to the
    schema's 32 characters, propensity clamped into (0, 1])."""
    page, device = PageType(req.page_type), req.device[:32] if req.device else None
    return [
        {
            "event_id": f"{request_id}:{it.position}",
            "user_id": req.user_id,
            "session_id": req.session_id,
            "item_id": it.item_id,
            "event_type": EventType.impression,
            "request_id": request_id,
            "position": it.position,
            "arm": arm,
            "model_version": model_version,
            "propensity": min(1.0, max(it.propensity, 1e-9)),
            "is_exploration": it.is_exploration,
            "page_type": page,
            "device": device,
            **({} if phase is None else {"phase": phase}),
        }
        for it in items
    ]


def impression_events(
    req: RecoRequest,
    request_id: str,
    arm: str,
    model_version: str,
    items: Sequence[RecoItem],
    *,
    ts: datetime | None = None,
) -> list[Event]:
    """One `impression` event per served item; `event_id` is derived from request and position, so a
    retried write is deduplicated by the store.

    >>> it = RecoItem("i1", 0.5, "Trending now", "trending", 1, False, 1.0)
    >>> [e.event_id for e in impression_events(RecoRequest("u"), "r1", "control", "3", [it])]
    ['r1:1']
    """
    now = ts or datetime.now(UTC)
    # `model_construct` skips validation: every value is built from validated inputs.
    return [Event.model_construct(ts=now, **f) for f in _impression_fields(req, request_id, arm, model_version, items)]


def impression_records(
    req: RecoRequest,
    request_id: str,
    arm: str,
    model_version: str,
    items: Sequence[RecoItem],
    *,
    ts: datetime,
    phase: int | None = None,
) -> list[ImpressionRecord]:
    """`impression_events` serialised for the store's request log, with plain `json.dumps`: building and
    dumping 20 pydantic models took ~0.25 ms of the impression thread's GIL time per request (tests hold
    each payload equal to its `Event`).

    >>> it = RecoItem("i1", 0.5, "Trending now", "trending", 1, False, 1.0, "Drama")
    >>> rec = impression_records(RecoRequest("u"), "r1", "control", "3", [it], ts=datetime(2026, 1, 1, tzinfo=UTC))
    >>> rec[0].event_id, rec[0].category, Event.model_validate_json(rec[0].payload).ts.year
    ('r1:1', 'Drama', 2026)
    """
    stamp = ts.astimezone(UTC).isoformat().replace("+00:00", "Z")  # as pydantic writes it (the stream's form)
    fields = _impression_fields(req, request_id, arm, model_version, items, phase=phase)
    return [
        ImpressionRecord(f["event_id"], it.item_id, json.dumps({"ts": stamp, **f}, separators=(",", ":")), it.category)
        for f, it in zip(fields, items, strict=True)
    ]
