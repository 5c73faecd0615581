"""Quality of the served list: the leave-one-out protocol run through the request pipeline itself.

`reco.offline.evaluation` ranks every item of the catalogue (the model's full ranking). The API serves less:
at most `max_candidates` candidates from its sources, the rules (the consumed items dropped: the session's
and, with `drop_history`, the user's history as far as Redis keeps it, `seen_window` items =
`RECO_USER_ITEMS_MAX`; the per-category cap on the page), then the page of `limit` items. Here each
leave-one-out case (history -> held-out next item) is one `Recommender.recommend` call on the served model,
the history's last 50 items given as the session and its last `seen_window` as the user's history, as the
API reads them (greedy arm, no Redis: the features come from a small in-memory store),
and the held-out item's position in the served page is scored like the full ranking's rank. Candidate
recall@`max_candidates` is reported for the merged list and for each source's own list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from reco.ranking.candidates import CandidateConfig, Source, ranker_rows
from reco.ranking.recommend import PipelineConfig, Recommender, RecoRequest, ServedModel, session_for_model
from reco.ranking.rules import RuleConfig
from reco.settings import RecoSettings
from reco.state.records import RequestFeatures

MAX_SESSION = 50
#: The user's history the API keeps and drops by default (`RECO_USER_ITEMS_MAX`).
USER_ITEMS_MAX: int = RecoSettings.model_fields["user_items_max"].default


class _OneSession:
    """The request features of the case being evaluated (the store protocol of `Recommender`)."""

    def __init__(self) -> None:
        self.session: list[str] = []
        self.history: list[str] = []  # the user's items across sessions (Redis P:uitems)

    def request_context(self, *args: Any, **kwargs: Any) -> RequestFeatures:
        return RequestFeatures(list(self.session), list(self.history), {}, {}, {}, {})

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Greedy:
    arm, alias = "eval", "eval"

    class exploration:
        strategy, rate = "none", 0.0


def evaluate_served(
    model: ServedModel,
    sessions: Sequence[Sequence[str]],
    targets: Sequence[str],
    *,
    limit: int = 10,
    max_candidates: int = 500,
    max_per_category: int | None = 3,
    seen_window: int = USER_ITEMS_MAX,
    drop_history: bool = True,
    ks: Sequence[int] = (10,),
    candidates: CandidateConfig | None = None,
) -> dict[str, Any]:
    """Served-list metrics over the cases: recall@k, ndcg@k, mrr@k for k in `ks` (k <= `limit`), candidate
    recall (merged and per source), and the served page's mean length. `candidates` replaces the serving
    default sources' sizes (`max_candidates` is then its own). `seen_window`: the user's history the store
    keeps (the session is its last 50 items, fewer when the window is smaller); `drop_history=False` drops
    the session's items only (the rule before `RuleConfig.drop_history`)."""
    store = _OneSession()
    config = PipelineConfig(
        candidates=candidates or CandidateConfig(max_candidates=max_candidates),
        rules=RuleConfig(max_per_category=max_per_category, drop_history=drop_history),
        features_inline=True,
        concurrent_sources=False,  # nothing to wait on: the sources are in-process
    )
    reco = Recommender(store=store, assign=lambda user: _Greedy(), models=lambda arm: model, config=config)
    index = model.index
    ranks = np.full(len(targets), np.inf)
    in_candidates = np.zeros(len(targets), dtype=bool)
    per_source = {str(s): np.zeros(len(targets), dtype=bool)
                  for s in (Source.session_query, Source.session_similar, Source.popular)}  # fmt: skip
    lengths = []
    for n, (history, target) in enumerate(zip(sessions, targets, strict=True)):
        store.history = list(history)[-seen_window:]
        store.session = store.history[-min(seen_window, MAX_SESSION) :]
        req = RecoRequest(user_id=f"case-{n}", session_id=f"case-{n}", limit=limit)
        items = reco.recommend(req).items
        lengths.append(len(items))
        for pos, it in enumerate(items, start=1):
            if it.item_id == target:
                ranks[n] = pos
        rows = index.rows([i for i in store.session if i in index][-MAX_SESSION:])
        target_row = index.row_of(target)
        if target_row is None:
            continue
        session = session_for_model(RequestFeatures.of_session(store.session), index)
        cand = reco._candidates(req, model, session, [])
        in_candidates[n] = target_row in set(cand.rows.tolist())
        if len(rows):
            sim = index.similar_rows(np.asarray(rows, dtype=np.int64), config.candidates.session_k)[0].rows
            per_source[str(Source.session_similar)][n] = target_row in set(sim.tolist())
        if len(rows):
            window = np.asarray(rows, dtype=np.int64)
            found = ranker_rows(index, model.scorer, session.rows, config.candidates, str(req.page_type), req.device,
                                window).rows  # fmt: skip
            per_source[str(Source.session_query)][n] = target_row in set(found.tolist())
        per_source[str(Source.popular)][n] = target_row in set(
            model.popular_rows.rows[: config.candidates.popular_k].tolist()
        )
    out: dict[str, Any] = {}
    for k in ks:
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).mean())
    out[f"candidate_recall@{config.candidates.max_candidates}"] = float(in_candidates.mean())
    for name, found in per_source.items():
        out[f"candidate_recall_{name}"] = float(found.mean())
    out["page_len"] = float(np.mean(lengths)) if lengths else 0.0
    out["cases"] = len(targets)
    return out
