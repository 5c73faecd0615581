"""Explanations: attention x similarity picks the session item; every source has its sentence."""

from __future__ import annotations

import numpy as np

from reco.ranking.explain import EXPLORATION_PREFIX, anchors_by_attention, reason

TITLES = {"1": "Toy Story (1995)", "2": "Heat (1995)"}


def test_attention_can_overrule_raw_similarity() -> None:
    sims = np.array([[0.6, 0.5]])
    assert anchors_by_attention(sims, None, ["1", "2"]) == ["1"]
    assert anchors_by_attention(sims, [0.1, 0.9], ["1", "2"]) == ["2"]


def test_no_similar_session_item_gives_no_anchor() -> None:
    assert anchors_by_attention(np.array([[-0.3, 0.0]]), [0.5, 0.5], ["1", "2"]) == [None]
    assert anchors_by_attention(np.zeros((2, 0)), None, []) == [None, None]


def test_attention_of_the_wrong_length_is_ignored() -> None:
    assert anchors_by_attention(np.array([[0.6, 0.5]]), [0.1, 0.2, 0.7], ["1", "2"]) == ["1"]


def test_sentences_per_source() -> None:
    assert reason("session_similar", anchor="1", title_of=TITLES.get) == "Because you viewed Toy Story (1995)"
    assert reason("context_similar", anchor="2", title_of=TITLES.get) == "Similar to Heat (1995)"
    assert reason("trending") == "Trending now"
    assert reason("popular", genre="Comedy") == "Popular in Comedy"
    assert reason("popular", genre="unknown") == "Popular right now"


def test_session_item_without_a_title_falls_back_to_popular_wording() -> None:
    assert reason("session_similar", anchor="99", title_of=TITLES.get, genre="Drama") == "Popular in Drama"


def test_exploration_says_so() -> None:
    text = reason("popular", is_exploration=True, genre="Drama")
    assert text.startswith(EXPLORATION_PREFIX) and text.endswith("Popular in Drama")
