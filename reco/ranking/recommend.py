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
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from time import monotonic, perf_counter
from typing import Any, Protocol

import numpy as np

from reco.data.events import PageType
from reco.ranking.candidates import (
    CandidateResult,
    EmbeddingIndex,
    RowList,
    Source,
    SourceFn,
    gather,
    ranker_rows,
)
from reco.ranking.cold_start import ImpressionCounts
from reco.ranking.explain import anchors_by_attention, reason_of
from reco.ranking.exploration import (
    ArmPolicies,
    Explorer,
    Greedy,
    GreedyExplorer,
    Ranked,
    RankedList,
    Selection,
)
from reco.ranking.impressions import impression_events, impression_records
from reco.ranking.request import (
    NoModelAvailable,
    PipelineConfig,
    RecoItem,
    RecoRequest,
    RecoResult,
    new_request_id,
)
from reco.ranking.rules import excluded_items, rule_positions
from reco.ranking.served_model import ServedModel
from reco.state.store import ImpressionRecord

# Re-exported: the request pipeline's public names are all reachable here.
__all__ = [
    "MAX_SESSION",
    "ArmPolicies",
    "Explorer",
    "Greedy",
    "GreedyExplorer",
    "NoModelAvailable",
    "PipelineConfig",
    "Ranked",
    "RankedList",
    "RecoItem",
    "RecoRequest",
    "RecoResult",
    "Recommender",
    "RequestSession",
    "Selection",
    "ServedModel",
    "Store",
    "impression_events",
    "impression_records",
    "session_for_model",
]

log = logging.getLogger(__name__)

#: Longest session prefix fed to the encoder (the most recent items).
MAX_SESSION = 50


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
        request_id = new_request_id()
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
        session = session_for_model(features, model.index)
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
        self, req: RecoRequest, model: ServedModel, session: RequestSession, trending: list[str] | None
    ) -> CandidateResult:
        cfg = self.config.candidates
        index = model.index
        sources: dict[Source, SourceFn | Future] = {}
        if len(session.rows):
            recent = session.rows[-MAX_SESSION:]
            sources[Source.session_similar] = lambda: index.similar_rows(recent, cfg.session_k)[0]
            if getattr(model.scorer, "session_query", None) is not None and cfg.query_k > 0:
                # `ranker_rows`: the retrieval score's top (the scorer's remembered encoding, reused by the ranking
                # right after); with `query_pool` > 0 the ranker's own top, whose scores the ranking gathers.
                rows, page, dev = session.rows, str(req.page_type), req.device
                sources[Source.session_query] = lambda: ranker_rows(
                    index, model.scorer, rows, cfg, page, dev, rows[-MAX_SESSION:]
                )
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
        inline = [Source.trending, Source.new_items]
        # Searches of bounded cost skip the thread hop (PipelineConfig.inline_exact_rows): small exact tables and
        # the ANN (a fixed number of cells; the hop cost ~0.3 ms of CPU per request at 10^6 items).
        if self.config.inline_exact_rows and (index.ann is not None or index.n_rows <= self.config.inline_exact_rows):
            inline += [Source.session_similar, Source.session_query, Source.context_similar]
        return gather(
            sources,
            lambda: RowList(popular.rows[: cfg.popular_k], popular.anchors[: cfg.popular_k]),
            config=cfg,
            n_rows=index.n_rows,
            exclude=context,
            executor=self._executor if self.config.concurrent_sources else None,
            blocked=model.blocked,
            inline=inline,
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
        started = monotonic()
        if not self.config.features_inline:
            features = self._features(self._executor.submit(read), started)
        else:
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

    def _features(self, fut: Future, started: float) -> Any | None:
        try:
            return fut.result(timeout=self.config.features_timeout_s)
        except FutureTimeout:
            fut.cancel()
            log.warning("request features ran past %.0f ms", self.config.features_timeout_s * 1000)
            self._features_paused_until = monotonic() + self.config.features_cooldown_s
        except Exception as exc:  # Redis down: rank without online features
            log.warning("request features unavailable: %s", exc)
            # A store whose socket timeout is the budget fails just before `result` gives up: slowly, as inline.
            if monotonic() - started >= self.config.features_timeout_s / 2:
                self._features_paused_until = monotonic() + self.config.features_cooldown_s
        return None

    def _rank(
        self,
        model: ServedModel,
        req: RecoRequest,
        session: RequestSession,
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
            bonus = self.cold_counts.bonus(model.cold, cands.rows, model.index.ids, self.config.cold_start, scores)
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
            history=features.user_items if features is not None else (),  # dropped too (RuleConfig.drop_history)
            config=self.config.rules,
        )
        keep = rule_positions(
            rows,
            model.row_category_code[rows],
            drop=model.index.row_array(dropped),
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
        session: RequestSession,
        attention: np.ndarray | None,
        boosted: frozenset[int] = frozenset(),
    ) -> list[RecoItem]:
        ranked: list[Ranked] = [s.item for s in chosen]
        if model.cold is not None:  # the new items served now count towards their bonus's n
            self.cold_counts.served(r.item_id for r in ranked if model.cold.is_new[r.row])
        anchors: list[str | None] = [r.anchor for r in ranked]
        # Name the session item behind each session-based pick: attention x similarity (explain.py); the
        # similarities are computed for those picks only (the others keep their source's anchor).
        picks = [k for k, r in enumerate(ranked) if r.source in _SESSION_SOURCES] if session.items else []
        if picks:
            sims = model.index.similarity_rows([ranked[k].row for k in picks], session.rows)
            att = attention if attention is not None and len(attention) == len(session.items) else None
            for k, a in zip(picks, anchors_by_attention(sims, att, session.items), strict=True):
                anchors[k] = a or anchors[k]
        title_of = model.title_of.get
        # Each item built as the tuple it is (positional, no keyword __new__): 20 a request, 109 -> 92 us for the step.
        # A bonus-lifted new item is deliberate exploration; its propensity is still the policy's.
        items = [
            (r.item_id, round(r.score, 6), reason_of(r.source, s.is_exploration, a, title_of, r.category),
             _SOURCE_TEXT[r.source], pos, bool(s.is_exploration) or r.row in boosted, float(s.propensity), r.category)
            for pos, (s, r, a) in enumerate(zip(chosen, ranked, anchors, strict=True), start=1)
        ]  # fmt: skip
        return [_item(RecoItem, fields) for fields in items]

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


@dataclass(frozen=True)
class RequestSession:
    items: list[str]  # what the encoder sees (known items, most recent last)
    rows: np.ndarray  # their embedding rows
    consumed: frozenset[str]  # what the rules drop


def session_for_model(features: Any | None, index: EmbeddingIndex) -> RequestSession:
    """The session from the features round trip. A user without a current session is ranked (and gets
    candidates) from their recent history (`user_items`); the rules drop that history with the session's
    items (`RuleConfig.drop_history`), so what the user has consumed is not served again."""
    items = list(features.session_items) if features is not None else []
    consumed = frozenset(items)
    if not items and features is not None:
        items = list(getattr(features, "user_items", []) or [])
    known = [i for i in items if i in index][-MAX_SESSION:]
    return RequestSession(known, np.asarray(index.rows(known), dtype=np.int64), consumed)


_SESSION_SOURCES = frozenset({Source.session_similar, Source.session_query})
_SOURCE_TEXT = {source: str(source) for source in Source}
_item = tuple.__new__  # a NamedTuple built from its fields in order, without its Python-level __new__


def _unavailable() -> RowList:
    raise RuntimeError("store unavailable")
