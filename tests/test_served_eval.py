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


def test_the_history_window_is_what_the_rules_drop() -> None:
    model = ServedModel.build(tiny_bundle(), "1")
    history = [str(i) for i in range(1, 11)]  # the target is the first of 10 earlier items
    every = {"limit": 40, "ks": (40,)}  # the page holds every item the rules keep (40 items)
    assert served_eval.evaluate_served(model, [history], ["1"], seen_window=10, **every)["recall@40"] == 0.0
    assert served_eval.evaluate_served(model, [history], ["1"], seen_window=9, **every)["recall@40"] == 1.0
    long = ["1"] + [str(2 + i % 39) for i in range(54)]  # 55 views: "1" is in the history, not the session of 50
    kept = served_eval.evaluate_served(model, [long], ["1"], drop_history=False, **every)
    assert kept["recall@40"] == 1.0  # the session's items only (the rule before drop_history)
    assert served_eval.evaluate_served(model, [long], ["1"], **every)["recall@40"] == 0.0
