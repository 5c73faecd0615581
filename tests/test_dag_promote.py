"""reco_promote through Airflow: move an alias, then roll it back; the registry says so."""

from __future__ import annotations

import uuid

import pytest
from test_dag_training import load_dag
from test_registry import lineage, tiny_bundle

from reco.artifacts import registry

pytestmark = pytest.mark.integration


def test_promote_then_rollback(airflow_db, mlflow_server, monkeypatch):
    name = f"rk-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("RECO_REGISTERED_MODEL", name)
    client = registry.client_for(mlflow_server)
    run = client.create_run(registry.ensure_experiment(client, "reco-test")).info.run_id
    v1 = str(registry.log_bundle(client, name, tiny_bundle(0), lineage("a"), run_id=run).version)
    v2 = str(registry.log_bundle(client, name, tiny_bundle(1), lineage("b", v1), run_id=run).version)
    registry.promote(client, name, "arm-control", v1, who="setup", reason="start")
    dag = load_dag("reco_promote")
    conf = {"tracking_uri": mlflow_server, "target_alias": "arm-control", "reason": "wins the test"}
    assert dag.test(run_conf={**conf, "action": "promote", "source": v2, "who": "alice"}).state == "success"
    mv = client.get_model_version_by_alias(name, "arm-control")
    assert str(mv.version) == v2 and mv.tags["arm-control.promoted_by"] == "alice"
    assert mv.tags["arm-control.previous_version"] == v1
    assert dag.test(run_conf={**conf, "action": "rollback", "reason": "incident"}).state == "success"
    assert str(client.get_model_version_by_alias(name, "arm-control").version) == v1
    bad = dag.test(run_conf={**conf, "action": "promote", "source": "999"})
    assert bad.state == "failed"
