"""`reco up --profile production`: the whole loop as local processes on real services.

What runs (each a supervised process of `reco.devstack.local_stack.LocalStack`, logs in `<home>/logs`):

* MLflow tracking server on PostgreSQL (database `MLFLOW_DB`), artifacts under `<home>/mlflow-artifacts`;
* Airflow 3 with the CeleryExecutor: api-server, scheduler, dag-processor, triggerer and a Celery worker,
  metadata and Celery results in PostgreSQL (database `AIRFLOW_DB`), broker `AIRFLOW__CELERY__BROKER_URL`
  (default Redis database 1; RabbitMQ works too: `amqp://guest:guest@127.0.0.1:5672//`);
* `reco bootstrap` once (the first model, when the registry has none), then the API (`reco serve`,
  `RECO_WORKERS` workers, default 2), the online learner (`reco learn`) and the stream sink (`reco sink`).

Configuration comes only from the environment and `.env` (values already in the environment win), with the
names docker-compose.yml uses: `POSTGRES_USER` / `POSTGRES_PASSWORD` (+ `POSTGRES_HOST`, `POSTGRES_PORT`
here, where compose has its `postgres` service), `AIRFLOW_FERNET_KEY`, `AIRFLOW_JWT_SECRET`,
`AIRFLOW_ADMIN_USER` / `AIRFLOW_ADMIN_PASSWORD`, the ports `RECO_API_PORT`, `MLFLOW_PORT`, `AIRFLOW_PORT`,
and every `RECO_*` / `AIRFLOW__*` variable, passed through to the processes. Databases are created when
missing. Secrets left empty are generated once and kept (mode 0600) under `<home>/airflow-production`.

>>> env = production_env(Path("/srv/reco"), {"POSTGRES_USER": "reco", "POSTGRES_PASSWORD": "pw",
...                      "AIRFLOW_FERNET_KEY": "k", "AIRFLOW_JWT_SECRET": "j", "AIRFLOW_ADMIN_PASSWORD": "a",
...                      "RECO_API_KEYS": "key"})
>>> env["AIRFLOW__CORE__EXECUTOR"], env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
('CeleryExecutor', 'postgresql+psycopg2://reco:pw@127.0.0.1:5432/airflow')
>>> env["RECO_MLFLOW_TRACKING_URI"], env["AIRFLOW__CELERY__BROKER_URL"]
('http://127.0.0.1:5000', 'redis://127.0.0.1:6379/1')
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from reco.devstack.local_stack import (
    AIRFLOW_ADMIN,
    LOOPBACK,
    SIMPLE_AUTH_MANAGER,
    AirflowClient,
    LocalStack,
    Service,
    StackError,
    bin_path,
    dag_ids_in,
    default_dags_folder,
    free_port,
    signals_as_interrupt,
    sink_service,
)
from reco.settings import split_list

__all__ = ["ProductionInfo", "production_env", "production_services", "up"]

#: Compose's variable names and their defaults on one machine.
DEFAULTS = {
    "POSTGRES_HOST": LOOPBACK,
    "POSTGRES_PORT": "5432",
    "POSTGRES_USER": "postgres",
    "POSTGRES_PASSWORD": "",
    "AIRFLOW_DB": "airflow",
    "MLFLOW_DB": "mlflow",
    "AIRFLOW_ADMIN_USER": AIRFLOW_ADMIN,
    "AIRFLOW_PORT": "8080",
    "MLFLOW_PORT": "5000",
    "RECO_API_PORT": "8000",
    "RECO_WORKERS": "2",
    "RECO_BOOTSTRAP_EPOCHS": "5",
    "RECO_REDIS_URL": "redis://127.0.0.1:6379/0",
    "AIRFLOW__CELERY__BROKER_URL": "redis://127.0.0.1:6379/1",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
    "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
}


def read_environment(dotenv: Path | None = Path(".env"), environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment over `.env` (compose's precedence: a variable set in the shell wins)."""
    values: dict[str, str] = {}
    if dotenv is not None and dotenv.is_file():
        from dotenv import dotenv_values

        values = {k: v for k, v in dotenv_values(dotenv).items() if v is not None}
    return {**values, **(os.environ if environ is None else environ)}


