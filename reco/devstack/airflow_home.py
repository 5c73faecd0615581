"""The local Airflow of `make demo` / `make up`: its home (SQLite metadata DB, LocalExecutor,
SimpleAuthManager, generated secrets), its processes, and a small client for its REST API."""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reco.devstack.supervisor import LOOPBACK, LocalStack, Service, bin_path

SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
AIRFLOW_ADMIN = "admin"


@dataclass(frozen=True)
class AirflowHome:
    """An Airflow installation under `<home>/airflow`: SQLite metadata DB, LocalExecutor, SimpleAuthManager.

    `env()` is the environment of every Airflow process (CLI, api-server, scheduler, dag-processor) and of
    the tasks they run, so the `RECO_*` settings given in `extra` reach the DAG tasks.
    """

    root: Path
    dags_folder: Path
    api_port: int = 8080
    refresh_interval_s: int = 30
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    @property
    def db_path(self) -> Path:
        return self.root / "airflow.db"

    @property
    def passwords_file(self) -> Path:
        return self.root / "simple_auth_manager_passwords.json.generated"

    def _secret(self, name: str) -> str:
        """A secret created once and kept under the Airflow home (every component must share it)."""
        path = self.root / f".{name}"
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def admin_password(self) -> str:
        """The admin password (SimpleAuthManager's generated file; created here first so that it is known)."""
        try:
            passwords = json.loads(self.passwords_file.read_text())
        except (OSError, ValueError):
            passwords = {}
        if AIRFLOW_ADMIN not in passwords:
            self.root.mkdir(parents=True, exist_ok=True)
            passwords[AIRFLOW_ADMIN] = secrets.token_urlsafe(12)
            self.passwords_file.write_text(json.dumps(passwords) + "\n")
            self.passwords_file.chmod(0o600)
        return str(passwords[AIRFLOW_ADMIN])

    def env(self) -> dict[str, str]:
        root = self.root.resolve()
        return {
            **self.extra,
            "AIRFLOW_HOME": str(root),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder.resolve()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{AIRFLOW_ADMIN}:admin",
            "AIRFLOW__CORE__FERNET_KEY": self._fernet_key(),
            "AIRFLOW__API__HOST": LOOPBACK,
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt_secret"),
            # New DAG files are noticed on this interval (default 300 s).
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(self.refresh_interval_s),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(root / "logs"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def _fernet_key(self) -> str:
        path = self.root / ".fernet_key"
        if not path.exists():
            import base64

            self.root.mkdir(parents=True, exist_ok=True)
            path.write_text(base64.urlsafe_b64encode(os.urandom(32)).decode())
            path.chmod(0o600)
        return path.read_text().strip()

    def migrate(self, stack: LocalStack) -> None:
        """`airflow db migrate` (idempotent; about 2 s on an up-to-date DB)."""
        self.root.mkdir(parents=True, exist_ok=True)
        stack.run_task("airflow-db-migrate", [bin_path("airflow"), "db", "migrate"], env=self.env(), timeout_s=600)

    def services(self) -> list[Service]:
        """api-server, scheduler and dag-processor (what a DAG run from the UI or REST needs)."""
        env = self.env()
        airflow = bin_path("airflow")
        return [
            Service(
                "airflow-api-server",
                (airflow, "api-server", "--host", LOOPBACK, "--port", str(self.api_port)),
                env=env,
                port=self.api_port,
                health_url=f"{self.url}/api/v2/monitor/health",
                ready_timeout_s=180,
            ),
            Service("airflow-scheduler", (airflow, "scheduler"), env=env, settle_s=3.0),
            Service("airflow-dag-processor", (airflow, "dag-processor"), env=env, settle_s=3.0),
        ]


class AirflowError(RuntimeError):
    """The Airflow REST API refused a request or a DAG run did not succeed."""


class AirflowClient:
    """The few Airflow 3 REST v2 calls the local stack and its tests make (token, unpause, trigger, wait)."""

    def __init__(self, base_url: str, username: str, password: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout_s = timeout_s
        self._token: str | None = None

    def _request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                text = r.read().decode()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:1000]
            raise AirflowError(f"{method} {path} -> HTTP {e.code}: {detail}") from None
        except OSError as e:
            raise AirflowError(f"{method} {path}: {e}") from None
        return json.loads(text) if text else None

    def token(self) -> str:
        """A JWT from `POST /auth/token` (cached)."""
        if self._token is None:
            body = {"username": self.username, "password": self.password}
            self._token = str(self._request("POST", "/auth/token", body, auth=False)["access_token"])
        return self._token

    def dag_ids(self) -> list[str]:
        return [d["dag_id"] for d in self._request("GET", "/api/v2/dags?limit=100")["dags"]]

    def wait_for_dags(self, dag_ids: Sequence[str], timeout_s: float = 120.0) -> None:
        """Block until the dag-processor has registered every DAG in `dag_ids`."""
        deadline = time.monotonic() + timeout_s
        missing = set(dag_ids)
        while time.monotonic() < deadline:
            missing = set(dag_ids) - set(self.dag_ids())
            if not missing:
                return
            time.sleep(1.0)
        raise AirflowError(f"DAGs not registered after {timeout_s:.0f} s: {sorted(missing)}")

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """`POST /api/v2/dags/{dag_id}/dagRuns` (logical_date null: a manual run now); returns the run id."""
        run = self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": dict(conf or {})})
        return str(run["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 300.0) -> str:
        """Block until the run ends; returns "success" or raises AirflowError naming the state."""
        deadline = time.monotonic() + timeout_s
        state = "queued"
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state == "success":
                return state
            if state == "failed":
                raise AirflowError(f"{dag_id} run {run_id} failed")
            time.sleep(1.0)
        raise AirflowError(f"{dag_id} run {run_id} still {state} after {timeout_s:.0f} s")


def default_dags_folder() -> Path:
    """`<repo>/dags` of this checkout (the package is installed in editable mode), or RECO_DAGS_FOLDER."""
    explicit = os.environ.get("RECO_DAGS_FOLDER")
    return Path(explicit) if explicit else Path(__file__).resolve().parents[2] / "dags"
