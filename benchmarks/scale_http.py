"""How the served request's cost grows with the catalogue, over HTTP: `scale.py`'s synthetic catalogues served by
the real API app, each against a 1,682-item reference server, requests in alternation.

`scale.py` measures the request pipeline in process (no HTTP, no Redis); the user sees POST /v1/recommendations
on an API worker: HTTP + the request's features from Redis + the pipeline + the impression log. Here, for each
`--sizes` N:

* `scale.synthetic_bundle(N)` (the production model's dimensions, seeded weights) is written to a local model
  cache and served by the API app (`serving_latency.bench_app`: the real app, uvicorn, 1 worker, the
  allocator/BLAS settings of `reco serve`), as `serving_latency.py` serves its model: the registry unreachable,
  the arm served from its cached bundle. The experiment config has ONE arm (control, epsilon-greedy 0.1, 100%
  traffic): the app loads one model per arm, and one copy of the 1M model is ~4 GB (the built-in config's
  two arms would hold two copies of the same bundle, which no deployment would do for one model);
* a reference server of the `--ref` catalogue (1,682 items, same config) runs for the whole run;
* each server has its own Redis key prefix (trending seeded: 300 views), deleted at the end;
* one client (`serving_latency.Client`, keep-alive) alternates requests between the two servers, realistic
  traffic on each: every request is preceded (untimed) by one more view of its session, sessions of 1-20 views
  (a new session's first request follows its first view), users rotating;
* reported per size: HTTP wall p50/p99 of both and the paired p50 ratio; the servers' CPU per request
  (/proc of each server's process tree, all threads, the impression log included; read per block of
  `BLOCK` requests because /proc counts in 10 ms ticks) and its ratio (whole phase, and the median of the
  blocks' ratios with their range); the API worker's RSS (and peak, VmHWM: the load and build) after the
  phase; `ready_s`: server start to /readyz 200 (imports + `ModelBundle.load` + `ServedModel.build`) with its
  CPU (`ready_cpu_s`), and the reference's, so the model's share is the difference; and 4 clients against
  the N server (`serving_latency.clients_phase`: sessions of 20 views) for p50/p99 and recommendations/s.

Prints one JSON line per size.

    .venv/bin/python benchmarks/scale_http.py [--sizes 1682 1000000] [--requests 1000] [--c4-requests 400]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: the sibling benchmarks

from scale import synthetic_bundle
from serving_latency import (
    ROOT,
    Client,
    clients_phase,
    pick,
    seed_session,
    start_server,
    stop_server,
    tree_cpu_s,
    wait_ready,
)

BLOCK = 50  # requests per server per CPU block (/proc's 10 ms ticks: ~150 ms of CPU per block)
WARMUP = 30
ONE_ARM = """version: 1
experiments:
  - name: scale
    salt: scale-2026
    control: control
    arms:
      - {name: control, traffic: 1.0, alias: arm-control, exploration: {strategy: epsilon_greedy, rate: 0.1}}
"""


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (peak) of the server process and its children, MB."""
    pids = [pid] + [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
                    if _parent(p) == pid]  # fmt: skip
    rss = hwm = 0.0
    for p in pids:
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
        except OSError:
            continue
        rss += int(fields["VmRSS"].split()[0]) / 1024
        hwm += int(fields["VmHWM"].split()[0]) / 1024
    return round(rss), round(hwm)


