"""Exploration policies over a ranked list: epsilon-greedy and Thompson sampling.

Both return, for every served slot, the item, whether it was an exploration pick, and the propensity:
the probability with which the policy put that item at that slot given the items still unplaced. The
propensity is exact for `EpsilonGreedy` and a documented Monte-Carlo estimate for `ThompsonSampling`;
off-policy estimators and the A/B report read it from the impression log.

The classes follow River's shape: constructor parameters are stored unchanged, learned state is private,
and `seed` feeds the instance's own random generator (never the global one).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Generic, NamedTuple, TypeVar

import numpy as np

__all__ = ["EpsilonGreedy", "ScoredItem", "Selection", "ThompsonSampling"]

T = TypeVar("T")


class Selection(NamedTuple, Generic[T]):
    """One served slot: the item, whether exploration put it there, and P(item at this slot | policy).
    (A tuple: one is built per served slot on the request path, several times cheaper than a dataclass.)"""

    item: T
    is_exploration: bool
    propensity: float


class ScoredItem(NamedTuple):
    """A ranker output row, as Thompson sampling needs it (any object with ``score`` and ``category``
    attributes works; the selections hand back the objects given)."""

    item_id: str
    score: float
    category: str


class EpsilonGreedy:
    """Epsilon-greedy over a ranked list; epsilon decays per interaction, exploration skips the top slots.

    For each slot k = 0, 1, ... (filling from the top), with R the items not yet placed, in ranked order:

    * k < protected_top: R[0] (the greedy choice), propensity 1, never exploration;
    * otherwise, with probability 1 - eps: R[0], propensity 1 - eps; with probability eps: one of the
      other remaining items R[1:] uniformly (the explore pool), propensity eps / len(R[1:]), exploration.
      When R[1:] is empty the greedy item is the only option: propensity 1.

    So P(item at slot k | policy, R) = (1 - eps)·[item is R[0]] + eps / |R[1:]|·[item in R[1:]], exact.
    Epsilon is constant within one `select` call; it decays with `learn_one` (one call per observed
    interaction, not per request): eps_t = max(min_epsilon, epsilon · decay^t). API workers share the
    interaction count through Redis (`set_interactions`), so every worker decays alike.

    >>> policy = EpsilonGreedy(epsilon=0.5, protected_top=2, seed=7)
    >>> picks = policy.select(["a", "b", "c", "d", "e"], 4)
    >>> [p.item for p in picks[:2]], [p.propensity for p in picks[:2]]
    (['a', 'b'], [1.0, 1.0])
    >>> all(p.propensity in (0.5, 0.5 / 2, 0.5 / 1) for p in picks[2:])
    True
    >>> for _ in range(3):
    ...     policy.learn_one(clicked=False)
    >>> round(policy.current_epsilon, 6)
    0.498501
    """

    def __init__(
        self,
        epsilon: float = 0.1,
        decay: float = 0.999,
        min_epsilon: float = 0.01,
        protected_top: int = 3,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if not 0.0 <= min_epsilon <= 1.0:
            raise ValueError(f"min_epsilon must be in [0, 1], got {min_epsilon}")
        if protected_top < 0:
            raise ValueError(f"protected_top must be >= 0, got {protected_top}")
        self.epsilon = epsilon
        self.decay = decay
        self.min_epsilon = min_epsilon
        self.protected_top = protected_top
        self.seed = seed
        self._rng = random.Random(seed)
        self._n_interactions = 0
        self._n_clicks = 0

    @property
    def current_epsilon(self) -> float:
        """The exploration probability now: max(min_epsilon, epsilon · decay^interactions), never above epsilon."""
        return max(min(self.min_epsilon, self.epsilon), self.epsilon * self.decay**self._n_interactions)

    @property
    def n_interactions(self) -> int:
        return self._n_interactions

    def learn_one(self, clicked: bool) -> None:
        """One observed interaction (a served item clicked or not): decays epsilon by one step."""
        self._n_interactions += 1
        self._n_clicks += int(clicked)

    def set_interactions(self, n: int) -> None:
        """Adopt a shared interaction count (e.g. `RedisStore.interactions(arm)`)."""
        if n < 0:
            raise ValueError(f"interaction count must be >= 0, got {n}")
        self._n_interactions = n

    def select(self, ranked_items: Sequence[T], n: int) -> list[Selection[T]]:
        """Fill min(n, len(ranked_items)) slots from a best-first list."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        eps = self.current_epsilon
        # Positions, not items: only the chosen items are read from `ranked_items` (a lazy sequence stays lazy).
        remaining = list(range(len(ranked_items)))
        out: list[Selection[T]] = []
        for slot in range(min(n, len(remaining))):
            pool = len(remaining) - 1
            if slot < self.protected_top or pool == 0 or eps == 0.0:
                out.append(Selection(ranked_items[remaining.pop(0)], False, 1.0))
            elif self._rng.random() < eps:
                pick = 1 + self._rng.randrange(pool)
                out.append(Selection(ranked_items[remaining.pop(pick)], True, eps / pool))
            else:
                out.append(Selection(ranked_items[remaining.pop(0)], False, 1.0 - eps))
        return out


