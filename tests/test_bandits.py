"""Exploration policies: propensities checked against simulation, decay per interaction, River shape."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reco.ranking.bandits import EpsilonGreedy, ScoredItem, ThompsonSampling

ITEMS = ["a", "b", "c", "d", "e", "f"]


def test_params_are_stored_unchanged_and_seed_reproduces() -> None:
    p = EpsilonGreedy(epsilon=0.4, decay=0.9, min_epsilon=0.05, protected_top=2, seed=3)
    assert (p.epsilon, p.decay, p.min_epsilon, p.protected_top, p.seed) == (0.4, 0.9, 0.05, 2, 3)
    picks = [tuple(s.item for s in p.select(ITEMS, 5)) for _ in range(20)]
    q = EpsilonGreedy(epsilon=0.4, decay=0.9, min_epsilon=0.05, protected_top=2, seed=3)
    assert picks == [tuple(s.item for s in q.select(ITEMS, 5)) for _ in range(20)]
    t = ThompsonSampling(prior_alpha=2, prior_beta=3, weight=0.5, n_propensity_samples=7, seed=1)
    assert (t.prior_alpha, t.prior_beta, t.weight, t.n_propensity_samples, t.seed) == (2, 3, 0.5, 7, 1)


def test_epsilon_decays_per_interaction_not_per_request() -> None:
    p = EpsilonGreedy(epsilon=0.2, decay=0.9, min_epsilon=0.05, seed=0)
    for _ in range(50):
        p.select(ITEMS, 4)  # requests do not decay epsilon
    assert p.current_epsilon == 0.2
    for _ in range(3):
        p.learn_one(clicked=True)
    assert p.current_epsilon == pytest.approx(0.2 * 0.9**3)
    p.set_interactions(1000)  # shared count from Redis
    assert p.current_epsilon == 0.05


def test_protected_top_slots_are_never_explored() -> None:
    p = EpsilonGreedy(epsilon=1.0, protected_top=3, seed=0)
    for _ in range(200):
        sel = p.select(ITEMS, 5)
        assert [s.item for s in sel[:3]] == ["a", "b", "c"]
        assert all(s.propensity == 1.0 and not s.is_exploration for s in sel[:3])
        assert all(s.is_exploration for s in sel[3:])  # epsilon 1: every later slot explores


def test_epsilon_greedy_propensity_matches_simulation() -> None:
    """Empirical P(item at slot | items placed before) and P(whole ranking) match the reported values."""
    p = EpsilonGreedy(epsilon=0.3, decay=1.0, protected_top=1, seed=42)
    n_draws = 30_000
    cond: Counter = Counter()
    context: Counter = Counter()
    reported: dict = {}
    rankings: Counter = Counter()
    ranking_prob: dict = {}
    for _ in range(n_draws):
        sel = p.select(ITEMS, 3)
        prefix: tuple = ()
        prob = 1.0
        for slot, s in enumerate(sel):
            key = (slot, prefix, s.item)
            cond[key] += 1
            context[(slot, prefix)] += 1
            assert reported.setdefault(key, s.propensity) == s.propensity  # same context, same propensity
            prob *= s.propensity
            prefix += (s.item,)
        rankings[prefix] += 1
        ranking_prob[prefix] = prob
    for (slot, prefix, item), count in cond.items():
        total = context[(slot, prefix)]
        if total < 300:
            continue
        expected = reported[(slot, prefix, item)]
        assert abs(count / total - expected) < 4 * math.sqrt(expected * (1 - expected) / total) + 1e-3
    assert sum(ranking_prob.values()) == pytest.approx(1.0, abs=1e-9)  # every possible ranking was seen
    for ranking, count in rankings.items():
        prob = ranking_prob[ranking]
        assert abs(count / n_draws - prob) < 4 * math.sqrt(prob * (1 - prob) / n_draws) + 1e-3


def test_epsilon_greedy_propensity_formula() -> None:
    p = EpsilonGreedy(epsilon=0.25, protected_top=0, seed=1)
    seen = set()
    for _ in range(300):
        first = p.select(ITEMS, 1)[0]
        seen.add((first.item, first.propensity, first.is_exploration))
    assert ("a", 0.75, False) in seen
    assert {x for x in seen if x[0] != "a"} <= {(i, 0.25 / 5, True) for i in ITEMS[1:]}
    assert [s.propensity for s in p.select(["only"], 3)] == [1.0]  # no pool: greedy with certainty


def _scored() -> list[ScoredItem]:
    cats = ["drama", "comedy", "drama", "horror", "comedy", "horror"]
    return [ScoredItem(f"i{k}", 1.0 - 0.1 * k, cats[k]) for k in range(6)]


STATS = {"drama": (2.0, 30.0), "comedy": (20.0, 20.0), "horror": (1.0, 3.0)}


def test_thompson_propensity_estimate_matches_simulation() -> None:
    ts = ThompsonSampling(weight=0.6, n_propensity_samples=200, seed=5)
    n_draws = 3000
    freq: Counter = Counter()
    reported: dict = {}
    for _ in range(n_draws):
        for slot, s in enumerate(ts.select(_scored(), 3, STATS)):
            freq[(slot, s.item.item_id)] += 1
            reported.setdefault((slot, s.item.item_id), []).append(s.propensity)
    assert len(freq) > 6  # the policy really varies
    for key, count in freq.items():
        empirical = count / n_draws
        estimate = sum(reported[key]) / len(reported[key])
        # the estimate is for the whole-ranking marginal of (slot, item); +1/(K+1) floor bias at most
        assert abs(estimate - empirical) < 0.04 + 4 * math.sqrt(empirical * (1 - empirical) / n_draws), key


def test_thompson_prefers_categories_with_better_evidence() -> None:
    items = [ScoredItem("low-ctr", 1.0, "drama"), ScoredItem("high-ctr", 0.9, "comedy")]
    ts = ThompsonSampling(weight=0.8, n_propensity_samples=20, seed=0)
    firsts = Counter(ts.select(items, 2, {"drama": (1, 200), "comedy": (150, 50)})[0].item.item_id for _ in range(200))
    assert firsts["high-ctr"] > 190
    sel = ts.select(items, 2, {"drama": (1, 200), "comedy": (150, 50)})
    promoted = next(s for s in sel if s.item.item_id == "high-ctr")
    assert promoted.is_exploration  # placed above its greedy (score) rank


def test_thompson_with_zero_weight_is_greedy_with_certainty() -> None:
    sel = ThompsonSampling(weight=0.0, seed=0).select(_scored(), 4, STATS)
    assert [s.item.item_id for s in sel] == ["i0", "i1", "i2", "i3"]
    assert all(s.propensity == 1.0 and not s.is_exploration for s in sel)


def test_bad_parameters_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedy(epsilon=1.5)
    with pytest.raises(ValueError, match="weight"):
        ThompsonSampling(weight=-0.1)
    with pytest.raises(ValueError, match="finite"):
        ThompsonSampling().select([ScoredItem("x", float("nan"), "c")], 1, {})


@settings(max_examples=50, deadline=None)
@given(
    scores=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=30),
    n=st.integers(0, 40),
    eps=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_selections_are_valid_for_any_input(scores: list[float], n: int, eps: float, seed: int) -> None:
    items = [ScoredItem(f"i{k}", s, f"c{k % 3}") for k, s in enumerate(scores)]
    for sel in (
        EpsilonGreedy(epsilon=eps, protected_top=1, seed=seed).select(items, n),
        ThompsonSampling(n_propensity_samples=10, seed=seed).select(items, n, {"c0": (3.0, 1.0)}),
    ):
        assert len(sel) == min(n, len(items))
        assert len({s.item for s in sel}) == len(sel)  # no item twice
        assert all(0.0 < s.propensity <= 1.0 for s in sel)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_thompson_ranks_only_each_categorys_head_and_serves_the_slates_of_ranking_everything(weight: float) -> None:
    """`select` ranks each category's first n items only; with the same draws, ranking every item must
    give the same slate and propensities (scores with ties, rule-reordered input, every weight)."""
    import numpy as np

    from reco.ranking.bandits import _top_n

    rng = np.random.default_rng(7)
    for trial in range(40):
        size, n = int(rng.integers(1, 60)), int(rng.integers(1, 25))
        items = [ScoredItem(str(i), float(s), f"c{c}") for i, (s, c) in
                 enumerate(zip(rng.integers(0, 6, size), rng.integers(0, 4, size), strict=True))]  # fmt: skip
        stats = {f"c{c}": (float(rng.integers(0, 20)), float(rng.integers(0, 80))) for c in range(4)}
        policy = ThompsonSampling(weight=weight, n_propensity_samples=30, seed=trial)
        got = policy.select(items, n, stats)
        # The reference: the same draws (same seed, same order of categories), every item ranked.
        scores = np.array([it.score for it in items])
        lo, hi = scores.min(), scores.max()
        norm = (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)
        cats = sorted({it.category for it in items})
        item_cat = np.array([cats.index(it.category) for it in items])
        params = np.array([policy.posterior(stats.get(c)) for c in cats])
        theta = np.random.default_rng(trial).beta(params[:, 0], params[:, 1], size=(31, len(cats)))
        top = _top_n((1 - weight) * norm[None, :] + weight * theta[:, item_cat], min(n, size))
        assert [s.item.item_id for s in got] == [items[i].item_id for i in top[0]]
        assert [s.propensity for s in got] == pytest.approx(list((top == top[0][None, :]).mean(axis=0)))
