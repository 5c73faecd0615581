"""Exploration policies: propensities checked against simulation, decay per interaction, River shape."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
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


def test_thompson_propensities_are_the_selection_probabilities() -> None:
    """Horvitz-Thompson identity: with S the served slate and P(S | Z) the product of its logged conditionals,
    E[1{S = s} / P(S | Z)] = 1 for every slate s the policy can serve, exactly when the logged numbers are
    the probabilities the slate was drawn with (a marginal, or a conditional of another draw, fails it)."""
    ts = ThompsonSampling(weight=0.6, n_propensity_samples=50, uniform_mix=0.2, seed=5)
    n_draws = 8_000
    inv: dict = {}
    for _ in range(n_draws):
        sel = ts.select(_scored(), 2, STATS)
        key = tuple(s.item.item_id for s in sel)
        inv[key] = inv.get(key, 0.0) + 1.0 / math.prod(s.propensity for s in sel)
        inv.setdefault(("sq", key), 0.0)
        inv[("sq", key)] += 1.0 / math.prod(s.propensity for s in sel) ** 2
    heads = {"drama": ["i0", "i2"], "comedy": ["i1", "i4"], "horror": ["i3", "i5"]}
    feasible = {(heads[a][0], heads[b][int(a == b)]) for a in heads for b in heads}
    assert {k for k in inv if k[0] != "sq"} == feasible  # only category heads, every one of them
    for key in feasible:
        mean = inv[key] / n_draws
        se = math.sqrt(max(inv[("sq", key)] / n_draws - mean**2, 1e-12) / n_draws)
        assert abs(mean - 1.0) < 4 * se + 0.01, (key, mean, se)


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


def _cap_held(page: list, candidates: list, cap: int) -> bool:
    """The page holds at most `cap` items of a category, except where every item still unplaced at that
    slot was in a full category (then the page is filled as the rules fill it)."""
    counts: Counter = Counter()
    left = Counter(it.category for it in candidates)
    for it in page:
        if counts[it.category] >= cap and any(counts[c] < cap for c, n in left.items() if n > 0):
            return False
        counts[it.category] += 1
        left[it.category] -= 1
    return True


@settings(max_examples=40, deadline=None)
@given(
    cats=st.lists(st.integers(0, 4), min_size=1, max_size=30),
    n=st.integers(1, 25),
    cap=st.integers(1, 4),
    rate=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_served_pages_respect_the_cap_after_exploration(cats: list[int], n: int, cap: int, rate: float, seed: int):
    """Random candidate lists (scores with ties, few or many categories) and exploration rates: both
    policies' pages keep the cap wherever the candidates allow it, and the logged propensities are what
    `slate_propensities` recomputes for the served slate (epsilon-greedy)."""
    import random as _random

    r = _random.Random(seed)
    items = [ScoredItem(f"i{k}", float(r.randint(0, 5)), f"c{c}") for k, c in enumerate(cats)]
    items.sort(key=lambda it: -it.score)
    stats = {f"c{c}": (float(r.randint(0, 9)), float(r.randint(0, 30))) for c in range(5)}
    eps = EpsilonGreedy(epsilon=rate, protected_top=r.randint(0, 2), max_per_category=cap, seed=seed)
    ts = ThompsonSampling(weight=rate, n_propensity_samples=20, max_per_category=cap, seed=seed)
    for sel in (eps.select(items, n), ts.select(items, n, stats)):
        page = [s.item for s in sel]
        assert len(page) == min(n, len(items)) and len(set(page)) == len(page)
        assert _cap_held(page, items, cap), ([it.category for it in page], cap)
        assert all(0.0 < s.propensity <= 1.0 for s in sel)
    sel = eps.select(items, n)
    positions = [items.index(s.item) for s in sel]
    assert eps.slate_propensities(items, positions).tolist() == [s.propensity for s in sel]
    room = sum(min(k, cap) for k in Counter(it.category for it in items).values())
    if room >= min(n, len(items)):  # enough diversity: the cap holds outright
        for sel in (eps.select(items, n), ts.select(items, n, stats)):
            assert max(Counter(s.item.category for s in sel).values()) <= cap


def test_capped_epsilon_greedy_propensities_are_exact_by_enumeration_and_simulation() -> None:
    """Every slate of 3 out of 6 candidates: the product of `slate_propensities` sums to 1 over all slates,
    is 0 exactly for the slates that break the cap, and matches the served slates' frequencies."""
    import itertools

    items = [ScoredItem(i, 1.0 - k / 10, c) for k, (i, c) in enumerate(zip("abcdef", "xxxyyz", strict=True))]
    policy = EpsilonGreedy(epsilon=0.4, decay=1.0, protected_top=0, max_per_category=1, seed=11)
    prob = {s: float(np.prod(policy.slate_propensities(items, s))) for s in itertools.permutations(range(6), 3)}
    assert sum(prob.values()) == pytest.approx(1.0, abs=1e-12)
    for s, p in prob.items():
        assert (p > 0) == (len({items[i].category for i in s}) == 3), s
    n_draws = 20_000
    freq = Counter(tuple(items.index(x.item) for x in policy.select(items, 3)) for _ in range(n_draws))
    for s, p in prob.items():
        assert abs(freq[s] / n_draws - p) < 4 * math.sqrt(p * (1 - p) / n_draws) + 1e-9, (s, freq[s], p)


