"""Shared fixtures. Integration fixtures talk to the real services of this machine (Redis at
127.0.0.1:6379, PostgreSQL at 127.0.0.1:5432) under their own key prefix / database and clean up."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

SHARED_ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k"


@pytest.fixture(scope="session")
def movielens_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MovieLens-100k atomic files: the shared copy when present, else fetched like a user would."""
    explicit = os.environ.get("RECO_TEST_ML100K")
    for cand in (Path(explicit) if explicit else None, SHARED_ML100K, Path("/work/shared/data/movielens-100k")):
        if cand is not None and (cand / "ml-100k.inter").exists():
            return cand
    from reco.data.movielens import fetch_movielens

    dest = Path.home() / ".cache" / "reco" / "ml-100k"
    if not (dest / "ml-100k.inter").exists():
        fetch_movielens(dest)
    return dest


@pytest.fixture
def redis_url() -> str:
    return os.environ.get("RECO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_prefix(redis_url: str):
    """A unique key prefix on the real Redis; every key under it is deleted afterwards."""
    import redis

    prefix = f"reco-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_configure(config: pytest.Config) -> None:
    """Point Airflow at a private SQLite home before anything imports it (Airflow reads its
    configuration once, at import)."""
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="reco-airflow-"))
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parents[1] / "dags")
    os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """An initialised Airflow metadata DB (SQLite) in the private AIRFLOW_HOME."""
    import subprocess
    import sys

    home = Path(os.environ["AIRFLOW_HOME"])
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return home


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server` (SQLite backend, served local artifacts) on a free loopback port, started
    and supervised the way `make demo` / `make up` start theirs."""
    from reco.devstack.local_stack import LocalStack, mlflow_service

    home = tmp_path_factory.mktemp("mlflow-home")
    stack = LocalStack(home)
    port = _free_port()
    stack.start(mlflow_service(home, port))
    yield f"http://127.0.0.1:{port}"
    stack.stop_started()
