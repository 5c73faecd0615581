"""Exploration policies over a ranked list: epsilon-greedy and Thompson sampling, with a category cap.

**One propensity definition** for both policies (and for the off-policy estimators of
`reco.experiments.offpolicy`): the propensity logged for slot k is the exact probability with which the
policy put that item at slot k *given the items it placed in slots 0..k-1* (and the request's candidate
list and the policy's state for the request). The product of a slate's logged propensities is then the
probability of the slate, which is what the slate estimators' prefix weights need. Each policy samples each
slot from the very distribution whose value it logs, so the logged number is exact by construction:

* `EpsilonGreedy`: the distribution is closed-form (below).
* `ThompsonSampling`: K posterior draws per request fix the policy's state Z; each slot is sampled from
  the Monte-Carlo probability-matching distribution over the eligible items under Z, mixed with a
  uniform share. Given Z that distribution is known exactly, so the logged value is exactly P(item at
  slot | slots above, Z); Z is independent of rewards, so IPS over P(. | Z) is unbiased (the uniform share
  keeps every eligible item possible under every Z). Marginalised over Z, the pick is Thompson sampling's
  probability matching (up to the uniform share).

**The category cap** (`max_per_category`) is part of both policies: at each slot only items whose category
has fewer than `max_per_category` items on the page so far are eligible (when none is left, every remaining
item is: a small or one-genre list still fills the page, as the rules do). Exploration happens among
eligible items only, so the served page respects the cap *after* exploration and the propensities, computed
over the same eligible sets, stay exact. The list given to `select` is the rule-ordered list
(`reco.ranking.rules`), whose first `n` items already respect the cap: the greedy choice is unchanged.

API (callers: `reco.ranking.recommend.ArmPolicies`, the simulations and off-policy tests):

* ``EpsilonGreedy(...).select(ranked_items, n) -> list[Selection]``;
  ``.slate_propensities(ranked_items, positions) -> np.ndarray`` (the conditionals of any given slate);
* ``ThompsonSampling(...).select(ranked_items, n, stats) -> list[Selection]``;
* items need a ``category`` attribute (or the sequence a ``categories`` column) when a cap is set, and for
  Thompson sampling a ``score``.

The classes follow River's shape: constructor parameters are stored unchanged, learned state is private,
and `seed` feeds the instance's own random generator (never the global one).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import random
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

__all__ = ["EpsilonGreedy", "ScoredItem", "Selection", "ThompsonSampling"]

T = TypeVar("T")


class Selection(NamedTuple, Generic[T]):
    """One served slot: the item, whether exploration put it there, and P(item at this slot | slots above).
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


def _check_cap(max_per_category: int | None) -> None:
    if max_per_category is not None and max_per_category < 1:
        raise ValueError(f"max_per_category must be >= 1 or None, got {max_per_category}")


def category_codes(ranked_items: Sequence[Any]) -> np.ndarray:
    """Integer code of each item's category (first seen = 0): the sequence's `category_codes` or
    `categories` column when it has one, else each item's `category`.

    >>> category_codes([ScoredItem("a", 1.0, "x"), ScoredItem("b", 0.5, "y"), ScoredItem("c", 0.1, "x")]).tolist()
    [0, 1, 0]
    """
    codes = getattr(ranked_items, "category_codes", None)
    if codes is not None:
        return np.asarray(codes, dtype=np.int64)
    cats = getattr(ranked_items, "categories", None)
    cats = [it.category for it in ranked_items] if cats is None else cats
    index: dict[Hashable, int] = {}
    return np.fromiter((index.setdefault(c, len(index)) for c in cats), dtype=np.int64, count=len(cats))