def test_thompson_slot_distribution_equals_ranking_every_item() -> None:
    """Only category heads can win a slot: with the same draws, ranking every remaining item (no head
    shortcut) gives the distribution whose value `select` logs for its first slot."""
    rng = np.random.default_rng(3)
    for trial in range(30):
        size = int(rng.integers(2, 40))
        items = [ScoredItem(str(i), float(s), f"c{c}") for i, (s, c) in
                 enumerate(zip(rng.integers(0, 6, size), rng.integers(0, 4, size), strict=True))]  # fmt: skip
        stats = {f"c{c}": (float(rng.integers(0, 20)), float(rng.integers(0, 80))) for c in range(4)}
        policy = ThompsonSampling(weight=0.5, n_propensity_samples=40, uniform_mix=0.1, seed=trial)
        first = policy.select(items, 1, stats)[0]
        scores = np.array([it.score for it in items])
        lo, hi = scores.min(), scores.max()
        norm = (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)
        cats = sorted({it.category for it in items})
        item_cat = np.array([cats.index(it.category) for it in items])
        params = np.array([policy.posterior(stats.get(c)) for c in cats])
        theta = np.random.default_rng(trial).beta(params[:, 0], params[:, 1], size=(40, len(cats)))
        vals = 0.5 * norm[None, :] + 0.5 * theta[:, item_cat]
        winners = np.argmax(vals, axis=1)  # ties: lower position, as `select`
        heads = {min(np.flatnonzero(item_cat == c), key=lambda i: (-norm[i], i)) for c in range(len(cats))}
        assert set(winners.tolist()) <= heads
        i = items.index(first.item)
        assert first.propensity == pytest.approx(0.9 * np.mean(winners == i) + 0.1 / len(heads))


def test_cap_parameter_is_checked() -> None:
    with pytest.raises(ValueError, match="max_per_category"):
        EpsilonGreedy(max_per_category=0)
    with pytest.raises(ValueError, match="uniform_mix"):
        ThompsonSampling(uniform_mix=1.5)


class _Columns(list):
    """A candidate list that carries its columns as `RankedList` does (scores, integer category codes and
    the names of given positions), so that `select` reads categories through the codes."""

    def __init__(self, items: list[ScoredItem], codes: list[int]) -> None:
        super().__init__(items)
        self.scores = np.array([it.score for it in items])
        self.category_codes = np.asarray(codes, dtype=np.int32)

    def category_names_at(self, positions: list[int]) -> list[str]:
        return [self[k].category for k in positions]


