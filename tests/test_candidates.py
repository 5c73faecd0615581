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
    RowList,
    Source,
    gather,
    merge,
)
from reco.ranking.popular import PopularIndex
from reco.ranking.rules import rule_positions


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


def test_row_array_is_rows_with_unknown_ids_at_padding(index: EmbeddingIndex) -> None:
    assert index.row_array(["3", "x", "1"]).tolist() == [*index.rows(["3"]), 0, *index.rows(["1"])]
    assert index.row_array(set()).dtype == np.int64 and len(index.row_array(set())) == 0


def test_rule_positions_drop_the_same_rows_as_an_array_or_a_collection(index: EmbeddingIndex) -> None:
    keys, codes = np.array([3, 1, 5, 2, 4]), np.array([0, 0, 1, 1, 0])
    dropped = {"1", "nope", "4"}
    as_array = rule_positions(keys, codes, drop=index.row_array(dropped), window=3)
    assert as_array.tolist() == rule_positions(keys, codes, drop=index.rows(dropped), window=3).tolist()
    assert keys[as_array].tolist() == [3, 5, 2]


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


def _check(index: EmbeddingIndex, q: np.ndarray, k: int, exclude=()) -> None:
    """`similar_rows` against the search as one step, nothing remembered (one product over all query rows):
    the k best items by their best similarity over the query rows, best first, each with a query row that gives
    it that similarity as anchor; within float rounding (a state grown a row at a time rounds differently from
    one product, so items tied within 1e-6 at the k-th place may be either)."""
    q = np.asarray(q, dtype=np.int64)
    found, sims = index.similar_rows(q, k, exclude)
    best = (index._unit[q] @ index._unit_t).max(axis=0)
    best[index._invalid] = -np.inf
    best[q] = -np.inf
    best[np.asarray(exclude, dtype=np.int64)] = -np.inf
    k = min(k, int(np.isfinite(best).sum()))
    ranked = np.sort(best)[::-1][:k]
    rows, anchors = found.rows, found.anchors
    assert len(rows) == k == len(set(rows.tolist()))
    np.testing.assert_allclose(sims, ranked, rtol=0, atol=1e-6)  # the k best values, best first
    np.testing.assert_allclose(sims, best[rows], rtol=0, atol=1e-6)  # each found item's own best
    if k:
        assert set(np.flatnonzero(best > ranked[-1] + 1e-6).tolist()) <= set(rows.tolist())
    assert set(anchors.tolist()) <= set(q.tolist())
    own = np.einsum("ij,ij->i", index._unit[anchors], index._unit[rows])  # the anchor's similarity to its item
    np.testing.assert_allclose(own, best[rows], rtol=0, atol=1e-6)


