"""Retrieval at scale: the ANN index against exact search on a seeded synthetic catalogue, the index switch at
the threshold, and a slow candidate source really cut on the request path."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serving_helpers import tiny_bundle

from reco.ranking.ann import AnnIndex, recall_at_k
from reco.ranking.candidates import CandidateConfig, EmbeddingIndex, RowList, Source, gather
from reco.ranking.recommend import PipelineConfig, Recommender, RecoRequest, ServedModel

N, D = 30_000, 32


@pytest.fixture(scope="module")
def catalogue() -> np.ndarray:
    """Clustered unit vectors (items of a shop fall into groups), row 0 = padding."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((300, D))
    emb = centres[rng.integers(0, 300, N)] + 0.6 * rng.standard_normal((N, D))
    emb[0] = 0.0
    return emb.astype(np.float32)


def test_ann_recall_against_exact_search(catalogue: np.ndarray) -> None:
    unit = catalogue / np.maximum(np.linalg.norm(catalogue, axis=1, keepdims=True), 1e-12)
    rows = np.arange(1, N)
    ann = AnnIndex(unit, rows)
    queries = unit[np.random.default_rng(1).integers(1, N, 200)]
    assert recall_at_k(unit, rows, ann, queries, 100) >= 0.95  # docs/benchmarks.md reports the figure
    # Items' own vectors (the similarity sources' queries) scan fewer cells at the same recall bar.
    assert ann.item_nprobe < ann.nprobe
    assert recall_at_k(unit, rows, ann, queries, 100, items=True) >= 0.95
    found, _ = ann.search(queries[:5], 10)
    assert (found > 0).all()  # padding is never indexed


def _merged_reference(index: EmbeddingIndex, q: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """Each query row's ANN answer (its share's head), then every item at its best query row (the earlier
    row on a tie), best first, without the query rows: the merge written plainly."""
    share = k if len(q) == 1 else min(k, max(64, 1 << int(np.ceil(np.log2(3 * k / len(q))))))
    best: dict[int, tuple[float, int, int]] = {}
    for pos, r in enumerate(q.tolist()):
        found, sims = index.ann.search(index._unit[r][None, :], k + 16, items=True)
        for row, sim in zip(found[0][: share + 16].tolist(), sims[0][: share + 16].tolist(), strict=True):
            if row >= 0 and row not in q and (row not in best or sim > best[row][0]):
                best[row] = (sim, pos, r)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[1][1]))[:k]
    return [row for row, _ in ranked], [anchor for _, (_, _, anchor) in ranked]


def test_ann_session_search_merges_each_rows_answer_by_best_similarity(catalogue: np.ndarray) -> None:
    """Sessions of 1-20 rows: random (few shared neighbours), one cluster's items (most neighbours shared:
    the 2k best entries hold fewer than k items) and a repeated row, as a growing session asks them."""
    ids = ["<pad>", *[f"i{k}" for k in range(1, N)]]
    index = EmbeddingIndex(ids, catalogue, ann_threshold=1000)
    rng = np.random.default_rng(3)
    unit = index._unit
    cluster = np.flatnonzero(unit[1:] @ unit[5] > 0.8)[:20] + 1  # items close to item 5
    sessions = [rng.integers(1, N, 20), cluster, np.array([7, 7, 9, 7, *rng.integers(1, N, 8)])]
    for session in sessions:
        for n in (1, 2, 4, 8, len(session)):
            q = session[:n]
            found, sims = index.similar_rows(q, 300)
            rows, anchors = _merged_reference(index, q, 300)
            assert found.rows.tolist() == rows and found.anchors.tolist() == anchors
            assert np.all(np.diff(sims) <= 0)


def test_index_switches_to_ann_above_the_threshold_and_keeps_the_contract(catalogue: np.ndarray) -> None:
    ids = ["<pad>", *[f"i{k}" for k in range(1, N)]]
    exact = EmbeddingIndex(ids, catalogue, ann_threshold=N)
    approx = EmbeddingIndex(ids, catalogue, ann_threshold=1000)
    assert exact.ann is None and approx.ann is not None
    session = np.array([11, 2345, 20_000])
    e_rows, _ = exact.similar_rows(session, 300)
    a_rows, a_sims = approx.similar_rows(session, 300)
    assert len(a_rows.rows) == 300 and len(set(a_rows.rows.tolist())) == 300
    assert not set(a_rows.rows.tolist()) & {0, *session.tolist()}  # no padding, no query rows
    assert np.all(np.diff(a_sims) <= 1e-6)  # best first
    assert len(set(a_rows.rows.tolist()) & set(e_rows.rows.tolist())) / 300 >= 0.9
    # Every anchor is the query row the item is closest to, as in the exact search.
    sims = approx.similarity_rows(a_rows.rows, session)
    assert (session[sims.argmax(axis=1)] == a_rows.anchors).mean() >= 0.99


