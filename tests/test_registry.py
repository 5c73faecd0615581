"""Registry glue against a real MLflow tracking server and a local SQLite URI: log/register with
lineage, fingerprint idempotency, load by alias without pickle, promote + history + rollback."""

from __future__ import annotations

import uuid

import pytest

from reco.artifacts import registry
from reco.artifacts.bundle import PAD, ModelBundle
from reco.data.catalog import ItemCatalog
from reco.models.ranker import RankerConfig, SessionAwareRanker

pytestmark = pytest.mark.integration


def tiny_bundle(seed: int = 0) -> ModelBundle:
    import torch

    torch.manual_seed(seed)
    cat = ItemCatalog.from_records([{"item_id": str(i), "title": f"t{i}", "genres": ["Comedy"]} for i in range(1, 9)])
    cfg = RankerConfig(n_items=9, n_categories=2, item_dim=8, hidden=8, attn_dim=8, mlp_dims=(8,), gru_layers=1)
    return ModelBundle(SessionAwareRanker(cfg), [PAD, *(str(i) for i in range(1, 9))], cat, {})


def lineage(snapshot: str = "snap-1", parent: str | None = None) -> registry.Lineage:
    return registry.Lineage(snapshot, 100, "val-1", 2, parent, {"ndcg@10": 0.25}, {"epochs": 1}, "abc123")


@pytest.fixture(params=["server", "sqlite"])
def client(request, tmp_path):
    uri = request.getfixturevalue("mlflow_server") if request.param == "server" else f"sqlite:///{tmp_path}/m.db"
    return registry.client_for(uri)


def _run(client) -> str:
    return client.create_run(registry.ensure_experiment(client, "reco-test")).info.run_id


def test_log_load_and_idempotency(client):
    name = f"rk-{uuid.uuid4().hex[:8]}"
    bundle = tiny_bundle()
    mv = registry.log_bundle(client, name, bundle, lineage(), run_id=_run(client))
    assert {k: mv.tags[k] for k in ("data_snapshot_id", "data_rows", "validation_id", "parent_version")} == {
        "data_snapshot_id": "snap-1",
        "data_rows": "100",
        "validation_id": "val-1",
        "parent_version": "none",
    }
    assert mv.tags["metric.ndcg_at_10"] == "0.25" and mv.tags["code_revision"] == "abc123"
    again = registry.log_bundle(client, name, bundle, lineage(), run_id=_run(client))
    assert again.version == mv.version
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    registry.promote(client, name, "arm-treatment", mv.version, who="t", reason="test")
    loaded, lmv = registry.load_bundle(client, name, "arm-treatment")
    assert lmv.version == mv.version
    want = bundle.score(["1", "2"], ["3", "4", "5"]).scores
    assert loaded.score(["1", "2"], ["3", "4", "5"]).scores == pytest.approx(want, abs=1e-6)


def test_promote_history_and_rollback(mlflow_server):
    client = registry.client_for(mlflow_server)
    name = f"rk-{uuid.uuid4().hex[:8]}"
    v1 = str(registry.log_bundle(client, name, tiny_bundle(0), lineage("s1"), run_id=_run(client)).version)
    v2 = str(registry.log_bundle(client, name, tiny_bundle(1), lineage("s2", v1), run_id=_run(client)).version)
    rej = registry.log_bundle(
        client, name, tiny_bundle(2), lineage("s3", v2), run_id=_run(client), rejected_reason="ndcg regression"
    ).version
    registry.promote(client, name, "champion", v1, who="alice", reason="first")
    move = registry.promote(client, name, "champion", v2, who="bob", reason="better")
    assert (move.previous, move.version) == (v1, v2)
    assert client.get_model_version(name, v2).tags["champion.promoted_by"] == "bob"
    with pytest.raises(registry.RegistryError, match="rejected"):
        registry.promote(client, name, "champion", rej, who="eve", reason="no")
    back = registry.rollback(client, name, "champion", who="carol", reason="incident")
    assert back.version == v1 and str(client.get_model_version_by_alias(name, "champion").version) == v1
    assert [h["action"] for h in registry.alias_history(client, name, "champion")] == ["promote", "promote", "rollback"]
    with pytest.raises(registry.RegistryError, match="no previous"):
        registry.rollback(client, name, "champion", who="carol", reason="again")
