"""reco vs `mlflow models serve`: the same registered model version, the same 500 candidates, in one run.

Setup: the full-size ranker over the MovieLens-100k catalogue (as benchmarks/serving_latency.py) is
registered in a private MLflow registry (SQLite) with `reco.artifacts.registry.log_bundle` and both arm aliases set.
Two servers load that version from the registry, each in its own process on loopback:

* `mlflow models serve -m models:/<name>/<version> --env-manager local` (its pyfunc, `RankerPyfunc`:
  one row = session item ids + candidate item ids -> candidate scores);
* `reco serve` (1 worker): `POST /v1/recommendations` for a user whose 20-item session is in Redis; the
  pipeline ranks 500 candidates and returns 20.

The mlflow request carries exactly the candidates the reco pipeline ranks (taken from the same code), so
both servers run one forward over the same batch; reco also does retrieval, rules, exploration,
explanations and the impression log. Calls alternate between the servers (one keep-alive connection
each, stdlib client) so that machine load hits both alike. A correctness check compares the scores reco
returns with mlflow's scores for the same items.

    .venv/bin/python benchmarks/vs_mlflow_serve.py [--requests 500] [--redis-url redis://127.0.0.1:6379/0]

Then two phases (half as many pairs each, interleaved) where the session changes before every pair,
written untimed just before: "new sessions" (another 20-item session each pair, a new visitor: nothing
remembered applies to either server) and "extended" (a browse: each pair's session is the previous one plus
one view, a new session every 10 pairs; `FrozenScorer`, on both servers, extends its remembered encoding by
one GRU step).

Prints one JSON line. Bar: reco at least 3x faster per call (p50 ratio mlflow / reco >= 3).
"""

from __future__ import annotations

import argparse
import http.client as http_client
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from serving_latency import free_port, full_bundle, percentiles, post, process_cpu_s, request_candidates, seed_session

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAME = "reco-bench-ranker"
EXTEND = 10  # "extended" phase: a new session, then 9 pairs that each add one view to it


def register(tracking_uri: str, bundle) -> str:
    """Log the bundle as a registry version (the production path) and point both arm aliases at it."""
    from reco.artifacts.registry import Lineage, client_for, ensure_experiment, log_bundle, promote

    client = client_for(tracking_uri)
    run = client.create_run(ensure_experiment(client, "bench"))
    lineage = Lineage(
        data_snapshot_id="bench", data_rows=0, validation_id="bench", validation_bad_rows=0, parent_version=None,
        metrics={}, train_config={"seed": 0},
    )  # fmt: skip
    version = str(log_bundle(client, NAME, bundle, lineage, run_id=run.info.run_id).version)
    client.set_terminated(run.info.run_id)
    for alias in ("arm-control", "arm-treatment"):
        promote(client, NAME, alias, version, who="bench", reason="vs mlflow serve")
    return version


