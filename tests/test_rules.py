"""Business rules: consumed items, page-type exclusions, the per-category diversity cap."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from reco.ranking.rules import RuleConfig, apply_rules, cap_per_category, excluded_items


@dataclass(frozen=True)
class It:
    item_id: str


CATS = {"a": "x", "b": "x", "c": "x", "d": "y", "e": "z", "f": "x"}


def ids(items: list[It]) -> list[str]:
    return [i.item_id for i in items]


def test_session_items_are_dropped_and_order_kept() -> None:
    out = apply_rules([It(i) for i in "abcdef"], page_type="home", consumed={"b", "e"}, category_of=CATS.get,
                      window=10, config=RuleConfig(max_per_category=None))  # fmt: skip
    assert ids(out) == ["a", "c", "d", "f"]


def test_consumed_items_stay_when_the_rule_is_off() -> None:
    cfg = RuleConfig(drop_consumed=False, max_per_category=None)
    out = apply_rules([It("a"), It("b")], page_type="home", consumed={"a"}, category_of=CATS.get, window=2, config=cfg)
    assert ids(out) == ["a", "b"]


def test_product_page_never_shows_its_own_item_and_cart_page_skips_the_cart() -> None:
    assert excluded_items("product", context_item_id="a", consumed=(), cart={"b"}) == {"a"}
    assert excluded_items("cart", context_item_id=None, consumed=(), cart={"b"}) == {"b"}
    assert excluded_items("home", context_item_id="a", consumed=(), cart={"b"}) == set()


def test_unknown_page_type_is_an_error() -> None:
    with pytest.raises(ValueError):
        excluded_items("checkout", context_item_id=None, consumed=(), cart=())


def test_category_cap_holds_in_the_window_and_keeps_every_item() -> None:
    ranked = [It(i) for i in "abcdef"]
    out = cap_per_category(ranked, CATS.get, max_per_category=2, window=4)
    head = ids(out)[:4]
    assert head == ["a", "b", "d", "e"]
    assert sum(CATS[i] == "x" for i in head) <= 2
    assert sorted(ids(out)) == sorted("abcdef")  # deferred, not dropped


def test_category_cap_fills_the_page_when_only_one_category_exists() -> None:
    out = cap_per_category([It(i) for i in "abc"], lambda _: "x", max_per_category=1, window=3)
    assert ids(out) == ["a", "b", "c"]


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_per_category"):
        cap_per_category([It("a")], CATS.get, max_per_category=0, window=1)


def test_the_users_history_is_dropped_with_the_session_unless_switched_off() -> None:
    items = [It(i) for i in "abcdef"]
    kw = {"page_type": "home", "consumed": {"b"}, "history": ["a", "e"], "category_of": CATS.get, "window": 10}
    assert ids(apply_rules(items, **kw, config=RuleConfig(max_per_category=None))) == ["c", "d", "f"]
    session_only = RuleConfig(drop_history=False, max_per_category=None)
    assert ids(apply_rules(items, **kw, config=session_only)) == ["a", "c", "d", "e", "f"]
    nothing = RuleConfig(drop_consumed=False, max_per_category=None)  # the history is consumed items too
    assert ids(apply_rules(items, **kw, config=nothing)) == ids(items)
