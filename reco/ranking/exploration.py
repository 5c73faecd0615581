"""Exploration as the request pipeline sees it: the ranked candidates (`RankedList`), the policy
interface (`Explorer`), no exploration (`GreedyExplorer`) and one long-lived policy per arm (`ArmPolicies`,
over `reco.ranking.bandits`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from reco.ranking.candidates import SOURCES, Source
from reco.ranking.served_model import ServedModel


class Selection(Protocol):
    item: Any
    is_exploration: bool
    propensity: float


class Explorer(Protocol):
    def select(self, ranked: Sequence[Any], n: int) -> Sequence[Selection]: ...


class Ranked(NamedTuple):
    """A scored candidate. `category` feeds the diversity rule and Thompson sampling. (A tuple: 500 are
    built per request, and a frozen dataclass costs several times more to construct.)"""

    item_id: str
    score: float
    source: Source
    category: str
    anchor: str | None = None
    row: int = 0  # the item's row in the model's tables (0: not known)


class RankedList(Sequence[Ranked]):
    """The ranked candidates of one request as parallel arrays, in serving order; a `Ranked` is built
    only for the items read (the page and the exploration picks), not for all ~500 candidates.

    `scores` and `categories` are the columns Thompson sampling reads without touching the items.
    """

    def __init__(self, model: ServedModel, rows: np.ndarray, scores: np.ndarray, sources: np.ndarray,
                 anchors: np.ndarray) -> None:  # fmt: skip
        self._model = model
        # Arrays, read per item: a page reads ~20-40 of the ~500 (converting the columns to lists cost more).
        self._row_array, self._sources, self._anchors = rows, sources, anchors
        self.scores = scores

    def __len__(self) -> int:
        return len(self._row_array)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        ids, r, a = self._model.index.ids, int(self._row_array[k]), int(self._anchors[k])
        return Ranked(ids[r], float(self.scores[k]), SOURCES[self._sources[k]], self._model.row_category[r],
                      ids[a] if a else None, r)  # fmt: skip

    @property
    def categories(self) -> list[str]:
        cat = self._model.row_category
        return [cat[r] for r in self._row_array.tolist()]

    @property
    def category_codes(self) -> np.ndarray:
        """Category codes: what the exploration policies' cap reads (no strings built for ~500 candidates)."""
        return self._model.row_category_code[self._row_array]

    def category_names_at(self, positions: Sequence[int]) -> list[str]:
        """The category names of the items at these positions (Thompson sampling names the codes it found)."""
        cat, rows = self._model.row_category, self._row_array
        return [cat[r] for r in rows[positions].tolist()]


@dataclass(frozen=True, slots=True)
class Greedy:
    """No exploration: the top `n`, each chosen with probability 1."""

    item: Ranked
    is_exploration: bool = False
    propensity: float = 1.0


class GreedyExplorer:
    """The policy for arms configured without exploration.

    >>> r = [Ranked("a", 0.9, Source.popular, "x"), Ranked("b", 0.5, Source.popular, "y")]
    >>> [(s.item.item_id, s.propensity) for s in GreedyExplorer().select(r, 1)]
    [('a', 1.0)]
    """

    def select(self, ranked: Sequence[Ranked], n: int) -> list[Greedy]:
        return [Greedy(r) for r in ranked[:n]]


class ArmPolicies:
    """One long-lived exploration policy per arm, built from the arm's `ExplorationConfig`.

    Epsilon-greedy keeps its decay state across requests (`set_interactions` adopts the shared count
    from the store); Thompson sampling takes the per-request Beta evidence read with the features.
    With no evidence (Redis down) Thompson samples its prior, still a valid policy with propensities.

    >>> from types import SimpleNamespace as S
    >>> pol = ArmPolicies(seed=0)
    >>> a = S(arm="c", exploration=S(strategy="none", rate=0.0))
    >>> type(pol.explorer(a, {})).__name__
    'GreedyExplorer'
    """

    def __init__(self, seed: int | None = None, max_per_category: int | None = None) -> None:
        self.seed = seed
        self.max_per_category = max_per_category  # the rules' cap, kept by exploration too (bandits docstring)
        self._eps: dict[str, Any] = {}
        self._ts: dict[str, Any] = {}

    def explorer(self, assignment: Any, thompson: Mapping[str, tuple[float, float]]) -> Explorer:
        from reco.ranking.bandits import EpsilonGreedy, ThompsonSampling

        cfg, arm, cap = assignment.exploration, assignment.arm, self.max_per_category
        if cfg.strategy == "epsilon_greedy" and cfg.rate > 0:
            if arm not in self._eps:
                self._eps[arm] = EpsilonGreedy(epsilon=cfg.rate, max_per_category=cap, seed=self.seed)
            return self._eps[arm]
        if cfg.strategy == "thompson" and cfg.rate > 0:
            if arm not in self._ts:
                self._ts[arm] = ThompsonSampling(weight=cfg.rate, max_per_category=cap, seed=self.seed)
            return _WithStats(self._ts[arm], thompson)
        return GreedyExplorer()

    def set_interactions(self, arm: str, n: int) -> None:
        if arm in self._eps:
            self._eps[arm].set_interactions(n)


@dataclass(frozen=True)
class _WithStats:
    policy: Any
    stats: Mapping[str, tuple[float, float]]

    def select(self, ranked: Sequence[Ranked], n: int) -> Sequence[Selection]:
        return self.policy.select(ranked, n, self.stats)
