"""New-item cold start: content -> the model's item space (ridge map), an extended model scored exactly like the
torch module, the exploration bonus (deterministic, so logged propensities stay the policy's)."""

from __future__ import annotations

import numpy as np
from serving_helpers import GENRES, tiny_bundle

from reco.data.catalog import ItemRecord
from reco.ranking.cold_start import ColdStartConfig, ImpressionCounts, content_tokens, extend_bundle, hashed_features
from reco.ranking.recommend import ServedModel


def _bundle_with_genre_clusters():
    """A tiny bundle whose trained embeddings cluster by genre (what training tends to produce)."""
    import torch

    bundle = tiny_bundle(n_items=40, seed=0)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((len(GENRES), 8)) * 2
    with torch.no_grad():
        for row, iid in enumerate(bundle.item_ids[1:], start=1):
            g = GENRES.index(bundle.catalog.category(iid))
            bundle.model.item_emb.weight[row] = torch.from_numpy(
                (centres[g] + 0.1 * rng.standard_normal(8)).astype(np.float32)
            )
    return bundle


def test_new_items_land_near_the_trained_items_of_their_content() -> None:
    bundle = _bundle_with_genre_clusters()
    records = {f"n{g}": ItemRecord(item_id=f"n{g}", title=f"Movie new {g}", categories=[genre])
               for g, genre in enumerate(GENRES)}  # fmt: skip
    extended, cold = extend_bundle(bundle, records)
    assert cold is not None and extended.item_ids[: len(bundle.item_ids)] == bundle.item_ids
    assert extended.model.config.n_items == len(bundle.item_ids) + len(GENRES)
    model = ServedModel.build(bundle, "1", items=records)
    for g, genre in enumerate(GENRES):
        found = model.index.similar([f"n{g}"], k=5)
        assert all(bundle.catalog.category(c.item_id) == genre for c in found if c.item_id in bundle.catalog)
        assert model.row_category[model.index.row_of(f"n{g}")] == genre
    # The trained part is untouched; the served scorer equals the extended module's forward.
    assert np.array_equal(extended.item_embeddings()[: len(bundle.item_ids)], bundle.item_embeddings())
    session, cands = ["1", "2", "n1"], ["n0", "n2", "5", "7"]
    torch_scores = extended.score(session, cands, "home", "desktop").scores
    served = model.scorer.score(extended.index_of(session), extended.index_of(cands), "home", "desktop").scores
    assert np.allclose(torch_scores, served, atol=1e-5)


def test_uncertainty_is_high_for_unfamiliar_content_and_the_bonus_decays() -> None:
    bundle = _bundle_with_genre_clusters()
    records = {"familiar": ItemRecord(item_id="familiar", title="Movie 3", categories=["Drama"]),
               "odd": ItemRecord(item_id="odd", title="Quantum toaster", categories=["Kitchen"],
                                 attributes={"brand": "acme"})}  # fmt: skip
    _, cold = extend_bundle(bundle, records)
    ids = [*bundle.item_ids, "familiar", "odd"]
    u = dict(zip(ids, cold.uncertainty.tolist(), strict=True))
    assert 0 < u["familiar"] < u["odd"] <= 2 and u["1"] == 0.0
    counts, cfg = ImpressionCounts(), ColdStartConfig(bonus=2.0, max_impressions=3, slots=2)
    rows, scores = cold.rows, np.array([0.0, 1.0])
    first = counts.bonus(cold, rows, ids, cfg, scores)
    counts.served(["odd"])
    second = counts.bonus(cold, rows, ids, cfg, scores)
    assert second[1] == first[1] / np.sqrt(2) and second[0] == first[0] > 0
    one = counts.bonus(cold, rows, ids, ColdStartConfig(bonus=2.0, max_impressions=3, slots=1), scores)
    assert (one > 0).sum() == 1  # one new item per page keeps its bonus: the best by score + bonus
    counts.served(["odd", "odd"])
    assert counts.bonus(cold, rows, ids, cfg, scores)[1] == 0.0  # past max_impressions: ranked on its own score
    assert counts.source_rows(cold, ids, cfg).tolist() == [rows[0]]  # and no longer offered as new


def test_content_tokens_and_hashing_are_stable() -> None:
    tokens = content_tokens("Toy Story (1995)", ["Animation"], {"kids": True})
    assert tokens == ["c:animation", "c0:animation", "t:toy", "t:story", "t:1995", "a:kids=true"]
    a, b = hashed_features([tokens]), hashed_features([list(tokens)])
    assert (a != b).nnz == 0  # crc32: the same features in every process (Python's hash() is salted)
