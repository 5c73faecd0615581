"""The registry as a user reads it: each version is a LoggedModel with a description (what changed, which
data, what the gate said), its run has params, per-epoch curves and the training data as a dataset input;
alias history holds well over 1,000 promotions (real MLflow: tracking server and SQLite)."""

from __future__ import annotations

import json
import time
import uuid

import pandas as pd
import pytest

from reco.artifacts import registry
from tests.test_registry import lineage, tiny_bundle

pytestmark = pytest.mark.integration


@pytest.fixture(params=["server", "sqlite"])
def client(request, tmp_path):
    uri = request.getfixturevalue("mlflow_server") if request.param == "server" else f"sqlite:///{tmp_path}/m.db"
    return registry.client_for(uri)


def test_version_is_described_logged_model_with_params_curves_and_dataset(client) -> None:
    name = f"rk-{uuid.uuid4().hex[:8]}"
    run_id = client.create_run(registry.ensure_experiment(client, "reco-test")).info.run_id
    bundle = tiny_bundle()
    bundle.meta["history"] = [
        {"epoch": 1, "loss": 2.5, "valid_ndcg@10": 0.05, "epoch_s": 1.0},
        {"epoch": 2, "loss": 2.1, "valid_ndcg@10": 0.08, "epoch_s": 1.1},
    ]
    events = pd.DataFrame({"event_id": ["e1", "e2"], "user_id": ["u1", "u2"], "item_id": ["1", "2"]})
    data = registry.TrainingData(events, source="/var/lib/reco/lake", name="lake 2026-01-01..2026-01-02")
    lin = registry.Lineage("snap-9", 2, "val-9", 0, None, {"ndcg@10": 0.08}, {"epochs": 2, "model": {"dim": 8}},
                           extra={"warm_start": "cold", "gate": "passed"})  # fmt: skip
    mv = registry.log_bundle(client, name, bundle, lin, run_id=run_id, data=data)

    assert "cold" in mv.description and "snap-9" in mv.description and "Gate: passed" in mv.description
    logged = client.get_logged_model(mv.tags["logged_model_id"])
    assert logged.source_run_id == run_id and str(logged.status).endswith("READY")
    run = client.get_run(run_id)
    assert run.data.params["epochs"] == "2" and run.data.params["model.dim"] == "8"
    curve = client.get_metric_history(run_id, "epoch_valid_ndcg_at_10")
    assert [(m.step, m.value) for m in sorted(curve, key=lambda m: m.step)] == [(1, 0.05), (2, 0.08)]
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["lake 2026-01-01..2026-01-02"]
    assert json.loads(run.inputs.dataset_inputs[0].dataset.schema)["mlflow_colspec"]
    # the registered source loads back (input example + signature saved with the pyfunc)
    loaded, got = registry.load_bundle(client, name, mv.version)
    assert got.version == mv.version and loaded.item_ids == bundle.item_ids


def test_alias_history_holds_over_a_thousand_promotions(client) -> None:
    from mlflow.entities import RunTag

    name = f"rk-{uuid.uuid4().hex[:8]}"
    run_id = client.create_run(registry.ensure_experiment(client, "reco-test")).info.run_id
    v1 = str(registry.log_bundle(client, name, tiny_bundle(0), lineage("h1"), run_id=run_id).version)
    v2 = str(registry.log_bundle(client, name, tiny_bundle(1), lineage("h2", v1), run_id=run_id).version)
    registry.promote(client, name, "champion", v1, who="t", reason="first")
    # 1,200 older moves written as the registry writes them (one tag each), in two batches for speed
    history_run = client.get_registered_model(name).tags[registry.HISTORY_RUN_TAG]
    base = time.time_ns() - 10**12
    earlier = [
        RunTag(registry.MOVE_TAG.format(alias="champion", seq=base + i),
               json.dumps({"alias": "champion", "version": v1, "previous": v1, "who": "old", "reason": f"r{i}",
                           "action": "promote", "at": "2026-01-01T00:00:00+00:00"}))
        for i in range(1200)
    ]  # fmt: skip
    for i in range(0, len(earlier), 600):
        client.log_batch(history_run, tags=earlier[i : i + 600])
    registry.promote(client, name, "champion", v2, who="t", reason="better")
    history = registry.alias_history(client, name, "champion")
    assert len(history) == 1202
    assert [h["reason"] for h in history[:1200]] == [f"r{i}" for i in range(1200)]  # oldest first, none dropped
    assert history[1200]["reason"] == "first"
    assert history[-1]["version"] == v2 and history[-1]["previous"] == v1
    back = registry.rollback(client, name, "champion", who="t", reason="regression")
    assert back.version == v1 and str(registry.alias_version(client, name, "champion").version) == v1
    assert len(registry.alias_history(client, name, "champion")) == 1203


@pytest.mark.filterwarnings("error::UserWarning")
def test_training_dataset_is_built_without_mlflows_noise_and_keeps_its_source_and_schema(tmp_path) -> None:
    # Integer ids from a local lake folder: MLflow warns twice about such a dataset (an ambiguous local source, the
    # integer-column hint), and neither says anything about the run; any other warning a user would see (a
    # UserWarning: deprecations are hidden outside tests) still fails this test.
    frame = pd.DataFrame({"user_row": [1, 2, 3], "item_row": [4, 5, 6], "ts": [10, 11, 12]})
    entity = registry._dataset_entity(registry.TrainingData(frame, source=str(tmp_path), name="lake 2026-01-01"))
    assert entity.name == "lake 2026-01-01" and json.loads(entity.source) == {"uri": str(tmp_path)}
    assert [c["name"] for c in json.loads(entity.schema)["mlflow_colspec"]] == list(frame.columns)
    assert json.loads(entity.profile) == {"num_rows": 3, "num_elements": 9}
