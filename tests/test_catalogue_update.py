"""Incremental catalogue update (`ServedModel.updated`): equal to a full `ServedModel.build` from the same
records (scores, candidates, tables), unavailable items never served, the serving model never changed; the ANN
index gets new items without retraining."""

from __future__ import annotations

import numpy as np
from serving_helpers import tiny_bundle

from reco.data.catalog import ItemRecord
from reco.ranking.candidates import EmbeddingIndex
from reco.ranking.recommend import ServedModel


def _rec(iid: str, title: str, cat: str, available: bool = True, **attrs: object) -> ItemRecord:
    return ItemRecord(item_id=iid, title=title, categories=[cat], attributes=attrs, available=available)


def _assert_same(a: ServedModel, b: ServedModel) -> None:
    """Everything a request reads, equal between two models."""
    assert a.index.ids == b.index.ids
    assert np.allclose(a.index._unit, b.index._unit, atol=1e-6)
    assert a.row_category == b.row_category and a.row_category_code.tolist() == b.row_category_code.tolist()
    assert a.title_of == b.title_of and a.categories == b.categories
    blocked_a = a.blocked if a.blocked is not None else np.zeros(a.index.n_rows, dtype=bool)
    blocked_b = b.blocked if b.blocked is not None else np.zeros(b.index.n_rows, dtype=bool)
    assert blocked_a.tolist() == blocked_b.tolist()
    assert a.popular_rows.rows.tolist() == b.popular_rows.rows.tolist()
    assert (a.cold is None) == (b.cold is None)
    if a.cold is not None:
        assert a.cold.rows.tolist() == b.cold.rows.tolist() and a.cold.is_new.tolist() == b.cold.is_new.tolist()
        assert np.allclose(a.cold.uncertainty, b.cold.uncertainty, atol=1e-6)
    all_rows = np.arange(1, a.index.n_rows)
    for session in ([1, 2, 3], [len(all_rows), 4], [len(all_rows) - 1]):
        sa = a.scorer.score(np.array(session), all_rows, "home", "desktop").scores
        sb = b.scorer.score(np.array(session), all_rows, "home", "desktop").scores
        assert np.allclose(sa, sb, atol=1e-5)
        ra, _ = a.index.similar_rows(session, 10)
        rb, _ = b.index.similar_rows(session, 10)
        assert ra.rows.tolist() == rb.rows.tolist() and ra.anchors.tolist() == rb.anchors.tolist()


def test_incremental_update_equals_a_full_build_and_never_serves_an_unavailable_item() -> None:
    bundle = tiny_bundle(n_items=40, seed=0)
    first = {"n1": _rec("n1", "Blue shoe", "Drama"), "5": _rec("5", "Renamed five", "Comedy")}
    base = ServedModel.build(bundle, "1", items=first, catalog_version=1)
    # Later: new items (one in a new category), a new item's content changed, a trained item retitled and
    # one made unavailable, a new item unavailable; the follower replaces only the changed records.
    second = dict(first)
    second.update({"n1": _rec("n1", "Red boot", "Comedy", colour="red"), "n2": _rec("n2", "Green hat", "Hats"),
                   "n3": _rec("n3", "Odd toaster", "Kitchen", available=False), "7": _rec("7", "Seven", "Drama", False),
                   "9": _rec("9", "Nine again", "Action")})  # fmt: skip
    serving_before = base.scorer.score(np.array([1, 2]), np.arange(1, base.index.n_rows), "home", "desktop").scores
    updated = base.updated(second, catalog_version=2)
    full = ServedModel.build(bundle, "1", items=second, catalog_version=2)
    _assert_same(updated, full)
    assert updated.catalog_version == 2 and updated.records is second
    # The model that was serving is unchanged (a request holding it reads the same tables).
    again = base.scorer.score(np.array([1, 2]), np.arange(1, base.index.n_rows), "home", "desktop").scores
    assert np.array_equal(serving_before, again) and base.index.n_rows == len(bundle.item_ids) + 1
    # Unavailable items are never candidates; making one available again serves it again.
    from reco.ranking.candidates import RowList, Source, merge

    every = RowList.of(np.arange(updated.index.n_rows))
    served = merge({Source.popular: every}, 1000, n_rows=updated.index.n_rows, blocked=updated.blocked)
    ids = {updated.index.ids[r] for r in served.rows.tolist()}
    assert "n3" not in ids and "7" not in ids and {"n1", "n2", "5"} <= ids
    third = dict(second, n3=_rec("n3", "Odd toaster", "Kitchen"))
    back = updated.updated(third, catalog_version=3)
    _assert_same(back, ServedModel.build(bundle, "1", items=third, catalog_version=3))
    assert back.updated(third, 3).index is back.index  # nothing changed: nothing rebuilt