class _Page:
    """What is placed so far, for epsilon-greedy: the placed positions (the remaining ones, in ranked order, are
    the others: read by rank without a list of all ~500 positions, and the placed are ~20), per-category
    counts on the page and among the remaining, and the number of eligible items (remaining, category under
    the cap), kept up to date per placement so that no slot scans the list. When no remaining item is under
    the cap, every remaining item is eligible (`capped` False). Category codes are read per item (`.item`):
    a page reads a few dozen of the ~500, where converting them all to a list costs more."""

    def __init__(self, size: int, codes: np.ndarray | None, cap: int | None) -> None:
        self.size = size
        self.taken: list[int] = []  # placed positions, ascending
        self.taken_set: set[int] = set()
        self.prefix = 0  # positions below it are all placed (the greedy scan starts there)
        self.cap = cap if codes is not None else None
        self.codes = codes if self.cap is not None else None
        self.left = np.bincount(codes).tolist() if self.cap is not None else []  # type: ignore[arg-type]
        self.placed = [0] * len(self.left)
        self.under = size  # remaining items whose category is under the cap
        self.capped = self.cap is not None and size > 0  # = cap set and under > 0 (`place` keeps it)

    @property
    def n_remaining(self) -> int:
        return self.size - len(self.taken)

    def position(self, k: int) -> int:
        """The k-th remaining position (in ranked order)."""
        for t in self.taken:
            if t > k:
                break
            k += 1
        return k

    def index(self, pos: int) -> int:
        """The rank of a remaining position among the remaining (`position`'s inverse)."""
        return pos - bisect.bisect_left(self.taken, pos)

    def eligible(self, pos: int) -> bool:
        return not self.capped or self.placed[self.codes.item(pos)] < self.cap  # type: ignore[union-attr,operator]

    def greedy(self) -> tuple[int, int]:
        """(index among the remaining, position) of the first eligible item."""
        pos = self.prefix
        if not self.capped:
            return 0, pos
        taken, codes, placed, cap, k = self.taken_set, self.codes, self.placed, self.cap, 0
        while pos in taken or placed[codes.item(pos)] >= cap:  # type: ignore[union-attr,operator]
            k += pos not in taken
            pos += 1
        return k, pos

    def n_eligible(self) -> int:
        return self.under if self.capped else self.n_remaining

    def place(self, pos: int) -> int:
        bisect.insort(self.taken, pos)
        taken, prefix = self.taken_set, self.prefix
        taken.add(pos)
        while prefix in taken:
            prefix += 1
        self.prefix = prefix
        if self.cap is not None:
            c = self.codes.item(pos)  # type: ignore[union-attr]
            self.left[c] -= 1
            if self.placed[c] < self.cap:
                self.under -= 1
            self.placed[c] += 1
            if self.placed[c] == self.cap:
                self.under -= self.left[c]  # the category's other items leave the eligible set
            self.capped = self.under > 0
        return pos