def _catalogue(n: int = 200, d: int = 8, seed: int = 1, remember: bool = True) -> EmbeddingIndex:
    """A small index; `remember`: it remembers sessions' searches as a catalogue above `INCREMENTAL_ROWS` does."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    emb[0] = 0.0  # padding
    emb[[7, 50]] = 0.0  # items without an embedding
    emb[20:30] = emb[10]  # duplicate embeddings: exact ties, between query rows and between items
    emb[31] = emb[11] * 3.0  # the same direction, another norm
    index = EmbeddingIndex(["<pad>", *[f"i{i}" for i in range(1, n)]], emb)
    if remember:
        index.INCREMENTAL_ROWS = 0
    return index


def test_a_growing_session_extends_its_remembered_search_exactly() -> None:
    index, fresh = _catalogue(), _catalogue()
    rng = np.random.default_rng(7)
    # Sessions of 70 views over a catalogue of 200 rows: revisits, duplicate embeddings (rows 10 and 20-29),
    # rows without an embedding, the padding row; a window of the last 50 that slides past 50 views.
    picks = [10, 20, 21, 7, 0, 31, 11, 10]
    a = [*picks, *rng.integers(0, 200, 62).tolist()]
    b = [*rng.integers(0, 200, 30).tolist(), 25, 10, *rng.integers(0, 200, 38).tolist()]
    for n in range(1, 71):
        for views, k in ((a, 20), (b, 300)):  # two sessions interleaved on one index; k > catalogue
            q = np.asarray(views[:n][-50:], dtype=np.int64)
            _check(index, q, k)  # extended from the remembered prefix (or searched in full: a sliding window)
            if len(q) < index.GROWING:  # within float rounding of one batched product (the search before)
                batched = (index._unit[q] @ index._unit_t).max(axis=0)
                np.testing.assert_allclose(index._best(q), batched, rtol=0, atol=1e-6)
            fresh._states.clear()
            _check(fresh, q, k)  # nothing remembered
    # Every window below 50 rows is remembered as a state, within the bytes budget.
    assert np.asarray(a[:49], dtype=np.int64).tobytes() in index._states
    assert np.asarray(a[:50], dtype=np.int64).tobytes() not in index._states
    assert index._state_bytes == sum(best.nbytes for best in index._states.values())


class _Products(np.ndarray):
    """The item table, counting the products taken with it."""

    calls = 0

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        type(self).calls += ufunc is np.matmul
        return getattr(ufunc, method)(
            *(x.view(np.ndarray) if isinstance(x, _Products) else x for x in inputs), **kwargs
        )


def test_a_browsing_session_takes_one_row_product_per_request() -> None:
    index = _catalogue()
    index._unit_t = index._unit_t.view(_Products)
    views = np.random.default_rng(5).integers(1, 200, 20)
    for n in range(1, 21):
        before = _Products.calls
        index.similar_rows(views[:n], 30)
        index.similar_rows(views[:n], 10)  # another k: the state is remembered, no product
        assert _Products.calls - before == 1
    before = _Products.calls
    index.similar_rows(views[:18], 7, exclude_rows=[3])  # with exclusions: the remembered state too
    assert _Products.calls == before


@pytest.mark.parametrize("remember", [True, False])
def test_the_incremental_search_skips_rows_and_keeps_exclusions(remember: bool) -> None:
    index = _catalogue(remember=remember)
    rng = np.random.default_rng(3)
    views = rng.integers(1, 200, 12)
    for n in (1, 2, 5, 6, 10, 12):  # 1 and 3 events between requests: extends; 4: searched in full
        _check(index, views[:n], 15)
        _check(index, views[:n], 15, exclude=[*views[n:].tolist(), 40, 41])
    _check(index, views[[0, 2, 4]], 200)  # not a prefix of anything remembered: searched in full
    assert bool(index._states) == remember  # a small catalogue searches in full every time


def test_duplicate_query_rows_anchor_on_one_of_them() -> None:
    index = _catalogue()
    found, _ = index.similar_rows([20], 30)
    assert set(found.anchors.tolist()) == {20}
    for q in ([20, 21], [20, 21, 10], [20, 21, 10, 20]):  # the same embedding, then a revisit
        found, _ = index.similar_rows(q, 30)
        assert set(found.anchors.tolist()) <= set(q)  # every query row gives the same similarity
        twins = {10, *range(20, 30)} - set(q)  # the query's duplicates, not in it, first
        assert set(found.rows[: len(twins)].tolist()) == twins
        _check(index, np.asarray(q), 30)


def test_the_remembered_states_are_bounded_by_bytes_and_shared_read_only() -> None:
    index = _catalogue()
    per_state = index.n_rows * 4  # float32 best
    index.STATE_BYTES = 3 * per_state
    for n in range(1, 10):
        _check(index, np.arange(1, n + 1), 10)
    assert len(index._states) == 3 and index._state_bytes == 3 * per_state
    best = next(iter(index._states.values()))
    assert best.dtype == np.float32
    with pytest.raises(ValueError, match="read-only"):
        best[0] = 0.0


def test_sessions_on_several_threads_get_the_full_search_answer() -> None:
    index = _catalogue()
    sessions = [np.random.default_rng(s).integers(0, 200, 55) for s in range(8)]

    def browse(views: np.ndarray) -> bool:
        for n in range(1, len(views) + 1):
            _check(index, views[:n][-50:], 25)
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(browse, sessions))
