"""The shared integration fixtures reach real services."""

import json
import urllib.request


def test_mlflow_server_fixture_serves_the_registry_api(mlflow_server):
    with urllib.request.urlopen(f"{mlflow_server}/api/2.0/mlflow/registered-models/search") as r:
        assert r.status == 200
        assert isinstance(json.loads(r.read()), dict)


def test_airflow_db_is_migrated(airflow_db):
    assert (airflow_db / "airflow.db").stat().st_size > 0
