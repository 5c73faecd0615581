"""The served-list evaluation: the leave-one-out case goes through the request pipeline (rules, cap, page)."""

from __future__ import annotations

from serving_helpers import tiny_bundle

from reco.offline import served_eval
from reco.ranking.recommend import PipelineConfig, Recommender, RecoRequest, ServedModel


def _first_served(model: ServedModel, history: list[str]) -> str:
    store = served_eval._OneSession()
    store.session = history
    config = PipelineConfig(features_inline=True, concurrent_sources=False)
    reco = Recommender(store=store, assign=lambda u: served_eval._Greedy(), models=lambda arm: model, config=config)
    return reco.recommend(RecoRequest(user_id="x", session_id="x", limit=10)).items[0].item_id


def test_served_list_metrics_follow_the_page_and_the_rules() -> None:
    model = ServedModel.build(tiny_bundle(), "1")
    probe = served_eval.evaluate_served(model, [["1", "2"]], ["3"], limit=10)
    assert probe["page_len"] == 10 and probe["candidate_recall@500"] == 1.0  # 40 items: all are candidates
    hit = served_eval.evaluate_served(model, [["1", "2"]], [_first_served(model, ["1", "2"])], limit=10)
    assert hit["ndcg@10"] == 1.0 and hit["recall@10"] == 1.0 and hit["mrr@10"] == 1.0
    seen = served_eval.evaluate_served(model, [["1", "2"]], ["2"], limit=10)
    assert seen["recall@10"] == 0.0 and seen["candidate_recall@500"] == 1.0  # a candidate the rules drop (seen)