class EpsilonGreedy:
    """Epsilon-greedy over a ranked list; epsilon decays per interaction, exploration skips the top slots.

    For each slot k = 0, 1, ... (filling from the top), with E the eligible items (not yet placed, category
    under the cap; `_Page.eligible`) in ranked order:

    * k < protected_top: E[0] (the greedy choice), propensity 1, never exploration;
    * otherwise, with probability 1 - eps: E[0], propensity 1 - eps; with probability eps: one of the
      other eligible items E[1:] uniformly (the explore pool), propensity eps / len(E[1:]), exploration.
      When E[1:] is empty the greedy item is the only option: propensity 1.

    So P(item at slot k | slots above) = (1 - eps)·[item is E[0]] + eps / |E[1:]|·[item in E[1:]], exact.
    Epsilon is constant within one `select` call; it decays with `learn_one` (one call per observed
    interaction, not per request): eps_t = max(min_epsilon, epsilon · decay^t). API workers share the
    interaction count through Redis (`set_interactions`), so every worker decays alike.

    >>> policy = EpsilonGreedy(epsilon=0.5, protected_top=2, seed=7)
    >>> picks = policy.select(["a", "b", "c", "d", "e"], 4)
    >>> [p.item for p in picks[:2]], [p.propensity for p in picks[:2]]
    (['a', 'b'], [1.0, 1.0])
    >>> all(p.propensity in (0.5, 0.5 / 2, 0.5 / 1) for p in picks[2:])
    True
    >>> capped = EpsilonGreedy(epsilon=1.0, protected_top=0, max_per_category=1, seed=0)
    >>> page = capped.select([ScoredItem(i, 0.0, c) for i, c in zip("abcd", "xxyy")], 2)
    >>> sorted(p.item.category for p in page)
    ['x', 'y']
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
        max_per_category: int | None = None,
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
        _check_cap(max_per_category)
        self.epsilon = epsilon
        self.decay = decay
        self.min_epsilon = min_epsilon
        self.protected_top = protected_top
        self.max_per_category = max_per_category
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

    def _page(self, ranked_items: Sequence[Any]) -> _Page:
        codes = category_codes(ranked_items) if self.max_per_category is not None else None
        return _Page(len(ranked_items), codes, self.max_per_category)

    def _options(self, slot: int, n_eligible: int, eps: float) -> tuple[float, float]:
        """(P(greedy item), P(each other eligible item)) at this slot."""
        pool = n_eligible - 1
        if slot < self.protected_top or pool == 0 or eps == 0.0:
            return 1.0, 0.0
        return 1.0 - eps, eps / pool

    def select(self, ranked_items: Sequence[T], n: int) -> list[Selection[T]]:
        """Fill min(n, len(ranked_items)) slots from a best-first list."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        eps = self.current_epsilon
        page = self._page(ranked_items)
        out: list[Selection[T]] = []
        # Positions, not items: only the chosen items are read from `ranked_items` (a lazy sequence stays lazy).
        for slot in range(min(n, len(ranked_items))):
            greedy, greedy_pos = page.greedy()
            p_greedy, p_other = self._options(slot, page.n_eligible(), eps)
            if p_other > 0.0 and self._rng.random() < eps:
                while True:  # uniform over the other remaining items, kept when eligible: uniform over the pool
                    k = self._rng.randrange(page.n_remaining - 1)
                    pos = page.position(k + (k >= greedy))
                    if page.eligible(pos):
                        break
                out.append(Selection(ranked_items[page.place(pos)], True, p_other))
            else:
                out.append(Selection(ranked_items[page.place(greedy_pos)], False, p_greedy))
        return out

    def slate_propensities(self, ranked_items: Sequence[Any], positions: Sequence[int]) -> np.ndarray:
        """P(positions[k] at slot k | positions[:k] above it) under the current epsilon, for any slate of
        positions into `ranked_items` (0 where the policy could not have placed it): the target policy's
        side of an off-policy estimate, and `select`'s propensities recomputed.

        >>> EpsilonGreedy(epsilon=0.2, protected_top=0).slate_propensities("abc", [1, 0]).tolist()
        [0.1, 0.8]
        """
        eps = self.current_epsilon
        page = self._page(ranked_items)
        out = np.zeros(len(positions))
        for slot, pos in enumerate(positions):
            if pos not in range(page.size) or pos in page.taken_set or not page.eligible(pos):
                return out  # impossible here: this and every later slot has probability 0
            greedy, _ = page.greedy()
            p_greedy, p_other = self._options(slot, page.n_eligible(), eps)
            out[slot] = p_greedy if page.index(pos) == greedy else p_other
            page.place(pos)
        return out