def _reference_thompson(policy: ThompsonSampling, items: list[ScoredItem], n: int, stats: dict) -> list:
    """Thompson sampling written out slot by slot with no shortcut: the same draws (the policy's seed, the
    same order of random numbers), every remaining item ranked under every draw, the cap applied by
    counting, the slot drawn by inverse CDF. [(item, is_exploration, propensity)]."""
    rng = np.random.default_rng(policy.seed)
    scores = np.array([it.score for it in items])
    lo, hi = scores.min(), scores.max()
    norm = (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)
    cats = sorted({it.category for it in items})
    params = np.array([policy.posterior(stats.get(c)) for c in cats])
    theta = rng.beta(params[:, 0], params[:, 1], size=(policy.n_propensity_samples, len(cats)))
    item_cat = np.array([cats.index(it.category) for it in items])
    greedy = sorted(range(len(items)), key=lambda i: (-scores[i], i))
    mix = policy.uniform_mix if policy.weight > 0 else 0.0
    left, placed, out = list(range(len(items))), Counter(), []
    for slot in range(min(n, len(items))):
        under = [i for i in left if policy.max_per_category is None or placed[item_cat[i]] < policy.max_per_category]
        pool = under or left
        heads = {min((i for i in pool if item_cat[i] == c), key=lambda i: (-norm[i], i)) for c in set(item_cat[pool])}
        heads = sorted(heads, key=lambda i: item_cat[i])  # the policy lists heads by category
        by_pos = sorted(heads)
        vals = (1 - policy.weight) * norm[by_pos][:, None] + (policy.weight * theta[:, item_cat[by_pos]]).T
        wins = Counter(by_pos[w] for w in vals.argmax(axis=0))  # ties: the better-placed head
        probs = [(1 - mix) * wins[h] / len(theta) + mix / len(heads) for h in heads]
        cum = np.cumsum(probs)
        k = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(heads) - 1)
        while probs[k] == 0.0:
            k -= 1
        pick = heads[k]
        out.append((items[pick], greedy.index(pick) > slot, probs[k]))
        left.remove(pick)
        placed[item_cat[pick]] += 1
    return out


def test_thompson_every_slot_equals_the_unshortcut_reference() -> None:
    """The kept-up-to-date head values, the contenders' shortcut and the integer-code path change no pick
    and no logged propensity: on random lists (ties, caps, weight 0 and 1, one to many categories) every slot
    equals `_reference_thompson`, for plain items and for a list with columns."""
    rng = np.random.default_rng(17)
    for trial in range(150):
        size, n_cats = int(rng.integers(1, 40)), int(rng.integers(1, 7))
        raw = rng.integers(0, 4, size) if trial % 3 == 0 else rng.normal(size=size)
        cat_of = rng.integers(0, n_cats, size)
        items = [ScoredItem(f"i{k}", float(s), f"c{c}") for k, (s, c) in enumerate(zip(raw, cat_of, strict=True))]
        stats = {f"c{c}": (float(rng.integers(0, 30)), float(rng.integers(0, 300))) for c in range(n_cats)}
        kwargs = {"weight": [0.0, 0.2, 0.6, 1.0][trial % 4], "n_propensity_samples": int(rng.integers(1, 50)),
                  "uniform_mix": [0.05, 0.0, 0.3][trial % 3], "max_per_category": [None, 1, 2, 3][trial % 4],
                  "seed": trial}  # fmt: skip
        n = int(rng.integers(1, 25))
        expected = _reference_thompson(ThompsonSampling(**kwargs), items, n, stats)
        codes = [7 * int(c) + 2 for c in cat_of]  # any integer codes, not in name order
        for given_items in (items, _Columns(items, codes)):
            got = ThompsonSampling(**kwargs).select(given_items, n, stats)
            assert [(s.item, s.is_exploration) for s in got] == [(e[0], e[1]) for e in expected], (trial, kwargs)
            assert [s.propensity for s in got] == pytest.approx([e[2] for e in expected], abs=1e-12), (trial, kwargs)