def wait_ready(port: int, path: str, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {path} exited with {proc.returncode}")
        try:
            conn = http_client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server on port {port} not ready after {timeout_s} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--redis-url", default=os.environ.get("RECO_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args()

    from reco.data.events import Event
    from reco.ranking.recommend import ServedModel
    from reco.state.store import RedisStore, connect

    tmp = Path(tempfile.mkdtemp(prefix="reco-vs-mlflow-"))
    tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    bundle = full_bundle()
    version = register(tracking_uri, bundle)

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    store = RedisStore(connect(args.redis_url), prefix)
    session = seed_session(store, bundle.item_ids[1:])
    # The candidates the reco pipeline ranks for this session, from the same code.
    served = ServedModel.build(bundle, version)
    cand_ids = request_candidates(store, served)

    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
           "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}  # fmt: skip
    mlflow_port, reco_port = free_port(), free_port()
    logs = [open(tmp / f"{n}.log", "wb") for n in ("mlflow", "reco")]  # noqa: SIM115 - closed below
    mlflow_proc = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/{version}", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
        env=env, cwd=ROOT, stdout=logs[0], stderr=subprocess.STDOUT,
    )  # fmt: skip
    reco_env = {**env, "RECO_HOME": str(tmp / "home"), "RECO_REDIS_URL": args.redis_url, "RECO_REDIS_PREFIX": prefix,
                "RECO_MLFLOW_TRACKING_URI": tracking_uri, "RECO_REGISTERED_MODEL": NAME,
                "RECO_MODEL_POLL_S": "3600"}  # fmt: skip
    reco_proc = subprocess.Popen([str(BIN / "reco"), "serve", "--port", str(reco_port)], env=reco_env, cwd=ROOT,
                                 stdout=logs[1], stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_ready(mlflow_port, "/ping", mlflow_proc)
        wait_ready(reco_port, "/readyz", reco_proc)
        headers = {"Content-Type": "application/json"}
        row = {"session_item_ids": session, "candidate_item_ids": cand_ids, "page_type": "home", "device": "mobile"}
        mlflow_body = json.dumps({"dataframe_records": [row]}).encode()
        reco_body = json.dumps({"user_id": "bench", "session_id": "bench-s", "limit": 20, "device": "mobile"}).encode()
        m_conn = http_client.HTTPConnection("127.0.0.1", mlflow_port, timeout=30)
        r_conn = http_client.HTTPConnection("127.0.0.1", reco_port, timeout=30)
        lat: dict[str, list[float]] = {"mlflow": [], "reco": []}
        max_diff, versions = 0.0, set()
        warmup = 20
        for i in range(args.requests + warmup):
            (raw_m, raw_r), took = alternate(m_conn, mlflow_body, r_conn, reco_body)
            if i < warmup:
                continue
            lat["mlflow"].append(took[0])
            lat["reco"].append(took[1])
            if i < warmup + 20:  # same model, same batch: reco's scores are mlflow's scores
                m_scores = dict(zip(cand_ids, _mlflow_scores(json.loads(raw_m)), strict=True))
                answer = json.loads(raw_r)
                versions.add(answer["model_version"])
                for it in answer["items"]:
                    max_diff = max(max_diff, abs(m_scores[it["item_id"]] - it["score"]))
        # Then two phases where the session changes before every pair (written untimed, just before), and
        # mlflow's row carries that session and its candidates, from the same code:
        # - "new sessions": another 20-item session each pair (a new visitor), so neither server has
        #   anything of it remembered (no encoding, no session-similar search);
        # - "extended": a browse. Each pair's session is the previous one plus one view; a new 20-item
        #   session every EXTEND pairs. `FrozenScorer` (both servers) extends the remembered encoding by one
        #   step; reco's session-similar search is new each time.
        phases: dict[str, dict[str, list[float]]] = {p: {"mlflow": [], "reco": []} for p in ("new", "extended")}
        for i in range(args.requests // 2):
            for phase in phases:
                sid = f"bench-{phase}-{i // EXTEND if phase == 'extended' else i}"
                if phase == "new" or i % EXTEND == 0:
                    seed = 1 + i if phase == "new" else 100_000 + i  # no phase meets the other's sessions
                    seed_session(store, bundle.item_ids[1:], seed=seed, session_id=sid, others=0)
                else:
                    store.ingest([Event(event_id=f"{sid}-x{i}", ts=datetime.now(UTC), user_id="bench", session_id=sid,
                                        item_id=bundle.item_ids[1 + (7 * i) % (len(bundle.item_ids) - 1)],
                                        event_type="view")])  # fmt: skip
                now = store.session_items(sid)
                moved = {**row, "session_item_ids": now, "candidate_item_ids": request_candidates(store, served, sid)}
                body = json.dumps({"dataframe_records": [moved]}).encode()
                r_body = json.dumps({"user_id": "bench", "session_id": sid, "limit": 20, "device": "mobile"}).encode()
                _, took = alternate(m_conn, body, r_conn, r_body)
                phases[phase]["mlflow"].append(took[0])
                phases[phase]["reco"].append(took[1])
        # Server CPU per call (load-independent): each server's whole process tree, 200 calls each.
        cpu = {}
        servers = (("mlflow_models_serve", m_conn, mlflow_proc, "/invocations", mlflow_body),
                   ("reco", r_conn, reco_proc, "/v1/recommendations", reco_body))  # fmt: skip
        for name, conn, proc, path, body in servers:
            c0 = tree_cpu_s(proc.pid)
            for _ in range(200):
                post(conn, path, body, headers)
            cpu[name] = round((tree_cpu_s(proc.pid) - c0) / 200 * 1000, 3)
        m_conn.close()
        r_conn.close()
    finally:
        for proc in (mlflow_proc, reco_proc):
            proc.terminate()
        for proc in (mlflow_proc, reco_proc):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
        keys = list(store.client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            store.client.delete(*keys)
    m, r = percentiles(lat["mlflow"]), percentiles(lat["reco"])
    print(json.dumps({
        "benchmark": "vs_mlflow_serve", "registered_version": version, "reco_served_versions": sorted(versions),
        "candidates": len(cand_ids), "session": len(session), "requests": len(lat["reco"]),
        "load_avg_1m": round(os.getloadavg()[0], 2), "mlflow_models_serve": m, "reco": r,
        "ratio_p50": round(m["p50_ms"] / r["p50_ms"], 2), "ratio_p99": round(m["p99_ms"] / r["p99_ms"], 2),
        "server_cpu_ms_per_call": cpu, "cpu_ratio": round(cpu["mlflow_models_serve"] / cpu["reco"], 2),
        "max_abs_score_diff": round(max_diff, 6), "bar_ratio_p50_ge_3": m["p50_ms"] >= 3 * r["p50_ms"],
        **{f"{'new_sessions' if p == 'new' else 'extended_sessions'}": _phase(t) for p, t in phases.items()},
    }))  # fmt: skip


def _phase(lat: dict[str, list[float]]) -> dict:
    m, r = percentiles(lat["mlflow"]), percentiles(lat["reco"])
    return {
        "requests": len(lat["reco"]),
        "mlflow_models_serve": m,
        "reco": r,
        "ratio_p50": round(m["p50_ms"] / r["p50_ms"], 2),
    }


def alternate(m_conn, m_body: bytes, r_conn, r_body: bytes) -> tuple[tuple[bytes, bytes], tuple[float, float]]:
    """One call to each server, mlflow first: (answers, seconds each); a non-200 answer is an error."""
    headers = {"Content-Type": "application/json"}
    t0 = time.perf_counter()
    status_m, raw_m = post(m_conn, "/invocations", m_body, headers)
    t1 = time.perf_counter()
    status_r, raw_r = post(r_conn, "/v1/recommendations", r_body, headers)
    t2 = time.perf_counter()
    for name, status, raw in (("mlflow", status_m, raw_m), ("reco", status_r, raw_r)):
        if status != 200:
            raise RuntimeError(f"{name} answered {status}: {raw[:300]!r}")
    return (raw_m, raw_r), (t1 - t0, t2 - t1)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and all its descendants (`mlflow models serve` runs uvicorn in a child)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += process_cpu_s(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # exited meanwhile
            continue
    return total


def _mlflow_scores(answer: dict) -> list[float]:
    """The one row's scores from the scoring server's answer ({"predictions": [{"scores": [...]}]})."""
    pred = answer["predictions"]
    first = pred[0] if isinstance(pred, list) else pred
    scores = first["scores"] if isinstance(first, dict) else first
    return [float(s) for s in scores]


if __name__ == "__main__":
    main()
