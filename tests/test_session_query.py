"""The `session_query` source ranks by the ranker itself (`ranker_rows`), and the scorer's remembered pool
scores are the scores `score` computes (the ranking gathers them)."""

from __future__ import annotations

import numpy as np
import pytest
from serving_helpers import tiny_bundle

from reco.data.events import DEFAULT_DEVICE
from reco.offline import served_eval
from reco.ranking.candidates import CandidateConfig, ranker_rows
from reco.ranking.recommend import PipelineConfig, Recommender, RecoRequest, ServedModel
from reco.ranking.rules import RuleConfig

SESSION = np.array([3, 7, 11, 2], dtype=np.int64)


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return ServedModel.build(tiny_bundle(n_items=60), "1")


def _ranker_top(model: ServedModel, k: int, exclude: np.ndarray, pool: np.ndarray | None = None) -> list[int]:
    """The definition: the fresh scorer's logits over the pool (default every item), best first."""
    rows = model.index.valid_rows if pool is None else pool
    scores = model.bundle.frozen_scorer().score(SESSION, rows, "home", DEFAULT_DEVICE).scores
    keep = ~np.isin(rows, exclude)
    rows, scores = rows[keep], scores[keep]
    return rows[np.argsort(-scores, kind="stable")][:k].tolist()


def test_the_source_is_the_rankers_top_over_a_small_catalogue(model: ServedModel) -> None:
    config = CandidateConfig(query_k=15, query_pool=2000)
    got = ranker_rows(model.index, model.scorer, SESSION, config, "home", DEFAULT_DEVICE, SESSION).rows
    assert got.tolist() == _ranker_top(model, 15, SESSION)
    assert not set(got.tolist()) & set(SESSION.tolist())


def test_above_the_pool_the_ranker_orders_the_retrieval_scores_best(model: ServedModel) -> None:
    config = CandidateConfig(query_k=10, query_pool=25)  # 60 items: the pool is the retrieval score's top 25
    got = ranker_rows(model.index, model.scorer, SESSION, config, "home", DEFAULT_DEVICE, SESSION).rows
    pool = model.index.query_rows(model.scorer.session_query(SESSION), 25, SESSION).rows
    assert got.tolist() == _ranker_top(model, 10, SESSION, pool)
    plain = ranker_rows(model.index, model.scorer, SESSION, CandidateConfig(query_k=10, query_pool=0), "home",
                        DEFAULT_DEVICE, SESSION).rows  # fmt: skip
    assert plain.tolist() == pool[:10].tolist()  # pool 0: the retrieval score alone, as before


def test_the_ranking_gathers_the_remembered_pool_scores_equal_to_computing_them(model: ServedModel) -> None:
    scorer, fresh = model.bundle.frozen_scorer(), model.bundle.frozen_scorer()
    pool = np.arange(1, 31, dtype=np.int64)[::-1]  # unsorted, as a retrieval answers
    pooled = scorer.retrieval_scores(SESSION, pool, "cart", "mobile")
    np.testing.assert_allclose(pooled, fresh.score(SESSION, pool, "cart", "mobile").scores, atol=1e-6)
    candidates = np.array([5, 40, 3, 29, 59, 1], dtype=np.int64)  # some in the pool, some not, one seen
    for page, dev in (("cart", "mobile"), ("home", "mobile")):  # another context: not the remembered pool
        got = scorer.score(SESSION, candidates, page, dev)
        want = fresh.score(SESSION, candidates, page, dev)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
        np.testing.assert_allclose(got.attention, want.attention, atol=1e-6)


def test_without_the_cap_the_served_page_is_the_full_ranking_without_the_seen_items(model: ServedModel) -> None:
    """Below the pool size every item is scored: the page is the ranker's top, the session's items dropped."""
    store = served_eval._OneSession()
    store.session = [model.index.ids[r] for r in SESSION]
    config = PipelineConfig(candidates=CandidateConfig(query_pool=2000), features_inline=True,
                            concurrent_sources=False, rules=RuleConfig(max_per_category=None))  # fmt: skip
    reco = Recommender(store=store, assign=lambda u: served_eval._Greedy(), models=lambda arm: model, config=config)
    items = reco.recommend(RecoRequest(user_id="u", session_id="s", limit=5)).items
    assert [model.index.row_of(it.item_id) for it in items] == _ranker_top(model, 5, SESSION)
