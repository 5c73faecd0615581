"""Human-readable reasons for served items.

* Session-based items: "Because you viewed <title>", naming the session item that contributes most to the
  candidate: the largest product of the encoder's attention weight on that session position and the
  cosine similarity between that session item and the candidate. Without attention weights the
  similarity alone decides (and for a retrieval anchor, the anchor itself).
* Context-item similar: "Similar to <title>".
* Trending: "Trending now". Popular: "Popular in <genre>" (or "Popular right now" without a genre).
* Exploration picks say so: "Something different: ..." in front of the source reason.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from reco.ranking.candidates import Source

EXPLORATION_PREFIX = "Something new for you"


def anchors_by_attention(
    similarity: np.ndarray, attention: Sequence[float] | None, session_items: Sequence[str]
) -> list[str | None]:
    """For each candidate row of `similarity` (candidates x session items), the session item with the
    largest attention x similarity; None when no session item is similar at all.

    >>> sims = np.array([[0.9, 0.1], [0.2, 0.8]])
    >>> anchors_by_attention(sims, [0.5, 0.5], ["a", "b"])
    ['a', 'b']
    >>> anchors_by_attention(sims, [0.05, 0.95], ["a", "b"])
    ['b', 'b']
    """
    if similarity.size == 0 or not session_items:
        return [None] * similarity.shape[0]
    sims = np.clip(similarity, 0.0, None)
    if attention is not None and len(attention) == len(session_items):
        sims = sims * np.asarray(attention, dtype=sims.dtype)[None, :]
    best = sims.argmax(axis=1)
    positive = (sims[np.arange(len(best)), best] > 0).tolist()  # one array read, not one per candidate
    return [session_items[j] if ok else None for j, ok in zip(best.tolist(), positive, strict=True)]


def reason(
    source: Source | str,
    *,
    is_exploration: bool = False,
    anchor: str | None = None,
    title_of: Callable[[str], str | None] = lambda _: None,
    genre: str | None = None,
) -> str:
    """The reason string for one served item.

    >>> reason("session_similar", anchor="1", title_of={"1": "Toy Story (1995)"}.get)
    'Because you viewed Toy Story (1995)'
    >>> reason("context_similar", anchor="1", title_of={"1": "Heat"}.get)
    'Similar to Heat'
    >>> reason("trending"), reason("popular", genre="Drama"), reason("popular")
    ('Trending now', 'Popular in Drama', 'Popular right now')
    >>> reason("trending", is_exploration=True)
    'Something new for you: Trending now'
    """
    return reason_of(Source(source), is_exploration, anchor, title_of, genre)


def reason_of(
    source: Source, is_exploration: bool, anchor: str | None, title_of: Callable[[str], str | None], genre: str | None
) -> str:
    """`reason` for a `Source` already (the request path's 20 items a page: no conversion per item).

    >>> reason_of(Source.trending, True, None, lambda _: None, None)
    'Something new for you: Trending now'
    """
    return _reason_text(source, is_exploration, title_of(anchor) if anchor else None, genre)


@functools.lru_cache(maxsize=16384)
def _reason_text(source: Source, is_exploration: bool, title: str | None, genre: str | None) -> str:
    """The text for one (source, exploration, anchor title, genre): a page repeats few of them, and the
    strings are built once (remembered; the catalogue's titles bound how many there are)."""
    base = _base_reason(source, title, genre)
    return f"{EXPLORATION_PREFIX}: {base}" if is_exploration else base


def _base_reason(source: Source, title: str | None, genre: str | None) -> str:
    if source in (Source.session_similar, Source.session_query) and title:
        return f"Because you viewed {title}"
    if source == Source.context_similar and title:
        return f"Similar to {title}"
    if source == Source.trending:
        return "Trending now"
    if source == Source.new_items:
        return f"New in {genre}" if genre and genre != "unknown" else "New arrival"
    if genre and genre != "unknown":
        return f"Popular in {genre}"
    return "Popular right now"
