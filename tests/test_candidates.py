"""Candidate sources: nearest neighbours, popular lists, concurrent gathering with per-source timeouts."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from reco.ranking.candidates import (
    SOURCES,
    CandidateConfig,
    EmbeddingIndex,
    PopularIndex,
    RowList,
    Source,
    gather,
    merge,
)


@pytest.fixture
def index() -> EmbeddingIndex:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(11, 4)).astype(np.float32)
    emb[0] = 0.0  # padding row
    emb[5] = emb[1] * 2.0  # "5" points exactly where "1" does
    return EmbeddingIndex(["<pad>", *[str(i) for i in range(1, 11)]], emb)


def test_similar_finds_the_closest_item_and_names_its_anchor(index: EmbeddingIndex) -> None:
    out = index.similar(["1", "2"], k=3)
    assert out[0].item_id == "5" and out[0].anchor == "1"
    assert out[0].score == pytest.approx(1.0, abs=1e-5)
    assert [c.score for c in out] == sorted((c.score for c in out), reverse=True)
    assert {"1", "2", "<pad>"}.isdisjoint(c.item_id for c in out)


def test_similar_respects_exclusions_unknown_ids_and_k(index: EmbeddingIndex) -> None:
    assert index.similar(["nope"], k=5) == []
    out = index.similar(["1", "nope"], k=100, exclude={"5"})
    assert len(out) == 8 and "5" not in {c.item_id for c in out}


def test_similarity_matrix_zeroes_unknown_ids(index: EmbeddingIndex) -> None:
    sims = index.similarity(["1", "x"], ["5", "1", "y"])
    assert sims.shape == (2, 3)
    assert sims[0, 0] == pytest.approx(1.0, abs=1e-5) and sims[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert np.all(sims[1] == 0) and np.all(sims[:, 2] == 0)


def test_similarity_by_rows_is_similarity_by_ids(index: EmbeddingIndex) -> None:
    by_rows = index.similarity_rows([*index.rows(["1", "3"]), 0], index.rows(["5", "2"]))
    np.testing.assert_allclose(by_rows, index.similarity(["1", "3", "x"], ["5", "2"]), atol=1e-6)


def test_embedding_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="does not match"):
        EmbeddingIndex(["a", "b"], np.zeros((3, 2)))


def test_popular_is_stable_and_per_category() -> None:
    pop = PopularIndex({"a": 2, "b": 2, "c": 5}, {"a": "x", "b": "y", "c": "x"})
    assert [c.item_id for c in pop.top(3)] == ["c", "a", "b"]  # ties broken by id
    assert [c.item_id for c in pop.top_in("x", 3)] == ["c", "a"]
    assert pop.top(1)[0].score == 1.0 and pop.top(1)[0].source == Source.popular


def test_similar_rows_match_similar_by_id(index: EmbeddingIndex) -> None:
    found, sims = index.similar_rows(index.rows(["1", "2"]), k=4, exclude_rows=index.rows(["3"]))
    by_id = index.similar(["1", "2"], k=4, exclude={"3"})
    assert [index.ids[r] for r in found.rows] == [c.item_id for c in by_id]
    assert [index.ids[a] for a in found.anchors] == [c.anchor for c in by_id]
    assert sims.tolist() == pytest.approx([c.score for c in by_id])


def test_similar_rows_remembers_a_search_without_exclusions(index: EmbeddingIndex) -> None:
    rows = np.array(index.rows(["1", "2"]))
    found, sims = index.similar_rows(rows, k=4)
    again, _ = index.similar_rows(list(rows), k=4)  # the same question, asked as a list
    assert index._memo.cache_info().hits == 1 and again.rows.tolist() == found.rows.tolist()
    fresh, fresh_sims = index._similar_rows(rows, 4, ())  # the search itself, not remembered
    assert found.rows.tolist() == fresh.rows.tolist() and found.anchors.tolist() == fresh.anchors.tolist()
    np.testing.assert_array_equal(sims, fresh_sims)
    assert index.similar_rows(rows, k=2)[0].rows.tolist() == found.rows[:2].tolist()  # k is part of the key
    with pytest.raises(ValueError, match="read-only"):
        found.rows[0] = 0
    index.similar_rows(rows, k=4, exclude_rows=[3])  # with exclusions: searched every time
    assert index._memo.cache_info().hits == 1


def test_row_list_skips_unknown_and_repeated_ids(index: EmbeddingIndex) -> None:
    assert index.row_list(["3", "x", "1", "3", "<pad>"]).rows.tolist() == [3, 1]


def names(res, index: EmbeddingIndex) -> list[tuple[str, str]]:
    return [(index.ids[r], str(SOURCES[s])) for r, s in zip(res.rows, res.sources, strict=True)]


def test_merge_keeps_the_most_specific_source_and_caps(index: EmbeddingIndex) -> None:
    results = {
        Source.popular: index.row_list(["1", "2"]),
        Source.trending: index.row_list(["1", "3"]),
        Source.session_similar: RowList(np.array(index.rows(["3"])), np.array(index.rows(["7"]))),
    }
    out = merge(results, limit=2, n_rows=index.n_rows)
    assert names(out, index) == [("3", "session_similar"), ("1", "trending")]
    assert [index.ids[a] if a else None for a in out.anchors] == ["7", None]
    assert out.per_source == {"session_similar": 1, "trending": 1}
    everything = merge(results, limit=10, n_rows=index.n_rows, exclude=index.rows(["2"]))
    assert names(everything, index) == [("3", "session_similar"), ("1", "trending")]  # 2 excluded, 1 once
    assert merge({}, limit=5, n_rows=index.n_rows).rows.tolist() == []


def test_gather_drops_a_slow_and_a_failing_source_but_answers(index: EmbeddingIndex) -> None:
    release = threading.Event()

    def slow() -> RowList:
        release.wait(5)
        return index.row_list(["9"])

    def broken() -> RowList:
        raise ConnectionError("redis down")

    def inline_broken() -> RowList:
        raise ValueError("bad embedding")

    with ThreadPoolExecutor(4) as pool:
        res = gather(
            {Source.session_similar: pool.submit(slow), Source.trending: pool.submit(broken),
             Source.context_similar: inline_broken},
            lambda: index.row_list(["4"]),
            config=CandidateConfig(source_timeout_s=0.05),
            n_rows=index.n_rows,
        )  # fmt: skip
        release.set()
    assert [c.item_id for c in res.candidates(index.ids)] == ["4"]
    assert sorted(res.failed) == ["context_similar", "session_similar", "trending"]
    assert res.per_source == {"popular": 1}
