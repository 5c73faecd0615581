"""`PopularIndex`: the `popular` candidate source's lists, overall and per category, computed once per model
bundle (no I/O at request time: it answers with Redis down)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from reco.ranking.candidates import Candidate, Source


class PopularIndex:
    """Most popular items overall and per category, computed once (no I/O at request time).

    >>> pop = PopularIndex({"a": 5, "b": 9, "c": 1}, {"a": "Drama", "b": "Comedy", "c": "Drama"})
    >>> [c.item_id for c in pop.top(2)], [c.item_id for c in pop.top(5, exclude={"b"})]
    (['b', 'a'], ['a', 'c'])
    >>> [c.item_id for c in pop.top_in("Drama", 5)]
    ['a', 'c']
    """

    def __init__(self, counts: Mapping[str, float], category_of: Mapping[str, str]) -> None:
        # Stable order: count descending, then item id, so equal counts never reshuffle between loads.
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        top = ranked[0][1] if ranked and ranked[0][1] > 0 else 1.0
        self._ranked = [(iid, float(c) / top) for iid, c in ranked]
        self._by_cat: dict[str, list[tuple[str, float]]] = {}
        self._top: dict[int, list[Candidate]] = {}
        for iid, score in self._ranked:
            self._by_cat.setdefault(category_of.get(iid, ""), []).append((iid, score))

    def __len__(self) -> int:
        return len(self._ranked)

    @property
    def item_ids(self) -> list[str]:
        """Every item, most popular first."""
        return [iid for iid, _ in self._ranked]

    def top(self, n: int, exclude: Collection[str] = ()) -> list[Candidate]:
        if not exclude:  # the request path: one list per size, built once (candidates are immutable)
            cached = self._top.get(n)
            if cached is None:
                cached = self._top[n] = _take(self._ranked, n, ())
            return list(cached)
        return _take(self._ranked, n, exclude)

    def top_in(self, category: str, n: int, exclude: Collection[str] = ()) -> list[Candidate]:
        return _take(self._by_cat.get(category, []), n, exclude)


def _take(ranked: list[tuple[str, float]], n: int, exclude: Collection[str]) -> list[Candidate]:
    out: list[Candidate] = []
    for iid, score in ranked:
        if len(out) >= n:
            break
        if iid not in exclude:
            out.append(Candidate(iid, Source.popular, score))
    return out