def test_thompson_equals_the_reference_on_realistic_lists() -> None:
    """Seeded regression for the request path's shortcuts (partial per-category orders, exploration flags
    from the placed items' ranks, plain-list slot loop): ~300 random lists of 1-600 candidates (a few of
    500 with 19 categories, as served), 1-25 categories, tied scores, caps None/1/3, weights 0/0.2/1,
    K 1-100, plain items and integer codes: every pick, flag and propensity equals `_reference_thompson`."""
    rng = np.random.default_rng(2024)
    for trial in range(300):
        realistic = trial % 25 == 0
        size = 500 if realistic else int(np.exp(rng.uniform(0.0, np.log(600))))
        n_cats = 19 if realistic else int(rng.integers(1, 26))
        raw = rng.integers(0, 5, size) if trial % 3 == 0 else np.sort(rng.normal(size=size))[::-1]
        if trial % 3 == 2:  # best-first with a locally reordered head, as the rules leave it
            raw[: min(size, 20)] = rng.permutation(raw[: min(size, 20)])
        cat_of = rng.integers(0, n_cats, size)
        items = [ScoredItem(f"i{k}", float(s), f"c{c}") for k, (s, c) in enumerate(zip(raw, cat_of, strict=True))]
        stats = {f"c{c}": (float(rng.integers(0, 51)), float(rng.integers(100, 2001))) for c in range(n_cats)}
        kwargs = {"weight": [0.0, 0.2, 1.0][trial % 3 if not realistic else 1],
                  "n_propensity_samples": 100 if realistic else int(rng.integers(1, 101)),
                  "max_per_category": [None, 1, 3][(trial // 3) % 3] if not realistic else 3,
                  "seed": 1000 + trial}  # fmt: skip
        n = 20 if realistic else int(rng.integers(1, 26))
        expected = _reference_thompson(ThompsonSampling(**kwargs), items, n, stats)
        codes = [5 * int(c) + 1 for c in cat_of]
        for given_items in (items, _Columns(items, codes)):
            got = ThompsonSampling(**kwargs).select(given_items, n, stats)
            assert [(s.item, s.is_exploration) for s in got] == [(e[0], e[1]) for e in expected], (trial, kwargs)
            assert [s.propensity for s in got] == pytest.approx([e[2] for e in expected], abs=1e-12), (trial, kwargs)


def test_thompson_reads_any_integer_codes_as_the_category_names() -> None:
    """The integer-code path gives the plain items' selections whatever the codes: negative codes and two
    codes naming one category (read by name instead), codes beyond 16 bits (the per-category sort on wide
    integers)."""
    rng = np.random.default_rng(5)
    for trial in range(40):
        size, n_cats = int(rng.integers(1, 60)), int(rng.integers(1, 6))
        cat_of = rng.integers(0, n_cats, size).tolist()
        scores = rng.normal(size=size).tolist()
        items = [ScoredItem(f"i{k}", s, f"c{c}") for k, (s, c) in enumerate(zip(scores, cat_of, strict=True))]
        stats = {f"c{c}": (float(rng.integers(0, 10)), float(rng.integers(0, 100))) for c in range(n_cats)}
        kwargs = {"weight": 0.5, "n_propensity_samples": 30, "max_per_category": [None, 1, 2][trial % 3], "seed": trial}
        expected = ThompsonSampling(**kwargs).select(items, 10, stats)
        for codes in ([c - 3 for c in cat_of], [c + 10 * (k % 2) for k, c in enumerate(cat_of)],
                      [32_760 + 3 * c for c in cat_of]):  # fmt: skip
            assert ThompsonSampling(**kwargs).select(_Columns(items, codes), 10, stats) == expected, (trial, codes)
