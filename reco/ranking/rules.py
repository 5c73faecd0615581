"""Business rules applied after ranking and before exploration.

1. Drop items already consumed: the session's, and (`drop_history`) the user's recent history across
   sessions, as long as the store keeps it (`RecoSettings.user_items_max`, 500 by default): a shop does not
   recommend again what the user has just viewed or bought.
2. Page-type rules: a product page never recommends its own item; a cart page never recommends what is
   already in the cart.
3. Diversity: at most `max_per_category` items of one category among the first `window` positions (the
   exploration policies keep the same cap after exploring: `reco.ranking.bandits`).
   Items over the cap are moved behind the others rather than dropped, so a small or one-genre
   candidate list still fills the page.

The rules take any ranked objects that have an `item_id`, best first, and keep their order otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from reco.data.events import PageType


class HasItemId(Protocol):
    @property
    def item_id(self) -> str: ...


T = TypeVar("T", bound=HasItemId)


@dataclass(frozen=True)
class RuleConfig:
    drop_consumed: bool = True
    drop_history: bool = True  # also drop the user's history (needs drop_consumed); off: the session only
    max_per_category: int | None = 3  # None: no diversity cap


def excluded_items(
    page_type: PageType | str,
    *,
    context_item_id: str | None,
    consumed: Collection[str],
    cart: Collection[str],
    history: Collection[str] = (),
    config: RuleConfig = RuleConfig(),
) -> set[str]:
    """Items that must not be shown on this page: `consumed` (the session) and `history` (the user's recent
    items) unless switched off, the product page's own item, the cart page's cart.

    >>> sorted(excluded_items("product", context_item_id="p", consumed={"a"}, cart={"c"}, history=["h"]))
    ['a', 'h', 'p']
    >>> sorted(excluded_items("cart", context_item_id=None, consumed=(), cart={"c"}))
    ['c']
    """
    out = set(consumed) if config.drop_consumed else set()
    if config.drop_consumed and config.drop_history:
        out.update(history)
    page = PageType(page_type)
    if page == PageType.product and context_item_id:
        out.add(context_item_id)
    if page == PageType.cart:
        out.update(cart)
    return out


def diversified_order(categories: Sequence[Hashable], max_per_category: int, window: int) -> list[int]:
    """Positions of a best-first list reordered so that no category has more than `max_per_category`
    items in the first `window` slots; the deferred items follow in their ranked order. Only the items
    needed to fill the window are looked at (the rest keep their order), so the cost is O(window + deferred).

    >>> diversified_order(["x", "x", "x", "y", "x"], 2, window=3)
    [0, 1, 3, 2, 4]
    """
    head, rest = _diversified_head(categories, max_per_category, window)
    return head + list(range(rest, len(categories)))


def _diversified_head(categories: Sequence[Hashable], max_per_category: int, window: int) -> tuple[list[int], int]:
    """`diversified_order` as (the reordered positions, the first position after them): the order is the
    first part followed by every position from the second on, unchanged."""
    if max_per_category <= 0:
        raise ValueError("max_per_category must be >= 1")
    head: list[int] = []
    deferred: list[int] = []
    counts: dict[Hashable, int] = {}
    for pos, cat in enumerate(categories):
        if len(head) >= window:
            return head + deferred, pos
        if counts.get(cat, 0) >= max_per_category:
            deferred.append(pos)
            continue
        counts[cat] = counts.get(cat, 0) + 1
        head.append(pos)
    return head + deferred, len(categories)


def cap_per_category(
    ranked: Sequence[T], category_of: Callable[[str], str], max_per_category: int, window: int
) -> list[T]:
    """Reorder so that no category has more than `max_per_category` items in the first `window` slots.

    >>> from types import SimpleNamespace as S
    >>> items = [S(item_id=i) for i in "abcde"]
    >>> cats = {"a": "x", "b": "x", "c": "x", "d": "y", "e": "x"}
    >>> [i.item_id for i in cap_per_category(items, cats.get, 2, window=3)]
    ['a', 'b', 'd', 'c', 'e']
    """
    order = diversified_order([category_of(item.item_id) for item in ranked], max_per_category, window)
    return [ranked[pos] for pos in order]


def rule_positions(
    keys: np.ndarray,
    categories: np.ndarray,
    *,
    drop: Collection[int] | np.ndarray,
    window: int,
    config: RuleConfig = RuleConfig(),
) -> np.ndarray:
    """All rules in order over a best-first list given as integer columns (the request path's: item rows
    and category codes; keys are non-negative): the positions to serve, in serving order. `drop` holds the
    keys that `excluded_items` excludes; then the diversity cap orders the first `window` slots.

    >>> rule_positions(np.array([7, 3, 5, 9]), np.array([0, 0, 0, 1]), drop={3}, window=2,
    ...                config=RuleConfig(max_per_category=1)).tolist()
    [0, 3, 2]
    """
    if len(drop):  # a mask over the key range: several times cheaper than np.isin for ~500 keys
        dropped = drop if isinstance(drop, np.ndarray) else np.fromiter(drop, dtype=np.int64, count=len(drop))
        hit = np.zeros(max(int(keys.max(initial=0)), int(dropped.max())) + 1, dtype=bool)
        hit[dropped] = True
        kept = np.flatnonzero(~hit[keys])
    else:
        kept = np.arange(len(keys))
    if config.max_per_category is None:
        return kept
    # Plain ints for the walk (iterating a numpy array boxes every element), and only as far as it goes.
    head, rest = _diversified_head(categories[kept].tolist(), config.max_per_category, window)
    return np.concatenate([kept[head], kept[rest:]])


def apply_rules(
    ranked: Sequence[T],
    *,
    page_type: PageType | str,
    context_item_id: str | None = None,
    consumed: Collection[str] = (),
    cart: Collection[str] = (),
    history: Collection[str] = (),
    category_of: Callable[[str], str],
    window: int,
    config: RuleConfig = RuleConfig(),
) -> list[T]:
    """`rule_positions` over ranked objects.

    >>> from types import SimpleNamespace as S
    >>> items = [S(item_id=i) for i in ["p", "a", "b", "c"]]
    >>> out = apply_rules(items, page_type="product", context_item_id="p", consumed={"a"},
    ...                   category_of=lambda i: "x", window=2, config=RuleConfig(max_per_category=1))
    >>> [i.item_id for i in out]
    ['b', 'c']
    """
    dropped = excluded_items(
        page_type, context_item_id=context_item_id, consumed=consumed, cart=cart, history=history, config=config
    )
    drop = {pos for pos, item in enumerate(ranked) if item.item_id in dropped}
    categories = np.array([category_of(item.item_id) for item in ranked], dtype=object)
    positions = rule_positions(np.arange(len(ranked)), categories, drop=drop, window=window, config=config)
    return [ranked[pos] for pos in positions]