def _parent(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


class Server:
    """One API server of a synthetic catalogue: its bundle in a local model cache, its own Redis prefix."""

    def __init__(self, n_items: int, tmp: Path, redis_url: str) -> None:
        from reco.state.store import RedisStore, connect
        from serving.models import ModelCache

        self.n_items, self.redis_url = n_items, redis_url
        home = tmp / f"n{n_items}-{uuid.uuid4().hex[:4]}"
        bundle = synthetic_bundle(n_items)
        self.items = list(bundle.item_ids[1:])
        ModelCache(home / "cache").save("control", "1", bundle)
        del bundle
        (home / "experiments.yaml").write_text(ONE_ARM)
        self.prefix = f"bench-scale-{uuid.uuid4().hex[:8]}"
        self.store = RedisStore(connect(redis_url), self.prefix)
        seed_session(self.store, self.items)  # trending: 300 views by other users
        env = {**os.environ, "RECO_HOME": str(home / "home"), "RECO_REDIS_URL": redis_url,
               "RECO_REDIS_PREFIX": self.prefix, "RECO_MLFLOW_TRACKING_URI": "http://127.0.0.1:1",
               "RECO_MODEL_CACHE_DIR": str(home / "cache"), "RECO_EXPERIMENTS_PATH": str(home / "experiments.yaml"),
               "RECO_TORCH_THREADS": "1", "RECO_MODEL_POLL_S": "3600",
               # as `reco serve` sets them (reco/cli/serve.py) and serving_latency.py does
               "MALLOC_MMAP_THRESHOLD_": "16777216", "MALLOC_TRIM_THRESHOLD_": "67108864",
               "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "benchmarks")}  # fmt: skip
        t0 = time.perf_counter()
        self.proc, self.port = start_server(env, 1)
        try:
            wait_ready(self.proc, self.port, timeout_s=1800)
        except BaseException:
            self.close()
            raise
        self.ready_s = round(time.perf_counter() - t0, 2)
        self.ready_cpu_s = round(tree_cpu_s(self.proc.pid), 2)
        self.conn = Client(self.port, timeout=60)
        self.rng = np.random.default_rng(n_items)
        self.count = self.left = 0
        self.user = self.sid = ""

    def next_payload(self) -> bytes:
        """One more view of the current session (written now, untimed), or a new session's first view."""
        from reco.data.events import Event

        if self.left == 0:
            self.count += 1
            self.user, self.sid = f"u{self.count % 50}", f"s{self.count}"
            self.left = int(self.rng.integers(1, 21))
        self.left -= 1
        view = Event(event_id=f"{self.sid}-v{self.left}", ts=datetime.now(UTC), user_id=self.user,
                     session_id=self.sid, item_id=pick(self.rng, self.items), event_type="view")  # fmt: skip
        self.store.ingest([view])
        body = {"user_id": self.user, "session_id": self.sid, "limit": 20, "device": "mobile"}
        return json.dumps(body).encode()

    def request(self) -> float:
        payload = self.next_payload()
        t0 = time.perf_counter()
        status, raw = self.conn.post("/v1/recommendations", payload, {"Content-Type": "application/json"})
        seconds = time.perf_counter() - t0
        if status != 200 or b'"items":[]' in raw:
            raise RuntimeError(f"{self.n_items} items: /v1/recommendations answered {status}: {raw[:300]!r}")
        return seconds

    def cpu_s(self) -> float:
        return tree_cpu_s(self.proc.pid)

    def close(self) -> None:
        if getattr(self, "conn", None) is not None:
            self.conn.close()
        stop_server(self.proc)
        # A client of its own with a long timeout: the store's 0.5 s timed out scanning ~66k keys under load.
        from reco.state.redis_io import connect

        client = connect(self.redis_url, socket_timeout=30, connect_timeout=5)
        batch = []
        for key in client.scan_iter(match=f"{self.prefix}:*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)


def paired(server: Server, ref: Server, n_requests: int, alternate: str) -> dict[str, list[float]]:
    """The two servers in alternation: per request (`alternate="request"`: N, ref, N, ref, ...) or in blocks
    of BLOCK requests (N's block, then ref's, the order swapped every round). Wall per request, CPU per request
    per block. Per request, each server's requests run right after the other's, whose memory traffic evicted
    its tables from the shared CPU caches (the 1M server's ~4 GB evicts the reference's, which alone stays
    cache-warm), a cost no deployed worker pays from its neighbour every request; blocks keep each server's
    cache its own and still pair the load within ~1 s."""
    out: dict[str, list[float]] = {"wall": [], "ref_wall": [], "cpu": [], "ref_cpu": []}
    for k in range(max(1, n_requests // BLOCK)):
        c0, r0 = server.cpu_s(), ref.cpu_s()
        if alternate == "request":
            for _ in range(BLOCK):
                out["wall"].append(server.request())
                out["ref_wall"].append(ref.request())
        else:
            for s, key in ((server, "wall"), (ref, "ref_wall"))[:: 1 if k % 2 == 0 else -1]:
                out[key] += [s.request() for _ in range(BLOCK)]
        out["cpu"].append((server.cpu_s() - c0) / BLOCK)
        out["ref_cpu"].append((ref.cpu_s() - r0) / BLOCK)
    return out


def four_clients(s: Server, n_requests: int) -> dict:
    """`serving_latency.clients_phase` against one server: 4 client threads, sessions of 20 views."""
    bundle = type("Items", (), {"item_ids": ["", *s.items]})
    return clients_phase(s.store, bundle, s.port, {"limit": 20, "device": "mobile"},
                         {"Content-Type": "application/json"}, n_requests, 4, s.proc.pid)  # fmt: skip


def measure(n_items: int, ref: Server, args: argparse.Namespace, tmp: Path) -> dict:
    server = Server(n_items, tmp, args.redis_url)
    try:
        for _ in range(WARMUP):
            server.request(), ref.request()
        start, c0 = time.perf_counter(), (server.cpu_s(), ref.cpu_s())
        p = {k: np.asarray(v) * 1000 for k, v in paired(server, ref, args.requests, args.alternate).items()}
        spent = (server.cpu_s() - c0[0], ref.cpu_s() - c0[1])
        phase_s = time.perf_counter() - start
        rss, hwm = tree_rss_mb(server.proc.pid)
        # 4 clients, N's server then the reference's, twice (half the requests each time): paired by round.
        rounds = [(four_clients(server, args.c4_requests // 2), four_clients(ref, args.c4_requests // 2))
                  for _ in range(2)]  # fmt: skip
        c4 = {key: [r[i] for r in rounds] for i, key in ((0, "n"), (1, "ref"))}
        block_ratios = p["cpu"] / p["ref_cpu"]
        n = len(p["wall"])
        out = {
            "benchmark": "scale_http", "items": n_items, "ref_items": ref.n_items, "requests": n,
            "p50_ms": round(float(np.percentile(p["wall"], 50)), 2),
            "p99_ms": round(float(np.percentile(p["wall"], 99)), 2),
            "ref_p50_ms": round(float(np.percentile(p["ref_wall"], 50)), 2),
            "ref_p99_ms": round(float(np.percentile(p["ref_wall"], 99)), 2),
            "p50_ratio_vs_ref": round(float(np.percentile(p["wall"], 50) / np.percentile(p["ref_wall"], 50)), 2),
            "server_cpu_ms_per_request": round(spent[0] / n * 1000, 3),
            "ref_server_cpu_ms_per_request": round(spent[1] / n * 1000, 3),
            "cpu_ratio_vs_ref": round(spent[0] / spent[1], 2),
            "cpu_ratio_blocks_median": round(float(np.median(block_ratios)), 2),
            "cpu_ratio_blocks_range": [round(float(block_ratios.min()), 2), round(float(block_ratios.max()), 2)],
            "api_worker_rss_mb": rss, "api_worker_peak_rss_mb": hwm,
            "ref_api_worker_rss_mb": tree_rss_mb(ref.proc.pid)[0],
            "ready_s": server.ready_s, "ready_cpu_s": server.ready_cpu_s,
            "ref_ready_s": ref.ready_s, "ref_ready_cpu_s": ref.ready_cpu_s,
            "alternate": args.alternate,
            **{f"{pre}c4_{k}": [c[k] for c in c4[side]] for side, pre in (("n", ""), ("ref", "ref_"))
               for k in ("p50_ms", "p99_ms", "rec_per_s", "errors")},
            "c4_server_cpu_ms_per_recommendation": [c["cpu_ms_per_recommendation"]["server"] for c in c4["n"]],
            "ref_c4_server_cpu_ms_per_recommendation": [c["cpu_ms_per_recommendation"]["server"]
                                                        for c in c4["ref"]],
            "paired_phase_s": round(phase_s, 1),
            "load_avg": [round(x, 1) for x in os.getloadavg()],
        }  # fmt: skip
        print(json.dumps(out), flush=True)
        return out
    finally:
        server.close()


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1682, 1_000_000])
    ap.add_argument("--requests", type=int, default=1000, help="requests per server in the alternating phase")
    ap.add_argument("--c4-requests", type=int, default=400, help="requests of the 4-client phase, per server")
    ap.add_argument(
        "--alternate",
        choices=["block", "request"],
        default="block",
        help="alternate the servers per block of requests or per request (see `paired`)",
    )
    ap.add_argument("--ref", type=int, default=1682, help="the reference server's catalogue size")
    ap.add_argument("--redis-url", default=os.environ.get("RECO_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args(argv)
    if args.requests < BLOCK:
        ap.error(f"--requests must be at least {BLOCK}")
    tmp = Path(tempfile.mkdtemp(prefix="reco-scale-http-"))
    try:
        ref = Server(args.ref, tmp, args.redis_url)
        try:
            return [measure(n, ref, args, tmp) for n in args.sizes]
        finally:
            ref.close()
    finally:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