class ThompsonSampling:
    """Thompson sampling over item categories, blended into the ranker's order, one slot at a time.

    Each category c has a Beta(prior_alpha + successes_c, prior_beta + failures_c) posterior of its
    click-through rate; the evidence comes from the store (`RedisStore.thompson_stats`), shared by all
    workers. An item's blended value under a draw theta is

        (1 - weight) * score_norm + weight * theta_{category(item)}

    where score_norm is the ranker score min-max scaled to [0, 1] over the candidates (all 0 when the
    scores are equal). Within a category every draw adds the same theta, so only each category's best
    remaining item (by score, then position: its *head*) can win a slot.

    One `select` draws K = n_propensity_samples theta vectors (the request's state Z). Slot by slot, with E
    the heads of the categories still under the cap (`max_per_category`; all heads when none is):

        P(e at slot | slots above, Z) = (1 - uniform_mix) * #draws in which e has the best blended value / K
                                        + uniform_mix / |E|

    and the slot is sampled from exactly that distribution, whose value is the logged propensity (exact, not
    an estimate: see the module docstring). The uniform share keeps every head possible (propensity
    >= uniform_mix / |E|), so importance weights stay bounded and any target policy that places category
    heads is estimable; with weight 0 the policy is the greedy order with certainty. An item is exploration
    when it lands above its greedy (score) rank. Cost: the K x categories draws per request, then per slot K x
    the heads that can still win a draw (a head whose greatest value under the draws is below another's least
    cannot; with one such head left, the usual slot, it costs two maxima over the eligible heads' bounds, kept
    up to date per slot, and no array work), with the same counts as comparing all.

    >>> ts = ThompsonSampling(weight=0.3, n_propensity_samples=50, seed=1)
    >>> items = [ScoredItem("a", 3.0, "drama"), ScoredItem("b", 2.0, "comedy"), ScoredItem("c", 1.0, "drama")]
    >>> picks = ts.select(items, 2, {"drama": (5.0, 50.0), "comedy": (40.0, 10.0)})
    >>> len(picks), all(0.05 / 2 <= p.propensity <= 1.0 for p in picks)
    (2, True)
    """

    def __init__(
        self,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        weight: float = 0.2,
        n_propensity_samples: int = 100,
        uniform_mix: float = 0.05,
        max_per_category: int | None = None,
        seed: int | None = None,
    ) -> None:
        if prior_alpha <= 0 or prior_beta <= 0:
            raise ValueError("prior_alpha and prior_beta must be > 0")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight}")
        if n_propensity_samples < 1:
            raise ValueError(f"n_propensity_samples must be >= 1, got {n_propensity_samples}")
        if not 0.0 <= uniform_mix <= 1.0:
            raise ValueError(f"uniform_mix must be in [0, 1], got {uniform_mix}")
        _check_cap(max_per_category)
        self.prior_alpha = prior_alpha
        self.prior_beta = prior_beta
        self.weight = weight
        self.n_propensity_samples = n_propensity_samples
        self.uniform_mix = uniform_mix
        self.max_per_category = max_per_category
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
        lo, hi = scores.min(), scores.max()
        if not (math.isfinite(lo) and math.isfinite(hi)):  # min and max propagate NaN: all finite iff both are
            raise ValueError("scores must be finite")
        norm = (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)

        cats, codes, cat_codes, counts = _category_index(ranked_items)
        prior_a, prior_b, no_evidence = self.prior_alpha, self.prior_beta, (0.0, 0.0)
        evidence = [stats.get(c) or no_evidence for c in cats]  # `posterior`, inlined (~20 categories)
        theta = self._rng.beta(np.array([prior_a + max(float(s), 0.0) for s, _ in evidence]),
                               np.array([prior_b + max(float(f), 0.0) for _, f in evidence]),
                               size=(self.n_propensity_samples, len(cats)))  # fmt: skip
        mix = self.uniform_mix if self.weight > 0.0 else 0.0
        # weight * theta, one row per category: the same products, laid out for `_Heads`' per-category reads.
        blend = np.multiply(theta.T, self.weight, order="C")
        heads = _Heads(norm, codes, cat_codes, counts, self.max_per_category, (1.0 - self.weight) * norm, blend)
        # The slots' uniforms in one call: the same numbers, and the same generator state after, as one
        # `random()` per slot (each slot draws exactly one).
        placed, logged = heads.fill(mix, self._rng.random(n).tolist())
        # Exploration: placed below its greedy (score, then position) rank, i.e. not among the greedy order's
        # first slot + 1 items: only the greedy order's first n are looked up (an item not among them has rank
        # >= n > slot), not the ranks of all ~500 candidates.
        top = dict(zip((-scores).argsort(kind="stable")[:n].tolist(), range(n), strict=True))
        return [Selection(ranked_items[pos], top.get(pos, n) > slot, p)
                for slot, (pos, p) in enumerate(zip(placed, logged, strict=True))]  # fmt: skip


