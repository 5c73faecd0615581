"""Start, stop and health-check local processes (`LocalStack`): the supervisor under `make demo` and `make up`.

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
