"""Triggers as users do them: a real Airflow api-server + scheduler + dag-processor (LocalExecutor, SQLite,
SimpleAuthManager) with the project's DAGs; `reco_promote` triggered over REST v2 with `conf` moves an
alias in a real MLflow registry, and a second run rolls it back."""

from __future__ import annotations

from pathlib import Path

import pytest

from reco.devstack.local_stack import AIRFLOW_ADMIN, AirflowClient, AirflowError, AirflowHome, LocalStack, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

DAGS = Path(__file__).resolve().parents[1] / "dags"
MODEL = "reco-ranker-rest"


def _register_two_versions(tracking_uri: str) -> tuple[str, str]:
    """Two real versions of a tiny ranker; `champion` at the first."""
    from serving_helpers import tiny_bundle

    from reco.artifacts import registry

    client = registry.client_for(tracking_uri)
    exp = registry.ensure_experiment(client, "rest-trigger-test")
    versions = []
    for seed in (0, 1):
        run_id = client.create_run(exp).info.run_id
        lineage = registry.Lineage(
            data_snapshot_id=f"snap-{seed}", data_rows=10, validation_id="val", validation_bad_rows=0,
            parent_version=None, metrics={"ndcg@10": 0.1}, train_config={"seed": seed},
        )  # fmt: skip
        mv = registry.log_bundle(client, MODEL, tiny_bundle(seed=seed), lineage, run_id=run_id)
        client.set_terminated(run_id)
        versions.append(str(mv.version))
    registry.promote(client, MODEL, registry.CHAMPION, versions[0], who="test", reason="initial")
    return versions[0], versions[1]


@pytest.fixture(scope="module")
def airflow_stack(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str):
    """api-server, scheduler and dag-processor on a free port; stopped (whole process groups) afterwards."""
    tmp_path = tmp_path_factory.mktemp("airflow-rest")
    home = AirflowHome(
        root=tmp_path / "airflow",
        dags_folder=DAGS,
        api_port=free_port(),
        refresh_interval_s=5,
        extra={"RECO_HOME": str(tmp_path), "RECO_MLFLOW_TRACKING_URI": mlflow_server, "RECO_REGISTERED_MODEL": MODEL},
    )
    password = home.admin_password()
    with LocalStack(tmp_path) as stack:
        home.migrate(stack)
        for service in home.services():
            stack.start(service)
        yield home, AirflowClient(home.url, AIRFLOW_ADMIN, password), stack
    assert all(not s.running for s in stack.status()), "a process outlived the stack"


def test_trigger_promote_and_rollback_over_rest(airflow_stack, mlflow_server: str) -> None:
    from reco.artifacts import registry

    first, second = _register_two_versions(mlflow_server)
    _, client, _ = airflow_stack

    assert client.token()  # POST /auth/token with the SimpleAuthManager password
    client.wait_for_dags(["reco_promote"], timeout_s=90)
    client.unpause("reco_promote")

    run_id = client.trigger(
        "reco_promote",
        {"action": "promote", "source": second, "target_alias": "champion", "reason": "REST trigger test"},
    )
    assert client.wait_for_run("reco_promote", run_id, timeout_s=120) == "success"
    mlflow = registry.client_for(mlflow_server)
    champion = registry.alias_version(mlflow, MODEL, registry.CHAMPION)
    assert champion is not None and str(champion.version) == second
    assert champion.tags["champion.promote_reason"] == "REST trigger test"
    assert champion.tags["champion.previous_version"] == first

    run_id = client.trigger("reco_promote", {"action": "rollback", "target_alias": "champion", "reason": "undo"})
    assert client.wait_for_run("reco_promote", run_id, timeout_s=120) == "success"
    assert str(registry.alias_version(mlflow, MODEL, registry.CHAMPION).version) == first


def test_bad_credentials_and_bad_conf_are_refused(airflow_stack) -> None:
    home, client, _ = airflow_stack
    with pytest.raises(AirflowError, match="HTTP 401"):
        AirflowClient(home.url, AIRFLOW_ADMIN, "wrong-password").token()
    client.wait_for_dags(["reco_promote"], timeout_s=90)
    # The Param schema (target_alias pattern) is checked when the run is created: a 400, no run.
    with pytest.raises(AirflowError, match="HTTP 400"):
        client.trigger("reco_promote", {"action": "promote", "source": "1", "target_alias": "prod", "reason": "x"})