def _secret(folder: Path, name: str, make: Callable[[], str]) -> str:
    path = folder / f".{name}"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


def _fernet() -> str:
    import base64

    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _pg_url(cfg: Mapping[str, str], db: str, scheme: str = "postgresql+psycopg2") -> str:
    auth = quote(cfg["POSTGRES_USER"], safe="")
    if cfg["POSTGRES_PASSWORD"]:
        auth += ":" + quote(cfg["POSTGRES_PASSWORD"], safe="")
    return f"{scheme}://{auth}@{cfg['POSTGRES_HOST']}:{cfg['POSTGRES_PORT']}/{db}"


def production_env(home: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of every process of the profile (RECO_* for reco, AIRFLOW__* for Airflow).
    Secrets missing from `environ` are generated under `<home>/airflow-production` and kept."""
    cfg = {**DEFAULTS, **{k: v for k, v in environ.items() if v != ""}}
    airflow_home = (home / "airflow-production").resolve()
    fernet = cfg.get("AIRFLOW_FERNET_KEY") or _secret(airflow_home, "fernet_key", _fernet)
    jwt = cfg.get("AIRFLOW_JWT_SECRET") or _secret(airflow_home, "jwt_secret", lambda: secrets.token_urlsafe(32))
    api_keys = cfg.get("RECO_API_KEYS") or _secret(home / "run", "api_key", lambda: secrets.token_urlsafe(24))
    airflow_url = f"http://{LOOPBACK}:{cfg['AIRFLOW_PORT']}"
    passthrough = {k: v for k, v in environ.items() if k.startswith(("RECO_", "AIRFLOW__", "MLFLOW_"))}
    env = {
        **passthrough,
        "RECO_HOME": str(home.resolve()),
        "RECO_REDIS_URL": cfg["RECO_REDIS_URL"],
        "RECO_MLFLOW_TRACKING_URI": f"http://{LOOPBACK}:{cfg['MLFLOW_PORT']}",
        "RECO_API_KEYS": api_keys,
        "RECO_WORKERS": cfg["RECO_WORKERS"],
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": environ.get("AIRFLOW__CORE__DAGS_FOLDER") or str(default_dags_folder()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "false",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "false",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{cfg['AIRFLOW_ADMIN_USER']}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(airflow_home / "simple_auth_manager_passwords.json"),
        "AIRFLOW__CORE__FERNET_KEY": fernet,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{airflow_url}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt,
        "AIRFLOW__API__HOST": LOOPBACK,
        "AIRFLOW__API__PORT": cfg["AIRFLOW_PORT"],
        "AIRFLOW__API__BASE_URL": airflow_url,
        "AIRFLOW__API__WORKERS": environ.get("AIRFLOW__API__WORKERS", "1"),  # one machine: one is plenty
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": environ.get("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "30"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _pg_url(cfg, cfg["AIRFLOW_DB"]),
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3: name the driver that is installed.
        "AIRFLOW__CELERY__RESULT_BACKEND": _pg_url(cfg, cfg["AIRFLOW_DB"], "db+postgresql+psycopg2"),
        "AIRFLOW__CELERY__BROKER_URL": cfg["AIRFLOW__CELERY__BROKER_URL"],
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": cfg["AIRFLOW__CELERY__WORKER_CONCURRENCY"],
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": cfg["AIRFLOW__OPERATORS__DEFAULT_QUEUE"],
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        "MLFLOW_BACKEND_STORE_URI": _pg_url(cfg, cfg["MLFLOW_DB"]),
        # The job queue of mlflow 3.17 is not needed by reco (stack notes).
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', os.environ.get('PATH', ''))}",
    }
    return env


def admin_password(env: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """`AIRFLOW_ADMIN_PASSWORD` (else one generated and kept), written to SimpleAuthManager's file."""
    path = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    password = environ.get("AIRFLOW_ADMIN_PASSWORD") or _secret(
        path.parent, "admin_password", lambda: secrets.token_urlsafe(12)
    )
    user = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(":")[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({user: password}) + "\n")
    path.chmod(0o600)
    return password


def ensure_databases(env: Mapping[str, str], names: list[str]) -> list[str]:
    """Create the PostgreSQL databases that do not exist yet; returns those created."""
    import psycopg2
    from psycopg2 import sql
    from sqlalchemy.engine import make_url

    url = make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        conn = psycopg2.connect(host=url.host, port=url.port, user=url.username, password=url.password or None,
                                dbname="postgres", connect_timeout=10)  # fmt: skip
    except psycopg2.OperationalError as e:
        raise StackError(f"PostgreSQL at {url.host}:{url.port} as {url.username!r}: {str(e).strip()}") from None
    created = []
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in names:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    created.append(name)
    finally:
        conn.close()
    return created


def production_services(env: Mapping[str, str], home: Path, ml_port: int, api_port: int) -> dict[str, list[Service]]:
    """The long-running processes, in start order, grouped: registry, airflow, loop (API, learner, sink)."""
    airflow, reco = bin_path("airflow"), bin_path("reco")
    af_port = int(env["AIRFLOW__API__PORT"])
    artifacts = (home / "mlflow-artifacts").resolve()
    mlflow = Service(
        "mlflow",
        (bin_path("mlflow"), "server", "--backend-store-uri", env["MLFLOW_BACKEND_STORE_URI"],
         "--artifacts-destination", str(artifacts), "--serve-artifacts", "--host", LOOPBACK, "--port", str(ml_port),
         "--workers", "1"),
        env=env, port=ml_port, health_url=f"http://{LOOPBACK}:{ml_port}/health", ready_timeout_s=240,
    )  # fmt: skip
    # Log servers of the worker and the triggerer on free ports: another Airflow on this machine keeps its own.
    worker_env = {**env, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
    trigger_env = {**env, "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())}
    airflow_url = env["AIRFLOW__API__BASE_URL"]
    queue = env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    concurrency = env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]
    airflow_services = [
        Service("airflow-api-server", (airflow, "api-server", "--host", LOOPBACK, "--port", str(af_port)), env=env,
                port=af_port, health_url=f"{airflow_url}/api/v2/monitor/health", ready_timeout_s=240),
        Service("airflow-scheduler", (airflow, "scheduler"), env=env, settle_s=3.0),
        Service("airflow-dag-processor", (airflow, "dag-processor"), env=env, settle_s=3.0),
        Service("airflow-triggerer", (airflow, "triggerer"), env=trigger_env, settle_s=3.0),
        Service("airflow-worker", (airflow, "celery", "worker", "--queues", queue, "--concurrency", concurrency),
                env=worker_env, settle_s=5.0),
    ]  # fmt: skip
    api_url = f"http://{LOOPBACK}:{api_port}"
    loop = [
        Service("api", (reco, "serve", "--host", LOOPBACK, "--port", str(api_port), "--workers", env["RECO_WORKERS"]),
                env=env, port=api_port, health_url=f"{api_url}/readyz", ready_timeout_s=300),
        Service("learner", (reco, "learn"), env=env, settle_s=5.0),
        sink_service(env),
    ]  # fmt: skip
    return {"registry": [mlflow], "airflow": airflow_services, "loop": loop}


def _all_workers_ready(url: str, workers: int, timeout_s: float = 300.0) -> None:
    """`workers * 10` ready answers in a row (the kernel spreads connections over the workers)."""
    import time

    from reco.devstack.local_stack import http_ok

    deadline, streak = time.monotonic() + timeout_s, 0
    while streak < workers * 10:
        if time.monotonic() > deadline:
            raise StackError(f"the API's {workers} workers were not all ready after {timeout_s:.0f} s ({url})")
        streak = streak + 1 if http_ok(url) else 0
        if not streak:
            time.sleep(0.5)


@dataclass(frozen=True)
class ProductionInfo:
    """What the production profile started and how to reach it."""

    home: Path
    env: dict[str, str]
    airflow_url: str
    airflow_user: str
    airflow_password: str
    mlflow_url: str
    api_url: str
    api_key: str
    dags: tuple[str, ...]
    logs: Path
    bootstrapped: bool

    def airflow_client(self) -> AirflowClient:
        return AirflowClient(self.airflow_url, self.airflow_user, self.airflow_password)


def up(
    home: Path,
    *,
    environ: Mapping[str, str] | None = None,
    bootstrap: bool = True,
    dags_wait_s: float = 300.0,
    say: Callable[[str], None] = print,
) -> ProductionInfo:
    """Start the production profile under `home` and leave it running (`reco down` stops it). On any
    failure what this call started is stopped."""
    environ = dict(read_environment() if environ is None else environ)
    home = home.resolve()
    env = production_env(home, environ)
    cfg = {**DEFAULTS, **{k: v for k, v in environ.items() if v != ""}}
    password = admin_password(env, environ)
    groups = production_services(env, home, int(cfg["MLFLOW_PORT"]), int(cfg["RECO_API_PORT"]))
    dags_folder = Path(env["AIRFLOW__CORE__DAGS_FOLDER"])
    with signals_as_interrupt(), LocalStack(home) as stack:
        created = ensure_databases(env, [cfg["AIRFLOW_DB"], cfg["MLFLOW_DB"]])
        note = f" (created {', '.join(created)})" if created else ""
        say(f"postgresql: databases {cfg['AIRFLOW_DB']}, {cfg['MLFLOW_DB']}{note}")
        for service in groups["registry"]:
            say(f"mlflow: tracking server on PostgreSQL, port {service.port}")
            stack.start(service)
        say("airflow: db migrate (PostgreSQL)")
        stack.run_task("airflow-db-migrate", [bin_path("airflow"), "db", "migrate"], env=env, timeout_s=900)
        for service in groups["airflow"]:
            say(f"airflow: {service.name.removeprefix('airflow-')}")
            stack.start(service)
        user = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(":")[0]
        client = AirflowClient(env["AIRFLOW__API__BASE_URL"], user, password)
        wanted = dag_ids_in(dags_folder)
        say(f"airflow: waiting for the DAGs {', '.join(wanted)}")
        client.wait_for_dags(wanted, timeout_s=dags_wait_s)
        bootstrapped = False
        if bootstrap:
            say("bootstrap: the first model, when the registry has none")
            argv = [bin_path("reco"), "bootstrap", "--epochs", cfg["RECO_BOOTSTRAP_EPOCHS"]]
            stack.run_task("bootstrap", argv, env=env, timeout_s=3600)
            bootstrapped = True
        for service in groups["loop"]:
            say(f"{service.name}: reco {service.argv[1]}")
            stack.start(service)
            if service.name == "api":  # one ready answer proves one worker; every worker must have its models
                _all_workers_ready(f"{service.health_url}", int(env["RECO_WORKERS"]))
        # A process can pass its start-up check and die a little later (a broken executor config kills the
        # scheduler on its first loop): everything must still run now.
        dead = [s.name for group in groups.values() for s in group if stack.running_pid(s.name) is None]
        if dead:
            raise StackError(f"died after starting: {', '.join(dead)}; logs in {stack.log_dir}")
        stack.detach()
    api = groups["loop"][0]
    return ProductionInfo(
        home=home, env=env, airflow_url=env["AIRFLOW__API__BASE_URL"], airflow_user=client.username,
        airflow_password=password, mlflow_url=env["RECO_MLFLOW_TRACKING_URI"], api_url=f"http://{LOOPBACK}:{api.port}",
        api_key=split_list(env["RECO_API_KEYS"])[0], dags=tuple(wanted), logs=stack.log_dir,
        bootstrapped=bootstrapped,
    )  # fmt: skip
