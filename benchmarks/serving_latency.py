"""Serving latency: POST /v1/recommendations over real HTTP vs the bare model forward, in one run.

Setup: a full-size `SessionAwareRanker` (default RankerConfig) over the MovieLens-100k catalogue
(1,682 items; weights seeded, latency does not depend on training), served by the API app (uvicorn,
1 worker, the allocator/BLAS settings of `reco serve`) from its local model cache; a 20-item session in
Redis; every request ranks 500 candidates and returns 20. The bare forward is the module's own
`SessionAwareRanker.forward(session, the same 500 candidates, page, device)` on tensors prepared
beforehand, under `torch.inference_mode`, in this process. For reference the two scoring paths are timed
in the same loop (alternating): `ModelBundle.score` (ids in, numpy out: what evaluation uses) and
`FrozenScorer.score` (rows in: what the server uses inside the pipeline).

The server is `bench_app` below: the real app plus two empty endpoints that parse the same request body
and return a constant, one async (on the event loop, like /v1/recommendations) and one sync (thread pool).
They measure the fixed cost of HTTP + uvicorn + FastAPI on this machine, which no pipeline work can
remove. All are measured interleaved (one recommendation, one bare forward, one scoring path, one empty
call, ...), so machine load from other processes hits them alike; the older bars are read from that phase. A
second phase times blocks of back-to-back recommendations and back-to-back forwards (steady state: one
request's impression log overlaps the next request). A third, "settled", waits (untimed) after each
recommendation until its impression write is in Redis before timing a bare forward, so that nothing of the
server's overlaps the forward (`p50_ratio_settled`). A fourth, "new sessions", sends each recommendation for
another 20-item session written just before (untimed), so the server has nothing of it remembered, and
times the bare forward on that session and its candidates (`p50_ratio_new_sessions`). A fifth, "browse",
is the realistic steady state: each request follows one more view of its session (written untimed just
before; a session ends after 20 views and the next one starts), and the bare forward runs on that session and
its candidates (`p50_ratio_browse`); the server's CPU over this phase is `server_per_browse_recommendation`.
New sessions and browse also report the pipeline's own time inside the server (`server_pipeline`: the answers'
`latency_ms`). A sixth, "clients4", runs the browse protocol from 4 clients (each its own connection and sessions)
for `--requests` requests in all: p50/p99 and recommendations/s, against one server per `--clients-workers` count
(default 1 and 2 uvicorn workers), with the clients as threads of this process (`workers_<n>`, the protocol of the
earlier figures) and as 4 processes (`workers_<n>_processes`: no shared GIL; `--client-modes`). New sessions, browse
and clients4 alternate users of both arms of the built-in experiment (control explores epsilon-greedy, treatment
Thompson sampling: their costs differ), with per-arm p50s (`http_control`, `http_treatment`). The 4-client phase
also reports the CPU per recommendation of the server (process tree), Redis (INFO cpu) and the clients
(`cpu_ms_per_recommendation`), and each client's p50 (`p50_ms_per_client`: alike when the server serves requests in
the order it reads them).

Every HTTP call here goes through `Client`, a minimal HTTP/1.1 keep-alive client (one send per request, the
answer framed by Content-Length), not the stdlib's `http.client`, whose own CPU (~0.12 ms a call, header
parsing through `email.parser`) was inside every timed latency and on the cores the server shares; the
requests on the wire are the same.

    .venv/bin/python benchmarks/serving_latency.py [--requests 400] [--workers 1] [--clients-workers 1,2]
        [--client-modes threads,processes]

Prints one JSON line (with `uptime`) on stdout and the issue's three bars in words on stderr (`targets`):
p50 <= 1.0x the bare forward (browse and new sessions), p99 <= 2x p50 with 4 clients, >= 300
recommendations/s on the 2 cores (per worker count). Older bars kept: p50 <= 1.5x, p99 < 30 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from reco.state.store import RedisStore
from fastapi.responses import Response

from serving.schemas import RecommendationRequest  # module level: FastAPI resolves the probes' annotations here

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 100  # interleaved rounds not timed
BLOCK = 20  # calls of one kind in a row (back-to-back phase)
ALTERNATE = ({"frozen_scorer", "empty_async"}, {"bundle_score", "empty_sync"})  # kinds timed every other round
ML100K = Path(os.environ.get("RECO_TEST_ML100K", "/work/shared/data/movielens-100k"))


def seed_session(
    store: RedisStore,
    items: list[str],
    seed: int = 0,
    session_id: str = "bench-s",
    others: int = 300,
    user: str = "bench",
) -> list[str]:
    """A 20-item session (`user`, session `session_id`) plus `others` views by other users (trending),
    written through the store; returns the session items."""
    from reco.data.events import Event

    rng = np.random.default_rng(seed)
    session = [str(i) for i in rng.choice(items, 20, replace=False)]
    ts = datetime.now(UTC)
    store.ingest([Event(event_id=f"{session_id}-{i}", ts=ts, user_id=user, session_id=session_id, item_id=it,
                        event_type="view") for i, it in enumerate(session)])  # fmt: skip
    store.ingest([Event(event_id=f"t{i}", ts=ts, user_id=f"t{i}", item_id=str(it), event_type="view")
                  for i, it in enumerate(rng.choice(items, others))])  # fmt: skip
    return session


def request_candidates(store: RedisStore, served, session_id: str = "bench-s", user: str = "bench") -> list[str]:
    """The exact candidates the benchmark request ranks (`user`, session `session_id`)."""
    return request_candidates_for(store, served, user, session_id)


def full_bundle(seed: int = 0):
    import torch

    from reco.artifacts.bundle import PAD, ModelBundle
    from reco.data.movielens import load_movielens
    from reco.models.ranker import RankerConfig, SessionAwareRanker

    catalog = load_movielens(ML100K).catalog
    torch.manual_seed(seed)
    config = RankerConfig(n_items=len(catalog) + 1, n_categories=len(catalog.categories) + 1)
    return ModelBundle(SessionAwareRanker(config), [PAD, *catalog.item_ids], catalog, {"version": "1"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_app():
    """The API app plus the fixed-overhead probes (uvicorn factory; not part of the product)."""
    from serving.app import create_app

    app = create_app()

    @app.post("/bench/empty-sync")
    def empty_sync(body: RecommendationRequest) -> Response:
        return Response(b'{"items":[]}', media_type="application/json")

    @app.post("/bench/empty-async")
    async def empty_async(body: RecommendationRequest) -> Response:
        return Response(b'{"items":[]}', media_type="application/json")

    @app.post("/bench/worker")
    async def worker() -> Response:  # which worker process holds the connection (`place_connections`)
        return Response(str(os.getpid()).encode(), media_type="text/plain")

    return app


class Client:
    """The timed client: HTTP/1.1 on one keep-alive connection, a request written in one send, the answer
    framed by its Content-Length (what the server always sends here), no header parsing beyond that.

    The stdlib's `http.client` spent ~0.12 ms of its own CPU per call on this machine (its header parsing
    goes through `email.parser`), ~0.03 ms here; that time was inside every timed latency and, in the
    4-client phase, on the 2 cores the server shares (docs/benchmarks.md, "Serving on realistic traffic").
    The requests on the wire are the same (method, path, Host, Content-Type, Content-Length, the body).
    An idle connection the server has closed (uvicorn's keep-alive) is opened again before a request is
    sent, never mid-request, so no request is sent twice."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port, self.timeout = port, timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buf = sock, b""
        return sock

    def _usable(self) -> socket.socket:
        """The open connection, or a new one when the server closed it while idle (EOF waiting to be read)."""
        sock = self.sock
        if sock is None:
            return self._connect()
        sock.setblocking(False)
        try:
            closed = sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:  # nothing to read: still open
            closed = False
        except OSError:
            closed = True
        finally:
            sock.settimeout(self.timeout)
        if closed:
            sock.close()
            return self._connect()
        return sock

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        sock = self._usable()
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode()
                     + body)  # fmt: skip
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv(sock)
        lines = buf[:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = dict(line.split(":", 1) for line in lines[1:])
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        if "content-length" not in fields:
            raise RuntimeError(f"{path} answered without Content-Length ({lines[0]!r}): this client needs it")
        stop = end + 4 + int(fields["content-length"])
        while len(buf) < stop:
            buf += self._recv(sock)
        self.buf = buf[stop:]
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, buf[end + 4 : stop]

    def _recv(self, sock: socket.socket) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-answer")
        return chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def post(conn: Any, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST through a `Client`, or a stdlib `http.client.HTTPConnection` (benchmarks/vs_mlflow_serve.py's)."""
    if isinstance(conn, Client):
        return conn.post(path, body, headers)
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def timed_recommend(conn: Client, payload: bytes, headers: dict[str, str]) -> tuple[float, float]:
    """POST /v1/recommendations: its wall seconds, and the seconds of the pipeline inside the server (the answer's
    `latency_ms`); an answer other than 200 stops the run."""
    t0 = time.perf_counter()
    status, raw = post(conn, "/v1/recommendations", payload, headers)
    seconds = time.perf_counter() - t0
    if status != 200:
        raise RuntimeError(f"/v1/recommendations answered {status}: {raw[:300]!r}")
    start = raw.index(b'"latency_ms":') + len(b'"latency_ms":')
    return seconds, float(raw[start : raw.index(b",", start)]) / 1000


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (/proc/<pid>/stat; Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """`process_cpu_s` of a process and its children (the uvicorn supervisor and its `--workers`)."""
    total = process_cpu_s(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += process_cpu_s(int(stat.parent.name))
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            pass
    return total


def arm_users(prefix: str, per_arm: int) -> list[str]:
    """`per_arm` users of each arm of the built-in experiment, alternating arms (control, treatment, control,
    ...): the arms explore differently (epsilon-greedy, Thompson sampling), so every protocol is measured on
    both alike, as real traffic splits them."""
    from reco.experiments.assignment import assign, load_config

    experiment = load_config().experiment()
    found: dict[str, list[str]] = {a.name: [] for a in experiment.arms}
    k = 0
    while any(len(v) < per_arm for v in found.values()):
        user = f"{prefix}{k}"
        arm = found[assign(experiment, user).arm]
        if len(arm) < per_arm:
            arm.append(user)
        k += 1
    return [u for group in zip(*found.values(), strict=True) for u in group]


def arm_of(user: str) -> str:
    from reco.experiments.assignment import assign, load_config

    return assign(load_config().experiment(), user).arm


def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3)}  # fmt: skip


def pick(rng: np.random.Generator, items: list[str]) -> str:
    """One item uniformly: the same pick as `rng.choice(items)` (same stream), without converting the whole
    list to an array on every call (~0.1-0.2 ms of the client's CPU per request, on the cores the server uses)."""
    return items[int(rng.integers(len(items)))]


def _view(store: RedisStore, session_id: str, user: str, item: str, n: int) -> None:
    from reco.data.events import Event

    store.ingest([Event(event_id=f"{session_id}-v{n}", ts=datetime.now(UTC), user_id=user, session_id=session_id,
                        item_id=item, event_type="view")])  # fmt: skip


def browse_phase(store, served, bundle, model, tensors, conn, body, headers, n: int) -> dict[str, list[float]]:
    """One more view before each request (untimed), sessions of 20 views, alternately of a control and a
    treatment user; the bare forward on the same session and candidates."""
    import torch

    rng = np.random.default_rng(11)
    items = bundle.item_ids[1:]
    users = arm_users("bench-b", 1)
    out: dict[str, list[float]] = {"http": [], "server_pipeline": [], "bare_forward": [],
                                   **{f"http_{arm_of(u)}": [] for u in users}}  # fmt: skip
    session: list[str] = []
    sid = user = ""
    for i in range(n):
        if i % 20 == 0:
            user = users[(i // 20) % len(users)]
            sid, session = f"{user}-s{i}", []
        session.append(pick(rng, items))
        _view(store, sid, user, session[-1], i)
        cands = request_candidates_for(store, served, user, sid)
        payload = json.dumps({**body, "user_id": user, "session_id": sid}).encode()
        wall, pipeline = timed_recommend(conn, payload, headers)
        out["http"].append(wall)
        out["server_pipeline"].append(pipeline)
        out[f"http_{arm_of(user)}"].append(wall)
        fresh = (rows_tensor(bundle, session), rows_tensor(bundle, cands), *tensors[2:])
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(*fresh)
        out["bare_forward"].append(time.perf_counter() - t0)
    return out


def rows_tensor(bundle, item_ids: list[str]):
    """A (1, len) tensor of the items' rows (the forward's batch of one)."""
    import torch

    return torch.from_numpy(np.asarray([bundle.index_of(item_ids)], dtype=np.int64))


def redis_cpu_s(store) -> float:
    """Redis's own CPU seconds (INFO cpu, user + system): the server's Redis work, and anything else using it."""
    info = store.client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def place_connections(port: int, n_clients: int, workers: int, timeout_s: float = 180.0) -> list[Client]:
    """One keep-alive connection per client, spread evenly over the server's `workers` (at most
    ceil(n_clients / workers) each), untimed, before the 4-client phase: a connection that lands on a full
    worker is closed and opened again, as a least-connections balancer would place it. uvicorn's workers share
    one listening socket, and whichever wakes first accepts: 4 connections opened together went all to one of
    2 workers in 5 of 6 runs, and /readyz answers as soon as one worker is up while another may still be
    loading its model (the phase then measured 1 worker beside a start-up). So this also waits, up to
    `timeout_s`, for every worker to answer; past it a connection stays where it landed (the split is reported
    either way).

    The connections come back grouped by worker (stable): `clients_phase` hands the users out in arm order
    (control, treatment, ...), so each worker serves as many users of each arm as the split allows, as a worker
    does under real traffic (users hash to the arms 50/50). In accept order, 2 of the 6 ways the 4 connections can
    land 2 + 2 give both Thompson users (the dearer arm) to one worker and both epsilon-greedy users to the other,
    whose queue then sets the 4-client p99 (2 workers, 8 runs each: p99/p50 1.67-3.98 in accept order, 1.82-2.36
    grouped; docs/benchmarks.md, fifth pass)."""
    cap = -(-n_clients // max(workers, 1))
    held: dict[bytes, int] = {}
    conns: list[tuple[bytes, Client]] = []
    deadline = time.monotonic() + timeout_s
    for _ in range(n_clients):
        while True:
            conn = Client(port, timeout=30)
            status, pid = conn.post("/bench/worker", b"", {})
            if status != 200:
                raise RuntimeError(f"/bench/worker answered {status}")
            if held.get(pid, 0) < cap or time.monotonic() > deadline:
                held[pid] = held.get(pid, 0) + 1
                conns.append((pid, conn))
                break
            conn.close()
            time.sleep(0.01)  # another worker may still be starting
    return [conn for _, conn in sorted(conns, key=lambda pc: pc[0])]


def clients_phase(
    store,
    bundle,
    port: int,
    body,
    headers,
    n: int,
    n_clients: int,
    server_pid: int | None = None,
    workers: int = 1,
    processes: bool = False,
) -> dict:
    """The browse protocol from `n_clients` clients at once (each its own keep-alive connection and sessions),
    with the CPU per recommendation of each party on the shared cores: the server (process tree, when
    `server_pid` is given), Redis, and the clients (view writes, requests).

    The clients are threads of this process, or with `processes` one forked process each: threads share this
    process's GIL, so a response that arrives while another client thread runs Python (its view write, its
    next body) is timed only once that thread lets go; processes time their own responses, as separate
    users do. The requests on the wire are the same.

    Which uvicorn worker serves a client is fixed when its connection is accepted: the connections are
    placed evenly over the `workers` first (`place_connections`), and `requests_per_worker` reports the
    split (workers told apart by the per-process prefix of the request ids). A connection per session (a
    visit) spread them too, but at 1 worker the first request of each session then took ~13 ms longer (p50
    23.7 against 10.3 ms; the cause not pinned down), all requests' p50 7.6 -> 10.5 ms and p99 19 -> 33 ms
    (docs/benchmarks.md): one connection per client it stays."""
    import multiprocessing
    import threading

    users = arm_users(f"bench-c{port}-", (n_clients + 1) // 2)
    conns = place_connections(port, n_clients, workers)
    args = [(store, bundle.item_ids[1:], conns[k], users[k], 100 + k, n // n_clients, body, headers)
            for k in range(n_clients)]  # fmt: skip
    cpu0 = (tree_cpu_s(server_pid) if server_pid else 0.0, redis_cpu_s(store), time.process_time())
    start = time.perf_counter()
    if processes:
        ctx = multiprocessing.get_context("fork")  # the children inherit the placed connections
        done = ctx.Queue()
        procs = [ctx.Process(target=_client_process, args=(done, *a)) for a in args]
        for proc in procs:
            proc.start()
        results = [done.get() for _ in procs]
        for proc in procs:
            proc.join()
    else:
        results = [None] * n_clients

        def run(k: int) -> None:
            results[k] = _client(*args[k])

        threads = [threading.Thread(target=run, args=(k,)) for k in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wall = time.perf_counter() - start
    cpu1 = (tree_cpu_s(server_pid) if server_pid else 0.0, redis_cpu_s(store), time.process_time())
    lat = [x for r in results for x in r["latencies"]]
    served_by: dict[bytes, int] = {}
    for r in results:
        for w, c in r["workers"].items():
            served_by[w] = served_by.get(w, 0) + c
    client_cpu = sum(r["cpu_s"] for r in results) if processes else cpu1[2] - cpu0[2]
    per = {
        name: round(used / max(len(lat), 1) * 1000, 3)
        for name, used in (("server", cpu1[0] - cpu0[0]), ("redis", cpu1[1] - cpu0[1]), ("client", client_cpu))
    }
    if not server_pid:
        del per["server"]
    return {
        **percentiles(lat),
        "rec_per_s": round(len(lat) / wall, 1),
        "errors": sum(r["errors"] for r in results),
        "clients": n_clients,
        "client_processes": processes,
        "cpu_ms_per_recommendation": per,
        "requests_per_worker": sorted(served_by.values(), reverse=True),
        # Each client's p50: alike when the server serves requests in the order it reads them.
        "p50_ms_per_client": [round(float(np.percentile(r["latencies"], 50)) * 1000, 3) for r in results],
        "note": "each request preceded by its view event (written by the client, inside the wall time)",
    }


def _client(store, items, conn, user, seed, n, body, headers) -> dict:
    """One client of `clients_phase`: `n` browse requests on its connection, each after one more view."""
    rng = np.random.default_rng(seed)
    latencies, workers, errors = [], {}, 0
    cpu = time.process_time()
    for i in range(n):
        sid = f"{user}-s{i // 20}"
        _view(store, sid, user, pick(rng, items), i)
        payload = json.dumps({**body, "user_id": user, "session_id": sid}).encode()
        t0 = time.perf_counter()
        status, raw = post(conn, "/v1/recommendations", payload, headers)
        latencies.append(time.perf_counter() - t0)
        errors += status != 200
        at = raw.find(b'"request_id":"') + 14
        workers[raw[at : at + 16]] = workers.get(raw[at : at + 16], 0) + 1
    conn.close()
    return {"latencies": latencies, "workers": workers, "errors": errors, "cpu_s": time.process_time() - cpu}


def _client_process(done, *args) -> None:
    """`_client` in a forked process (redis-py opens its own connections after a fork), its result queued."""
    done.put(_client(*args))


def request_candidates_for(store, served, user: str, session_id: str) -> list[str]:
    """The exact candidates the request of `user` in `session_id` ranks, from the pipeline's own code."""
    from reco.ranking.recommend import RecoRequest, session_for_model

    rec = _candidate_recommender(store, served)
    features = store.request_context(user, session_id, [], "control", served.categories, trending_k=100)
    trending = [str(iid) for iid, _ in features.trending_top]
    cands = rec._candidates(RecoRequest(user, session_id=session_id, limit=20), served,
                            session_for_model(features, served.index), trending)  # fmt: skip
    return [served.index.ids[r] for r in cands.rows]


_RECOMMENDERS: dict[int, object] = {}


def _candidate_recommender(store, served):
    """One `Recommender` per model for the client's candidate lookups (each builds an executor)."""
    from reco.experiments.assignment import Assignment, ExplorationConfig
    from reco.ranking.recommend import Recommender

    if id(served) not in _RECOMMENDERS:
        _RECOMMENDERS[id(served)] = Recommender(
            store=store, assign=lambda u: Assignment("e", "control", "arm-control", ExplorationConfig(), 0.0),
            models=lambda a: served,
        )  # fmt: skip
    return _RECOMMENDERS[id(served)]


def start_server(env: dict[str, str], workers: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "serving_latency:bench_app", "--factory", "--port", str(port),
           "--no-access-log", "--log-level", "warning", "--workers", str(workers)]  # fmt: skip
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM (graceful: uvicorn stops its workers), SIGKILL after a minute (a loaded machine is slow)."""
    server.terminate()
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(20)


def wait_ready(server: subprocess.Popen, port: int, timeout_s: float = 300.0) -> None:
    """Until /readyz answers 200 (a loaded machine takes a minute or more to import and load the model)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if http.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"the server on port {port} did not get ready (exit code {server.poll()})")


def targets(result: dict) -> dict:
    """The issue's three bars, read from `result`: p50 <= 1.0x the bare forward (browse and new sessions),
    p99 <= 2x p50 with 4 clients, >= 300 recommendations/s (per worker count of the 4-client phase)."""
    out: dict = {
        "p50_over_bare_browse": float(result["p50_ratio_browse"]),
        "p50_over_bare_new_sessions": float(result["p50_ratio_new_sessions"]),
        "bar_p50_le_1x_bare": bool(max(result["p50_ratio_browse"], result["p50_ratio_new_sessions"]) <= 1.0),
    }
    for key, c in result["clients4"].items():
        tail = round(float(c["p99_ms"]) / float(c["p50_ms"]), 2)
        out[f"clients4_{key}"] = {
            "p99_over_p50": tail, "rec_per_s": c["rec_per_s"],
            "bar_p99_le_2x_p50": tail <= 2.0, "bar_ge_300_rec_per_s": bool(c["rec_per_s"] >= 300),
        }  # fmt: skip
    return out


def print_targets(t: dict) -> None:
    """The bars in words, on stderr (stdout keeps the one JSON line)."""
    ok = {True: "met", False: "NOT met"}
    lines = [f"p50 / bare forward: browse {t['p50_over_bare_browse']:.2f}x, new sessions "
             f"{t['p50_over_bare_new_sessions']:.2f}x (bar <= 1.0x: {ok[t['bar_p50_le_1x_bare']]})"]  # fmt: skip
    for key, c in t.items():
        if key.startswith("clients4_"):
            lines.append(f"4 clients, {key.removeprefix('clients4_').replace('_', ' ')}: p99/p50 "
                         f"{c['p99_over_p50']:.2f} (bar <= 2: {ok[c['bar_p99_le_2x_p50']]}), {c['rec_per_s']:.0f} "
                         f"rec/s (bar >= 300: {ok[c['bar_ge_300_rec_per_s']]})")  # fmt: skip
    print("\n".join(lines), file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--redis-url", default=os.environ.get("RECO_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server")
    ap.add_argument(
        "--clients-workers",
        default="1,2",
        help="uvicorn workers of the servers the 4-client phase runs against (one server each)",
    )
    ap.add_argument(
        "--client-modes",
        default="threads,processes",
        help="the 4 clients as threads of this process and/or as processes of their own (clients_phase)",
    )
    args = ap.parse_args()
    if args.requests < 100:  # the short phases (requests / 4, split over both arms) need samples of each arm
        ap.error("--requests must be at least 100")
    clients_workers = [int(w) for w in args.clients_workers.split(",") if w]
    modes = [m for m in args.client_modes.split(",") if m]
    if not set(modes) <= {"threads", "processes"}:
        ap.error("--client-modes takes threads and/or processes")

    def four_clients(port: int, pid: int, workers: int) -> dict:
        """The 4-client phase against one server, once per client mode (key `workers_<n>[_processes]`)."""
        return {
            f"workers_{workers}{'_processes' if mode == 'processes' else ''}": clients_phase(
                store, bundle, port, body, headers, args.requests, 4, pid, workers, processes=mode == "processes"
            )
            for mode in modes
        }

    import torch

    from reco.ranking.recommend import ServedModel
    from reco.state.store import RedisStore, connect
    from serving.models import ModelCache

    torch.set_num_threads(args.torch_threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")  # as the server does (serving.app._tune_runtime)
    tmp = Path(tempfile.mkdtemp(prefix="reco-bench-"))
    bundle = full_bundle()
    for arm in ("control", "treatment"):
        ModelCache(tmp / "cache").save(arm, "1", bundle)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    store = RedisStore(connect(args.redis_url), prefix)
    session = seed_session(store, bundle.item_ids[1:])

    # The exact 500 candidates a request ranks, from the same pipeline code.
    served = ServedModel.build(bundle, "1")
    cand_ids = request_candidates(store, served)
    model, scorer = bundle.model, bundle.frozen_scorer()
    page, device = model.context_index("home", "mobile")
    tensors = (rows_tensor(bundle, session), rows_tensor(bundle, cand_ids), torch.tensor([page]),
               torch.tensor([device]))  # fmt: skip
    rows = (bundle.index_of(session), bundle.index_of(cand_ids))

    def bare_forward() -> None:
        with torch.inference_mode():
            model(*tensors)

    score_paths = {
        "bundle_score": lambda: bundle.score(session, cand_ids, "home", "mobile"),
        "frozen_scorer": lambda: scorer.score(*rows, "home", "mobile"),
    }

    env = {**os.environ, "RECO_HOME": str(tmp / "home"), "RECO_REDIS_URL": args.redis_url, "RECO_REDIS_PREFIX": prefix,
           "RECO_MLFLOW_TRACKING_URI": "http://127.0.0.1:1", "RECO_MODEL_CACHE_DIR": str(tmp / "cache"),
           "RECO_TORCH_THREADS": str(args.torch_threads), "RECO_MODEL_POLL_S": "3600"}  # fmt: skip
    # As `reco serve` sets them (reco/cli/serve.py), before the server process starts.
    env.update({"MALLOC_MMAP_THRESHOLD_": "16777216", "MALLOC_TRIM_THRESHOLD_": "67108864",
                "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "benchmarks")})  # fmt: skip
    server, port = start_server(env, args.workers)
    try:
        wait_ready(server, port)
        body = {"user_id": "bench", "session_id": "bench-s", "limit": 20, "device": "mobile"}
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        # The timed client is `Client` (one keep-alive connection): httpx spends about 1 ms of its own CPU
        # per call and the stdlib's http.client ~0.12 ms, inside every timed latency.
        conn = Client(port, timeout=10)
        answers: list[bytes] = []

        def recommend() -> None:
            status, raw = post(conn, "/v1/recommendations", payload, headers)
            if status != 200:
                raise RuntimeError(f"/v1/recommendations answered {status}: {raw[:300]!r}")
            answers.append(raw)

        calls = {
            "http": recommend,
            "bare_forward": bare_forward,
            **score_paths,
            "empty_sync": lambda: post(conn, "/bench/empty-sync", payload, headers),
            "empty_async": lambda: post(conn, "/bench/empty-async", payload, headers),
        }
        timings: dict[str, list[float]] = {name: [] for name in calls}
        back_to_back: dict[str, list[float]] = {name: [] for name in ("http", "bare_forward")}
        # Interleaved, one call of each kind in turn: every kind meets the same machine state (the
        # others' work in between, load from other processes); the bar is read from this phase.
        for i in range(args.requests + WARMUP):
            for name, fn in calls.items():
                if name in ALTERNATE and name not in ALTERNATE[i % 2]:
                    continue  # the scoring paths (reference figures) and the empty endpoints alternate
                t0 = time.perf_counter()
                fn()
                if i >= WARMUP:
                    timings[name].append(time.perf_counter() - t0)
        # Back to back, blocks of BLOCK calls of one kind: a server under a steady stream of requests
        # (the impression log of one request overlaps the next) against a forward in a tight loop.
        for _ in range(args.requests // BLOCK):
            for name in back_to_back:
                for _ in range(BLOCK):
                    t0 = time.perf_counter()
                    calls[name]()
                    back_to_back[name].append(time.perf_counter() - t0)
        # Settled: each recommendation, then (untimed) wait until its impression write is in Redis, then
        # the bare forward. In the interleaved phase the server's log thread and Redis's Lua run while the
        # client's forward does (3 busy parties on 2 cores), which slows the forward; here nothing overlaps.
        settled: dict[str, list[float]] = {name: [] for name in ("http", "bare_forward")}
        for _ in range(args.requests // 2):
            t0 = time.perf_counter()
            recommend()
            settled["http"].append(time.perf_counter() - t0)
            logged = store.key("req", json.loads(answers[-1])["request_id"])
            while not store.client.exists(logged):
                pass
            t0 = time.perf_counter()
            bare_forward()
            settled["bare_forward"].append(time.perf_counter() - t0)
        # New sessions: each recommendation is for another 20-item session (written untimed just before),
        # as when every request follows an event, so the server remembers nothing of it (no encoding, no
        # session-similar search); the bare forward then runs on that session and its 500 candidates.
        new_sessions: dict[str, list[float]] = {name: [] for name in ("http", "server_pipeline", "bare_forward")}
        new_users = arm_users("bench-n", 1)
        new_sessions.update({f"http_{arm_of(u)}": [] for u in new_users})
        for i in range(args.requests // 4):
            sid, user = f"bench-n{i}", new_users[i % len(new_users)]
            fresh = seed_session(store, bundle.item_ids[1:], seed=1 + i, session_id=sid, others=0, user=user)
            fresh_cands = request_candidates(store, served, sid, user)
            fresh_tensors = (rows_tensor(bundle, fresh), rows_tensor(bundle, fresh_cands), *tensors[2:])
            fresh_payload = json.dumps({**body, "user_id": user, "session_id": sid}).encode()
            wall, pipeline = timed_recommend(conn, fresh_payload, headers)
            new_sessions["http"].append(wall)
            new_sessions["server_pipeline"].append(pipeline)
            new_sessions[f"http_{arm_of(user)}"].append(wall)
            t0 = time.perf_counter()
            with torch.inference_mode():
                model(*fresh_tensors)
            new_sessions["bare_forward"].append(time.perf_counter() - t0)
        c0 = tree_cpu_s(server.pid)
        browse = browse_phase(store, served, bundle, model, tensors, conn, body, headers, args.requests // 4)
        browse_cpu = (tree_cpu_s(server.pid) - c0) / len(browse["http"])
        parsed = [json.loads(raw) for raw in answers[WARMUP : WARMUP + args.requests]]
        server_lat = [a["latency_ms"] / 1000 for a in parsed]
        n_items = {len(a["items"]) for a in parsed}
        # CPU seconds per call, load-independent: the server process (all its threads, the impression
        # log included) for N recommendations and N empty calls, and this process for N bare forwards.
        n_cpu = 300
        cpu = {}
        for name, path in (("server_per_recommendation", "/v1/recommendations"),
                           ("server_per_empty_call", "/bench/empty-sync")):  # fmt: skip
            c0 = tree_cpu_s(server.pid)
            for _ in range(n_cpu):
                post(conn, path, payload, headers)
            cpu[name] = (tree_cpu_s(server.pid) - c0) / n_cpu
        cpu["server_per_browse_recommendation"] = browse_cpu
        for name, fn in (("bare_forward", bare_forward), *score_paths.items()):
            c0 = time.thread_time()
            for _ in range(n_cpu):
                fn()
            cpu[name] = (time.thread_time() - c0) / n_cpu
        conn.close()
        # Last on this server: the 4-client phase leaves the timed connection idle past uvicorn's keep-alive.
        clients4 = four_clients(port, server.pid, args.workers) if args.workers in clients_workers else {}
    finally:
        stop_server(server)
    try:  # the 4-client phase against servers with the other worker counts
        for workers in clients_workers:
            if workers != args.workers:
                other, other_port = start_server(env, workers)
                try:
                    wait_ready(other, other_port)
                    clients4.update(four_clients(other_port, other.pid, workers))
                finally:
                    stop_server(other)
    finally:
        keys = list(store.client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            store.client.delete(*keys)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    p = {name: percentiles(ts) for name, ts in timings.items()}
    http_p, bare_p, fixed_p = p["http"], p["bare_forward"], p["empty_async"]
    result = {
        "benchmark": "serving_latency", "uptime": uptime,
        "candidates": len(cand_ids), "limit": 20, "session": len(session),
        "requests": len(timings["http"]), "torch_threads": args.torch_threads,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "http": http_p, "server_pipeline": percentiles(server_lat), "bare_forward": bare_p,
        "scoring_paths": {k: p[k] for k in score_paths},
        "back_to_back": {k: percentiles(v) for k, v in back_to_back.items()},
        "settled": {k: percentiles(v) for k, v in settled.items()},
        "p50_ratio_settled": round(np.percentile(settled["http"], 50) / np.percentile(settled["bare_forward"], 50), 3),
        "new_sessions": {k: percentiles(v) for k, v in new_sessions.items()},
        "p50_ratio_new_sessions": round(
            np.percentile(new_sessions["http"], 50) / np.percentile(new_sessions["bare_forward"], 50), 3
        ),
        "browse": {k: percentiles(v) for k, v in browse.items()},
        "p50_ratio_browse": round(np.percentile(browse["http"], 50) / np.percentile(browse["bare_forward"], 50), 3),
        "clients4": dict(sorted(clients4.items())), "workers": args.workers,
        "empty_endpoint_async": fixed_p, "empty_endpoint_sync": p["empty_sync"],
        "p50_ratio": round(http_p["p50_ms"] / bare_p["p50_ms"], 3),
        "p50_ratio_net_of_fixed_http": round((http_p["p50_ms"] - fixed_p["p50_ms"]) / bare_p["p50_ms"], 3),
        "cpu_ms_per_call": {k: round(v * 1000, 3) for k, v in cpu.items()},
        "bar_p50_ratio_le_1.5": http_p["p50_ms"] <= 1.5 * bare_p["p50_ms"], "bar_p99_lt_30ms": http_p["p99_ms"] < 30,
        "items_per_response": sorted(n_items),
    }  # fmt: skip
    result["targets"] = targets(result)
    print(json.dumps(result))
    print_targets(result["targets"])


if __name__ == "__main__":
    main()