class _Heads:
    """Each category's best remaining item (by normalised score, then position), the categories whose head
    may fill the next slot under the cap (`elig`), the slot's distribution over them, and taking a head (the
    category's next item becomes its head). State is kept in plain lists, updated for the one category a
    slot takes: a slot touches ~20 of them, where numpy calls cost more.

    `blend` (categories, K) holds each category's weight * theta (a category's draws contiguous); `rows[c]`
    its head's blended value under each draw, blend[c] + base of the head (the same floats as the terms
    summed item by item), computed only when a slot compares that head draw by draw (most never are) and
    dropped when the head is taken. `lows` and `highs`, aligned with `elig`, are each eligible head's least
    and greatest blended value, as floats: base + least and base + greatest of its blend row (float addition
    is monotone, so they bound the very sums in `rows`).

    `elig` is the categories with a head under the cap, ascending; when none is left (or with no cap), every
    category with a head (`capped` False from then on: no category gets back under the cap)."""

    def __init__(self, norm: np.ndarray, codes: np.ndarray, cat_codes: list[int], counts: np.ndarray,
                 cap: int | None, base: np.ndarray, blend: np.ndarray) -> None:  # fmt: skip
        # The items by (category code, -score, position): each category's items best first, from `first[c]`.
        # Two stable sorts, the second on 16-bit codes (a radix sort), cost less than a three-key lexsort.
        # Only the heads are read out here, and one item per slot in `take`: not the ~500 positions.
        order = (-norm).argsort(kind="stable")
        small = codes.astype(np.int16) if len(counts) <= 2**15 else codes
        self.order = order[small[order].argsort(kind="stable")]
        sizes = counts.tolist()
        starts = list(itertools.accumulate(sizes, initial=0))
        self.first = [starts[k] for k in cat_codes]
        self.sizes = [sizes[k] for k in cat_codes]
        n_cats = len(cat_codes)
        self.next = [0] * n_cats  # index of each category's head from its first, = items placed
        heads = self.order[self.first]
        self.pos = heads.tolist()  # each category's head (-1: none left); all have one at first
        self.cap, self.capped = cap, cap is not None
        self.base, self.blend, self.draws = base, blend, blend.shape[1]
        least, greatest = np.minimum.reduce(blend, axis=1), np.maximum.reduce(blend, axis=1)
        self.least, self.greatest = least.tolist(), greatest.tolist()
        self.elig = list(range(n_cats))
        head_base = base[heads]
        self.lows, self.highs = (head_base + least).tolist(), (head_base + greatest).tolist()
        # Column c of `vals` (draws, categories) holds the blended values of the head at position `at[c]`
        # (stale once the head is taken): the contenders' columns are compared with one `take` and one argmax
        # along contiguous rows, cheaper than stacking per-category rows and reducing across them.
        self.vals = np.empty((self.draws, n_cats))
        self.at = [-1] * n_cats

    def fill(self, mix: float, uniforms: list[float]) -> tuple[list[int], list[float]]:
        """Fill one slot per number of `uniforms` (in [0, 1), in order), each sampled by inverse CDF from its
        distribution with its number: (the positions placed, the logged propensities). Plain floats: numpy calls on
        ~20 numbers cost more.

        Only contenders are compared draw by draw: a head whose greatest value is below another head's least
        (the floor) wins no draw. With one contender (`_one_winner`: the others' greatest values are all
        below the floor) no draw is compared; a concentrated posterior (much evidence) against the score gaps
        between heads makes that the usual slot. The counts are those of comparing every eligible head, so
        the distribution, and the logged propensity, are unchanged."""
        lows, highs, bisect_right = self.lows, self.highs, bisect.bisect_right  # (`take` updates both in place)
        placed, logged = [], []
        for u in uniforms:
            m = len(lows)
            if m == 1:
                probs = cum = (1.0,)
            else:
                floor = max(lows)  # the head with the greatest least value is a contender (its high >= floor)
                contenders = [i for i, h in enumerate(highs) if h >= floor]
                if len(contenders) == 1:
                    probs, cum = _one_winner(m, contenders[0], mix)
                else:
                    probs = self.distribution(contenders, mix)
                    cum = list(itertools.accumulate(probs))
            k = min(bisect_right(cum, u * cum[-1]), m - 1)
            while probs[k] == 0.0:  # float edge of the cumulative sum: step back to a possible head
                k -= 1
            placed.append(self.take(k))
            logged.append(probs[k])
        return placed, logged

    def distribution(self, contenders: list[int], mix: float) -> list[float]:
        """P(each eligible category's head at this slot | slots above, the draws), summing to 1, with two or
        more contenders (indices into `elig`): their heads compared under every draw."""
        elig, pos, at, vals = self.elig, self.pos, self.at, self.vals
        share = mix / len(elig)
        probs = [share] * len(elig)
        # Columns in head-position order, so that the first maximum is the better-ranked head on ties (weight 0,
        # equal scores), as in the greedy order.
        heads = sorted([(pos[elig[i]], i) for i in contenders])
        cols = []
        for p, i in heads:
            c = elig[i]
            cols.append(c)
            if at[c] != p:
                at[c] = p
                np.add(self.blend[c], self.base.item(p), out=vals[:, c])
        if len(cols) == 2:  # (the usual comparison) the first wins its ties, as argmax's first maximum
            first = int(np.count_nonzero(vals[:, cols[0]] >= vals[:, cols[1]]))
            won = [first, self.draws - first]
        else:
            won = np.bincount(vals.take(cols, axis=1).argmax(axis=1), minlength=len(cols)).tolist()
        draws, keep = self.draws, 1.0 - mix
        for (_, i), w in zip(heads, won, strict=True):
            probs[i] = keep * (w / draws) + share
        return probs

    def take(self, k: int) -> int:
        """Place the head of the k-th eligible category: its position."""
        elig, pos = self.elig, self.pos
        c = elig[k]
        taken = pos[c]
        count = self.next[c] = self.next[c] + 1  # also the category's count on the page
        if count < self.sizes[c]:
            p = pos[c] = self.order.item(self.first[c] + count)
            b = self.base.item(p)
            if not (self.capped and count == self.cap):  # still eligible, with its next item's bounds
                self.lows[k], self.highs[k] = b + self.least[c], b + self.greatest[c]
                return taken
        else:
            pos[c] = -1
        del elig[k], self.lows[k], self.highs[k]
        if not elig and self.capped:  # every category with a head is at the cap: all of them are eligible
            self.capped = False
            elig[:] = [c for c, p in enumerate(pos) if p >= 0]
            self.lows[:] = [self.base.item(pos[c]) + self.least[c] for c in elig]
            self.highs[:] = [self.base.item(pos[c]) + self.greatest[c] for c in elig]
        return taken


