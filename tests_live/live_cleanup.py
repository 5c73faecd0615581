"""What one run of the live test owns, and how to remove it, even when that run was killed.

A run is a tag (8 hex digits). Everything it creates carries the tag: the home `<tmp>/reco-live-runs/<tag>`
(with `owner.json`: the pytest process), the PostgreSQL databases `reco_live_<tag>_{airflow,mlflow}`, the
Redis prefix and Celery queue `reco-live-<tag>` (every process it starts has `RECO_REDIS_PREFIX` in its
environment). A run killed with SIGKILL leaves all of that behind; the next run sweeps what belongs to a tag
whose owner is gone, and never touches a run whose owner still runs (another engineer's, or CI's).

>>> tag_of("reco_live_0a1b2c3d_airflow"), tag_of("_kombu.binding.reco-live-0a1b2c3d"), tag_of("reco:x")
('0a1b2c3d', '0a1b2c3d', None)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from reco.state.processes import pid_alive, proc_start_time

RUNS = Path(tempfile.gettempdir()) / "reco-live-runs"
_TAG = re.compile(r"reco[-_]live[-_]([0-9a-f]{8})(?![0-9a-f])")


def tag_of(name: str) -> str | None:
    m = _TAG.search(name)
    return m.group(1) if m else None


def claim(tag: str) -> Path:
    """The run's home, with the record of its owner (this process)."""
    home = RUNS / tag
    home.mkdir(parents=True, exist_ok=False)
    me = os.getpid()
    (home / "owner.json").write_text(json.dumps({"pid": me, "start_time": proc_start_time(me)}))
    return home


def owner_alive(tag: str) -> bool:
    try:
        owner = json.loads((RUNS / tag / "owner.json").read_text())
    except (OSError, ValueError):
        return False
    return pid_alive(int(owner["pid"]), owner.get("start_time"))


def processes(select: Callable[[str], bool]) -> dict[int, str]:
    """pid -> tag of every process started by a run whose tag is selected (from /proc/<pid>/environ)."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(b"RECO_REDIS_PREFIX=reco-live-"):
                tag = tag_of(entry.decode(errors="replace"))
                if tag and int(proc.name) != os.getpid() and select(tag):
                    found[int(proc.name)] = tag
                break
    return found


def kill_groups(pids: list[int], grace_s: float = 30.0) -> None:
    """SIGTERM the process group of each pid (never ours), SIGKILL what is left after `grace_s`."""
    groups = set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    groups.discard(os.getpgrp())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.5)


def drop_databases(pg: Mapping[str, str], keep: Callable[[str], bool]) -> list[str]:
    """Drop every `reco_live_<tag>_*` database whose tag is not kept; returns the names dropped."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(host=pg.get("POSTGRES_HOST", "127.0.0.1"), port=int(pg.get("POSTGRES_PORT", 5432)),
                            user=pg.get("POSTGRES_USER", "postgres"), password=pg.get("POSTGRES_PASSWORD") or None,
                            dbname="postgres", connect_timeout=10)  # fmt: skip
    conn.autocommit = True
    dropped = []
    try:
        with conn.cursor() as cur:
            cur.execute(r"SELECT datname FROM pg_database WHERE datname LIKE 'reco\_live\_%'")
            for (name,) in cur.fetchall():
                tag = tag_of(name)
                if tag and not keep(tag):
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                    dropped.append(name)
    finally:
        conn.close()
    return dropped


def delete_keys(redis_urls: list[str], keep: Callable[[str], bool]) -> int:
    """Delete the keys of every run whose tag is not kept (its prefix, its Celery queue and kombu's bindings)."""
    import redis

    n = 0
    for url in dict.fromkeys(redis_urls):
        client = redis.Redis.from_url(url)
        try:
            stale = [k for k in client.scan_iter(match="*reco-live-*", count=1000)
                     if (t := tag_of(k.decode(errors="replace"))) and not keep(t)]  # fmt: skip
            for i in range(0, len(stale), 1000):
                n += client.delete(*stale[i : i + 1000])
        finally:
            client.close()
    return n


def remove(tag: str, *, pg: Mapping[str, str], redis_urls: list[str]) -> None:
    """Everything of one run but its home: what `reco down` left running (a task's orphan), databases, keys."""
    kill_groups(list(processes(lambda t: t == tag)))
    drop_databases(pg, keep=lambda t: t != tag)
    delete_keys(redis_urls, keep=lambda t: t != tag)


def sweep(*, pg: Mapping[str, str], redis_urls: list[str], say: Callable[[str], None] = print) -> None:
    """Remove what killed runs left behind: processes, databases, Redis keys, homes."""
    procs = processes(lambda t: not owner_alive(t))
    if procs:
        say(f"stopping {len(procs)} processes left by killed runs {sorted(set(procs.values()))}")
        kill_groups(list(procs))
    dropped = drop_databases(pg, keep=owner_alive)
    keys = delete_keys(redis_urls, keep=owner_alive)
    homes = [p for p in RUNS.glob("*") if p.is_dir() and not owner_alive(p.name)] if RUNS.is_dir() else []
    for home in homes:
        shutil.rmtree(home, ignore_errors=True)
    if dropped or keys or homes:
        say(f"removed {len(dropped)} databases, {keys} Redis keys, {len(homes)} homes of earlier runs")