def test_the_ann_index_gets_new_items_without_retraining() -> None:
    bundle = tiny_bundle(n_items=300, seed=1)
    base = ServedModel.build(bundle, "1", ann_threshold=10)
    assert base.index.ann is not None
    records = {f"n{k}": _rec(f"n{k}", f"Movie {k} new", "Drama") for k in range(5)}
    updated = base.updated(records, catalog_version=1)
    assert updated.index.ann is not None and updated.index.ann.size == base.index.ann.size + 5
    assert updated.index.ann.nlist == base.index.ann.nlist  # the trained cells, kept
    for k in range(5):
        row = updated.index.row_of(f"n{k}")
        found, sims = updated.index.ann.search(updated.index._unit[row][None, :], 5)
        assert row in found[0].tolist() and sims[0, 0] > 0.999  # its own vector finds it (new items may tie)
    assert base.index.ann.size == len(bundle.item_ids) - 1  # the serving index is unchanged


def test_the_api_builder_updates_the_model_it_made_and_builds_anew_at_a_swap() -> None:
    from types import SimpleNamespace

    from serving.items import served_model_builder

    bundle = tiny_bundle(n_items=40, seed=0)
    follower = SimpleNamespace(records={"n1": _rec("n1", "Blue shoe", "Drama")}, version=1)
    build = served_model_builder(follower, ann_threshold=20_000)  # type: ignore[arg-type]
    first = build(bundle, "1")
    follower.records, follower.version = dict(follower.records, n2=_rec("n2", "Hat", "Hats", available=False)), 2
    second = build(bundle, "1")  # the manager's rebuild: same bundle and version
    assert second.popular_rows is first.popular_rows  # updated, not rebuilt
    assert second.catalog_version == 2 and "n2" in second.index and second.blocked[second.index.row_of("n2")]
    _assert_same(second, ServedModel.build(bundle, "1", items=follower.records, catalog_version=2))
    swapped = build(tiny_bundle(n_items=40, seed=0, version="2"), "2")  # a new version: a full build
    assert swapped.popular_rows is not second.popular_rows and "n2" in swapped.index


def test_a_served_model_keeps_one_copy_of_the_item_embeddings_above_the_ann_threshold() -> None:
    # At a million items every copy of the embeddings is 256 MB: the ANN index reads the scorer's item table;
    # the exact index keeps its own contiguous rows (its session-query search reads all of them each request).
    bundle = tiny_bundle(n_items=300, seed=1)
    want = bundle.item_embeddings()
    for threshold, shared in ((10, True), (20_000, False)):
        model = ServedModel.build(bundle, "1", ann_threshold=threshold)
        emb = model.index._emb
        assert np.array_equal(emb, want) and np.shares_memory(emb, model.scorer._item_table) is shared
        assert emb.flags.c_contiguous is not shared
        alone = EmbeddingIndex(bundle.item_ids, want, ann_threshold=threshold)
        assert model.index.query_rows(want[7], 5).rows.tolist() == alone.query_rows(want[7], 5).rows.tolist()
        # ... and so does the model a catalogue update makes (its tables grown by the new item)
        grown = model.updated({"n1": _rec("n1", "Movie new", "Drama")}, catalog_version=1)
        assert grown.index.n_rows == 302 and np.array_equal(grown.index._emb, grown.scorer.item_embeddings())
        assert np.shares_memory(grown.index._emb, grown.scorer._item_table) is shared