def test_a_slow_source_is_cut_and_the_rest_served() -> None:
    def slow() -> RowList:
        time.sleep(1.0)
        return RowList.of([7, 8])

    with ThreadPoolExecutor(2) as pool:
        out = gather({Source.session_similar: slow, Source.trending: lambda: RowList.of([3])},
                     lambda: RowList.of([1, 2, 5]), config=CandidateConfig(source_timeout_s=0.05, max_candidates=10),
                     n_rows=10, executor=pool)  # fmt: skip
    assert out.failed == ["session_similar"] and out.rows.tolist() == [3, 1, 2, 5]


class _SlowIndex(EmbeddingIndex):
    """A real index whose similarity search hangs (a stuck source on the request path)."""

    def similar_rows(self, query_rows, k, exclude_rows=()):
        time.sleep(1.0)
        return super().similar_rows(query_rows, k, exclude_rows)


class _Features:
    def __init__(self) -> None:
        self.session_items, self.user_items, self.cart_items = ["1", "2", "3"], [], []
        self.thompson: dict = {}
        self.trending_top: list = []


class _Store:
    def request_context(self, *a, **kw):
        return _Features()

    def log_request(self, *a, **kw):
        return None


class _Arm:
    arm, alias = "control", "arm-control"

    class exploration:
        strategy, rate = "none", 0.0


def test_recommender_serves_without_the_slow_session_source() -> None:
    model = ServedModel.build(tiny_bundle(), "1")
    slow = ServedModel(**{**model.__dict__, "index": _SlowIndex(model.index.ids, model.bundle.item_embeddings())})
    # inline_exact_rows=0: the tiny table's searches go to the executor too, where the budget cuts them.
    config = PipelineConfig(candidates=CandidateConfig(source_timeout_s=0.05), inline_exact_rows=0)
    with ThreadPoolExecutor(4) as pool:
        reco = Recommender(store=_Store(), assign=lambda u: _Arm(), models=lambda arm: slow, config=config,
                           executor=pool)  # fmt: skip
        result = reco.recommend(RecoRequest("u", session_id="s"))
    assert "candidates:session_similar" in result.degraded
    assert "session_similar" not in result.candidates_per_source and len(result.items) == 20
    assert {it.source for it in result.items} <= {"session_query", "trending", "popular"}


class _ThreadRecordingIndex(EmbeddingIndex):
    """A real index that records the thread of each similarity search."""

    threads: list[str]

    def similar_rows(self, query_rows, k, exclude_rows=()):
        self.threads.append(threading.current_thread().name)
        return super().similar_rows(query_rows, k, exclude_rows)


@pytest.mark.parametrize(
    ("inline_rows", "ann_threshold", "on_request_thread"),
    [(5_000, None, True), (0, None, False), (5_000, 0, True), (0, 0, False), (10, None, False)],
)
def test_small_exact_searches_run_on_the_request_thread(
    inline_rows: int, ann_threshold: int | None, on_request_thread: bool
) -> None:
    """An exact search over a small table or an ANN search (bounded cost) skips the thread hop; otherwise (a
    larger exact table, or inline_exact_rows 0) the executor runs it."""
    model = ServedModel.build(tiny_bundle(), "1")
    index = _ThreadRecordingIndex(model.index.ids, model.bundle.item_embeddings(), ann_threshold=ann_threshold)
    assert (index.ann is not None) == (ann_threshold == 0)
    index.threads = []
    recording = ServedModel(**{**model.__dict__, "index": index})
    config = PipelineConfig(inline_exact_rows=inline_rows)
    with ThreadPoolExecutor(2, thread_name_prefix="src") as pool:
        reco = Recommender(store=_Store(), assign=lambda u: _Arm(), models=lambda arm: recording, config=config,
                           executor=pool)  # fmt: skip
        result = reco.recommend(RecoRequest("u", session_id="s"))
    assert result.candidates_per_source.get("session_similar") and len(result.items) == 20
    assert index.threads and all((t == threading.current_thread().name) == on_request_thread for t in index.threads)
