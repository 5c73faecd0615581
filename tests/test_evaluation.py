"""Leave-one-out split (against RecBole's reference), ranking metrics, MostPop, the served scoring path."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from reco.artifacts.bundle import PAD, ModelBundle
from reco.data.catalog import ItemCatalog
from reco.data.movielens import load_movielens
from reco.models.ranker import RankerConfig, SessionAwareRanker
from reco.offline.evaluation import (
    evaluate_bundle,
    format_table,
    leave_one_out,
    most_popular,
    ranking_metrics,
    target_ranks,
)


@pytest.fixture(scope="module")
def ml100k(movielens_dir):
    return load_movielens(movielens_dir)


def test_split_equals_recbole_reference(ml100k, movielens_dir):
    ref = pd.read_csv(movielens_dir / "loo_split_reference.tsv", sep="\t", dtype=str).set_index("user_id")
    split = leave_one_out(ml100k.events)
    assert sorted(split.users) == sorted(ref.index)
    for u, train, valid, test in zip(split.users, split.train, split.valid, split.test, strict=True):
        r = ref.loc[u]
        assert (train, valid, test) == (r.train_items.split(), r.valid_item, r.test_item), u
    assert len(split.train_rows) == len(ml100k.events) - 2 * len(ref)
    train_events = ml100k.events.iloc[split.train_rows]
    assert set(zip(train_events.user_id, train_events.item_id, strict=True)).isdisjoint(
        set(zip(split.users, split.test, strict=True))
    )


def test_split_keeps_file_order_on_ties_and_skips_short_users():
    ts = pd.to_datetime([10, 10, 10, 5, 20, 30], unit="s", utc=True)
    ev = pd.DataFrame({"user_id": ["a", "a", "a", "b", "b", "a"], "item_id": ["x", "y", "z", "p", "q", "w"], "ts": ts})
    split = leave_one_out(ev)
    assert split.users == ["b", "a"]  # order of first appearance in time
    assert (split.train[1], split.valid[1], split.test[1]) == (["x", "y"], "z", "w")
    assert (split.train[0], split.valid[0], split.test[0]) == (["p", "q"], None, None)
    sessions, targets, users = split.sessions("test")
    assert (sessions, targets, users) == ([["x", "y", "z"]], ["w"], [1])


def test_ranking_metrics_against_hand_computed_values():
    ranks = np.array([0, 3, 9, 10, 25])
    m = ranking_metrics(ranks, ks=(10, 20))
    assert m["recall@10"] == pytest.approx(3 / 5)
    assert m["recall@20"] == pytest.approx(4 / 5)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(5) + 1 / math.log2(11)) / 5)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(11) + 1 / math.log2(12)) / 5)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 4 + 1 / 10) / 5)
    assert m["mrr@20"] == pytest.approx((1 + 1 / 4 + 1 / 10 + 1 / 11) / 5)


def test_target_ranks_ties_exclusion_and_unknown_targets():
    scores = np.array([[1.0, 5.0, 5.0, 2.0], [4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    assert target_ranks(scores, np.array([2, 3, 0])).tolist() == [1, 3, 0]  # tie: earlier column first
    excl = [np.array([1]), np.array([0, 1]), np.array([], dtype=np.int64)]
    assert target_ranks(scores, np.array([2, 3, 0]), exclude=excl).tolist() == [0, 1, 0]
    assert target_ranks(scores, np.array([-1, 0, 0])).tolist()[0] == 4  # unknown target ranks last
    assert target_ranks(scores, np.array([1, 0, 0]), exclude=[np.array([1])] * 3).tolist()[0] == 0  # never self


def test_mostpop_matches_recbole_on_ml100k(ml100k):
    split = leave_one_out(ml100k.events)
    sessions, targets, _ = split.sessions("test")
    res = most_popular(split.train, ml100k.catalog.item_ids, sessions, targets)
    # RecBole 1.2.1 MostPop on this split: NDCG@10 0.0224, Recall@10 0.0498, MRR@10 0.0142
    assert res["all"]["ndcg@10"] == pytest.approx(0.0224, abs=5e-4)
    assert res["all"]["recall@10"] == pytest.approx(0.0498, abs=5e-4)
    assert res["all"]["mrr@10"] == pytest.approx(0.0142, abs=5e-4)
    assert res["exclude_history"]["ndcg@10"] > res["all"]["ndcg@10"]
    assert "| MostPop | kept |" in format_table({"MostPop": res})


def test_evaluate_bundle_ranks_through_the_served_score():
    torch.manual_seed(0)
    ids = [PAD] + [f"i{k}" for k in range(1, 21)]
    model = SessionAwareRanker(RankerConfig(n_items=21, n_categories=2, item_dim=8, hidden=8))
    catalog = ItemCatalog.from_records([{"item_id": i} for i in ids[1:]])
    bundle = ModelBundle(model, ids, catalog, {})
    sessions = [["i1", "i2"], ["i5"], ["i3", "i9", "i4"]]
    targets = ["i3", "i5", "i20"]
    got = evaluate_bundle(bundle, sessions, targets, batch_size=2)
    ranks, ranks_ex = [], []
    for s, t in zip(sessions, targets, strict=True):
        scores = bundle.score(s, ids[1:]).scores
        col = ids.index(t) - 1
        ranks.append(int((scores > scores[col]).sum() + ((scores == scores[col])[:col]).sum()))
        hist = [ids.index(i) - 1 for i in s if i != t]
        keep = np.setdiff1d(np.arange(20), hist)
        ranks_ex.append(int((scores[keep] > scores[col]).sum()))
    assert got["all"] == pytest.approx(ranking_metrics(np.array(ranks)))
    assert got["exclude_history"] == pytest.approx(ranking_metrics(np.array(ranks_ex)))