class ThompsonSampling:
    """Thompson sampling over item categories, blended into the ranker's order.

    Each category c has a Beta(prior_alpha + successes_c, prior_beta + failures_c) posterior of its
    click-through rate; the evidence comes from the store (`RedisStore.thompson_stats`), shared by all
    workers. One `select` draws one theta_c per category and re-ranks by

        (1 - weight) * score_norm + weight * theta_{category(item)}

    where score_norm is the ranker score min-max scaled to [0, 1] over the candidates (all 0 when the
    scores are equal). An item is exploration when it lands above its greedy (score) rank.

    Propensity (an estimate, documented): the policy's exact slot probabilities have no closed form, so
    `select` also draws K = n_propensity_samples further theta vectors from the same posteriors and
    re-ranks with each. The propensity of the item served at slot j is (1 + #re-samples that put the
    same item at slot j) / (K + 1): the served draw is itself one sample of the policy, which keeps the
    estimate in (0, 1] (never 0, so inverse-propensity weights stay finite; the floor is 1/(K + 1)). Its
    standard error is at most 0.5 / sqrt(K + 1); raise K for sharper estimates at a cost linear in K.

    >>> ts = ThompsonSampling(weight=0.3, n_propensity_samples=50, seed=1)
    >>> items = [ScoredItem("a", 3.0, "drama"), ScoredItem("b", 2.0, "comedy"), ScoredItem("c", 1.0, "drama")]
    >>> picks = ts.select(items, 2, {"drama": (5.0, 50.0), "comedy": (40.0, 10.0)})
    >>> len(picks), all(1 / 51 <= p.propensity <= 1.0 for p in picks)
    (2, True)
    """

    def __init__(
        self,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        weight: float = 0.2,
        n_propensity_samples: int = 100,
        seed: int | None = None,
    ) -> None:
        if prior_alpha <= 0 or prior_beta <= 0:
            raise ValueError("prior_alpha and prior_beta must be > 0")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight}")
        if n_propensity_samples < 1:
            raise ValueError(f"n_propensity_samples must be >= 1, got {n_propensity_samples}")
        self.prior_alpha = prior_alpha
        self.prior_beta = prior_beta
        self.weight = weight
        self.n_propensity_samples = n_propensity_samples
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def posterior(self, evidence: tuple[float, float] | None) -> tuple[float, float]:
        """Beta parameters from (successes, failures) evidence; negative evidence is floored at 0."""
        s, f = evidence or (0.0, 0.0)
        return self.prior_alpha + max(float(s), 0.0), self.prior_beta + max(float(f), 0.0)

    def select(
        self,
        ranked_items: Sequence[ScoredItem],
        n: int,
        stats: Mapping[str, tuple[float, float]],
    ) -> list[Selection[ScoredItem]]:
        """Fill min(n, len(ranked_items)) slots; stats maps category -> (successes, failures)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        n = min(n, len(ranked_items))
        if n == 0:
            return []
        # A sequence that carries its columns (`scores`, `categories`) is read without touching its items.
        scores = getattr(ranked_items, "scores", None)
        scores = np.asarray([it.score for it in ranked_items] if scores is None else scores, dtype=np.float64)
        if not np.all(np.isfinite(scores)):
            raise ValueError("scores must be finite")
        greedy_rank = np.empty(len(scores), dtype=np.int64)
        greedy_rank[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
        lo, hi = scores.min(), scores.max()
        norm = (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)

        categories = getattr(ranked_items, "categories", None)
        categories = [it.category for it in ranked_items] if categories is None else categories
        cats = sorted(set(categories))
        cat_index = {c: i for i, c in enumerate(cats)}
        item_cat = np.asarray([cat_index[c] for c in categories])
        params = np.asarray([self.posterior(stats.get(c)) for c in cats])
        # Row 0 is the served draw, rows 1..K the propensity re-samples.
        theta = self._rng.beta(params[:, 0], params[:, 1], size=(self.n_propensity_samples + 1, len(cats)))
        # Within a category every draw adds the same theta, so the category's order never changes: only its
        # first n items (by score, then position: the tie rule of `_top_n`) can reach the top n of any draw.
        # Ranking those alone gives the same slates at a fraction of the cost (a page of 20 from ~500).
        within = -norm if self.weight < 1.0 else np.zeros_like(norm)
        order = np.lexsort((np.arange(len(norm)), within, item_cat))
        first = np.ones(len(order), dtype=bool)
        first[1:] = item_cat[order[1:]] != item_cat[order[:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
        pool = np.sort(order[np.arange(len(order)) - start < n])  # ascending positions: ties keep their rule
        adjusted = (1.0 - self.weight) * norm[pool][None, :] + self.weight * theta[:, item_cat[pool]]
        top = pool[_top_n(adjusted, n)]
        chosen = top[0]
        propensity = (top == chosen[None, :]).mean(axis=0)
        return [
            Selection(ranked_items[i], bool(greedy_rank[i] > slot), float(propensity[slot]))
            for slot, i in enumerate(chosen)
        ]


def _top_n(values: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the n largest values of each row, best first (ties: lower index first, at the
    cut too: a stable sort, where an argpartition would pick among tied values arbitrarily).

    >>> _top_n(np.array([[1.0, 3.0, 3.0, 2.0, 3.0]]), 2).tolist()
    [[1, 2]]
    """
    rows, width = values.shape
    if n >= width:
        return np.argsort(-values, axis=1, kind="stable")
    cut = -np.partition(-values, n - 1, axis=1)[:, n - 1 : n]  # (rows, 1): each row's n-th largest value
    above = values > cut
    tied = values == cut
    # Fill each row with every value above the cut, then the lowest-index values equal to it.
    keep = above | (tied & (np.cumsum(tied, axis=1) <= n - above.sum(axis=1, keepdims=True)))
    cols = np.nonzero(keep)[1].reshape(rows, n)  # ascending index within each row
    order = np.argsort(-np.take_along_axis(values, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)