@functools.lru_cache(maxsize=4096)
def _one_winner(n_eligible: int, winner: int, mix: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A slot's distribution when one eligible head wins every draw (the usual slot), and its cumulative
    sums: the floats `_Heads.distribution`'s formula gives, built once per (n_eligible, winner, mix)."""
    share = mix / n_eligible
    probs = [share] * n_eligible
    probs[winner] = (1.0 - mix) + share
    return tuple(probs), tuple(itertools.accumulate(probs))


def _category_index(ranked_items: Sequence[Any]) -> tuple[list[str], np.ndarray, list[int], np.ndarray]:
    """(the categories present, sorted; each item's integer code; each category's code; the number of items
    of each code). A sequence with `category_codes` and `category_names_at` (`RankedList`) is read through
    its integer codes: no string per candidate. Otherwise a category's code is its index."""
    codes = getattr(ranked_items, "category_codes", None)
    names_at = getattr(ranked_items, "category_names_at", None)
    if codes is not None and names_at is not None and len(codes):
        codes = np.asarray(codes, dtype=np.int64)
        try:
            counts = np.bincount(codes)
        except ValueError:  # negative codes: by name, below
            counts = None
        if counts is not None:
            # Linear in the list (no sort of ~500 codes): the codes present, one position of each for its name.
            present = counts.nonzero()[0]
            where = np.empty(len(counts), dtype=np.int64)
            where[codes] = np.arange(len(codes))
            names = names_at(where[present].tolist())
            if len(set(names)) == len(names):  # one name per code (else merge them by name, below)
                order = sorted(range(len(names)), key=names.__getitem__)
                present = present.tolist()
                return [names[i] for i in order], codes, [present[i] for i in order], counts
    categories = getattr(ranked_items, "categories", None)
    categories = [it.category for it in ranked_items] if categories is None else categories
    cats = sorted(set(categories))
    cat_index = {c: i for i, c in enumerate(cats)}
    codes = np.fromiter((cat_index[c] for c in categories), dtype=np.int64, count=len(categories))
    return cats, codes, list(range(len(cats))), np.bincount(codes, minlength=len(cats))
