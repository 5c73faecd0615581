"""Small real model bundles for the serving tests (no training: seeded random weights are enough to
exercise candidates, ranking, rules, exploration and explanations)."""

from __future__ import annotations

from reco.data.catalog import ItemCatalog

GENRES = ("Drama", "Comedy", "Action", "Horror")


def tiny_catalog(n_items: int = 40) -> ItemCatalog:
    return ItemCatalog.from_records(
        {"item_id": str(i), "title": f"Movie {i}", "year": 1990 + i % 10, "genres": [GENRES[i % len(GENRES)]]}
        for i in range(1, n_items + 1)
    )


def tiny_bundle(n_items: int = 40, seed: int = 0, version: str = "1"):
    """A real `ModelBundle` with a small `SessionAwareRanker` (seeded random weights)."""
    import torch

    from reco.artifacts.bundle import PAD, ModelBundle
    from reco.models.ranker import RankerConfig, SessionAwareRanker

    catalog = tiny_catalog(n_items)
    torch.manual_seed(seed)
    config = RankerConfig(
        n_items=n_items + 1, n_categories=len(GENRES) + 1, item_dim=8, hidden=8, attn_dim=8, category_dim=4,
        pop_dim=4, context_dim=4, mlp_dims=(16, 8),
    )  # fmt: skip
    model = SessionAwareRanker(config)
    cats = {g: i + 1 for i, g in enumerate(GENRES)}
    with torch.no_grad():
        for row, iid in enumerate(catalog.item_ids, start=1):
            model.item_category[row] = cats[catalog.category(iid)]
    popularity = {iid: float(n_items - int(iid)) for iid in catalog.item_ids}
    meta = {"version": version, "popularity": popularity}
    return ModelBundle(model=model, item_ids=[PAD, *catalog.item_ids], catalog=catalog, meta=meta)


def register_version(tracking_uri: str, name: str, bundle, tag: str, aliases: tuple[str, ...] = ()) -> str:
    """Log `bundle` as a new version of `name` in a real MLflow registry; point `aliases` at it."""
    from reco.artifacts.registry import Lineage, client_for, ensure_experiment, log_bundle, promote

    client = client_for(tracking_uri)
    run = client.create_run(ensure_experiment(client, "serving-tests"))
    lineage = Lineage(
        data_snapshot_id=tag, data_rows=1, validation_id="test", validation_bad_rows=0, parent_version=None,
        metrics={}, train_config={"tag": tag},
    )  # fmt: skip
    version = str(log_bundle(client, name, bundle, lineage, run_id=run.info.run_id).version)
    client.set_terminated(run.info.run_id)
    for alias in aliases:
        promote(client, name, alias, version, who="tests", reason=tag)
    return version


def serving_settings(tmp_path, **overrides):
    """Settings for a test app: real Redis/MLflow given by the caller, fast polling, one API key."""
    from serving.settings import Settings

    base = {
        "home": tmp_path / "home",
        "model_cache_dir": tmp_path / "cache",
        "api_keys": ["test-key"],
        "model_poll_s": 0.2,
        "exploration_seed": 0,
        "log_impressions_async": False,
    }
    return Settings(**{**base, **overrides})
