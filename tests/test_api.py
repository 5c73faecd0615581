"""The HTTP API against a real Redis and a real MLflow registry (`mlflow_server` fixture)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from serving_helpers import register_version, serving_settings, tiny_bundle

from serving.app import create_app

pytestmark = pytest.mark.integration

ARMS = ("arm-control", "arm-treatment")
KEY = {"X-API-Key": "test-key"}
DEAD_REDIS = "redis://127.0.0.1:1/0"
DEAD_MLFLOW = "http://127.0.0.1:1"


@pytest.fixture(scope="module")
def registry(mlflow_server: str) -> dict[str, str]:
    """One registered model with two versions; both arms' aliases at v1."""
    name = f"reco-api-{uuid.uuid4().hex[:8]}"
    v1 = register_version(mlflow_server, name, tiny_bundle(seed=0), "v1", ARMS)
    v2 = register_version(mlflow_server, name, tiny_bundle(seed=1), "v2")
    return {"uri": mlflow_server, "name": name, "v1": v1, "v2": v2}


@pytest.fixture
def settings(tmp_path, registry, redis_url: str, redis_prefix: str):
    return serving_settings(
        tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, mlflow_tracking_uri=registry["uri"],
        registered_model=registry["name"],
    )  # fmt: skip


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def event(i: int, item: str = "3", session: str = "s1", **kw) -> dict:
    return {"event_id": f"e{i}", "ts": "2026-01-01T00:00:00Z", "user_id": "u1", "session_id": session,
            "item_id": item, "event_type": "view", **kw}  # fmt: skip


def test_events_then_personalised_recommendations(client: TestClient, registry) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["arms"] == {"control": registry["v1"], "treatment": registry["v1"]}

    batch = {"events": [event(1, "3"), event(2, "7"), event(3, "11")]}
    first = client.post("/v1/events", json=batch, headers=KEY)
    assert first.status_code == 202 and first.json() == {"accepted": 3, "duplicates": 0}
    again = client.post("/v1/events", json=batch, headers=KEY)
    assert again.json() == {"accepted": 0, "duplicates": 3}

    r = client.post("/v1/recommendations", json={"user_id": "u1", "session_id": "s1", "limit": 10, "device": "mobile"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == registry["v1"] and body["alias"] in ARMS
    assert body["experiment_group"] in {"control", "treatment"} and body["online_snapshot"] is None
    assert len(body["items"]) == 10 and [it["position"] for it in body["items"]] == list(range(1, 11))
    assert not {"3", "7", "11"} & {it["item_id"] for it in body["items"]}
    assert "features" not in body["degraded"]
    assert any(it["source"] in {"session_similar", "trending"} for it in body["items"])
    assert all(0 < it["propensity"] <= 1 and it["reason"] for it in body["items"])

    metrics = client.get("/metrics").text
    assert "reco_recommendation_latency_seconds_bucket" in metrics and "reco_model_version" in metrics
    assert 'reco_events_total{result="accepted"} 3.0' in metrics
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/v1/recommendations", "/v1/events"}


def test_cold_start_user_gets_reasons_not_errors(client: TestClient) -> None:
    r = client.post("/v1/recommendations", json={"user_id": "never-seen", "session_id": "new", "page_type": "cart"})
    assert r.status_code == 200
    items = r.json()["items"]
    assert len(items) == 20 and all(it["reason"] for it in items)


def test_bad_input_is_a_4xx_with_a_message_never_a_500(client: TestClient, settings) -> None:
    reco = "/v1/recommendations"
    cases = {
        "malformed json": (reco, {"content": b'{"user_id": ', "headers": {"Content-Type": "application/json"}}, 422),
        "wrong type": (reco, {"json": {"user_id": "u", "limit": "many"}}, 422),
        "limit too big": (reco, {"json": {"user_id": "u", "limit": 101}}, 422),
        "limit zero": (reco, {"json": {"user_id": "u", "limit": 0}}, 422),
        "unknown page type": (reco, {"json": {"user_id": "u", "page_type": "checkout"}}, 422),
        "missing user": (reco, {"json": {"limit": 5}}, 422),
        "unknown field": (reco, {"json": {"user_id": "u", "colour": "red"}}, 422),
        "body too large": (reco, {"content": b"x" * (settings.max_body_bytes + 1),
                                  "headers": {"Content-Type": "application/json"}}, 413),
        "empty batch": ("/v1/events", {"json": {"events": []}, "headers": KEY}, 422),
        "bad event type": ("/v1/events", {"json": {"events": [event(1, event_type="like")]}, "headers": KEY}, 422),
        "unknown item": ("/v1/events", {"json": {"events": [event(1, item="no-such-item")]}, "headers": KEY}, 422),
        "oversized batch": ("/v1/events", {"json": {"events": [event(i) for i in range(1001)]}, "headers": KEY}, 413),
        "missing key": ("/v1/events", {"json": {"events": [event(1)]}}, 401),
        "wrong key": ("/v1/events", {"json": {"events": [event(1)]}, "headers": {"X-API-Key": "nope"}}, 403),
    }  # fmt: skip
    for name, (path, kwargs, status) in cases.items():
        r = client.post(path, **kwargs)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text[:300]}"
        assert r.json().get("detail"), name
    unknown = client.post("/v1/events", json={"events": [event(1, item="no-such-item")]}, headers=KEY)
    assert "events[0].item_id='no-such-item'" in unknown.json()["detail"]


def test_promoting_a_version_swaps_models_without_failing_requests(client: TestClient, registry) -> None:
    from reco.artifacts.registry import client_for, promote

    failures: list[str] = []
    versions: list[str] = []
    last_by_arm: dict[str, str] = {}  # each arm swaps on its own poll: the test waits for all of them
    stop = threading.Event()

    def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            r = client.post("/v1/recommendations", json={"user_id": f"w{worker}-{n}", "limit": 5})
            if r.status_code != 200:
                failures.append(r.text)
            else:
                body = r.json()
                versions.append(body["model_version"])
                last_by_arm[body["experiment_group"]] = body["model_version"]

    threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    mlflow = client_for(registry["uri"])
    try:
        for alias in ARMS:
            promote(mlflow, registry["name"], alias, registry["v2"], who="tests", reason="hot swap")
        deadline = time.monotonic() + 180  # the manager polls every 0.2 s; generous for a loaded machine
        while time.monotonic() < deadline:
            swapped = len(last_by_arm) == len(ARMS) and set(last_by_arm.values()) == {registry["v2"]}
            if swapped and versions.count(registry["v2"]) >= 5:
                break
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join()
        for alias in ARMS:
            promote(mlflow, registry["name"], alias, registry["v1"], who="tests", reason="reset")
    assert failures == []
    assert registry["v1"] in versions and set(last_by_arm.values()) == {registry["v2"]}
    assert set(versions) == {registry["v1"], registry["v2"]}


def test_redis_down_serves_degraded_and_refuses_events_with_retry_after(tmp_path, registry) -> None:
    settings = serving_settings(tmp_path, redis_url=DEAD_REDIS, mlflow_tracking_uri=registry["uri"],
                                registered_model=registry["name"])  # fmt: skip
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = c.post("/v1/recommendations", json={"user_id": "u", "session_id": "s", "limit": 5})
        assert r.status_code == 200 and len(r.json()["items"]) == 5
        assert {"features", "candidates:trending"} <= set(r.json()["degraded"])
        ev = c.post("/v1/events", json={"events": [event(1)]}, headers=KEY)
        assert ev.status_code == 503 and ev.headers["Retry-After"] == "1"
        assert c.get("/readyz").json()["redis"] is False


def test_mlflow_down_at_start_serves_the_cached_model(tmp_path, registry, redis_url, redis_prefix) -> None:
    common = {"redis_url": redis_url, "redis_prefix": redis_prefix, "registered_model": registry["name"]}
    with TestClient(create_app(serving_settings(tmp_path, mlflow_tracking_uri=registry["uri"], **common))) as c:
        assert c.get("/readyz").status_code == 200  # loaded from MLflow, cached on disk
    with TestClient(create_app(serving_settings(tmp_path, mlflow_tracking_uri=DEAD_MLFLOW, **common))) as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/v1/recommendations", json={"user_id": "u", "limit": 3})
        assert r.status_code == 200 and r.json()["model_version"] == registry["v1"]


def test_not_ready_without_any_model(tmp_path, redis_url, redis_prefix) -> None:
    settings = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix,
                                mlflow_tracking_uri=DEAD_MLFLOW)  # fmt: skip
    with TestClient(create_app(settings)) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["arms"] == {"control": None, "treatment": None}
        r = c.post("/v1/recommendations", json={"user_id": "u"})
        assert r.status_code == 503 and "Retry-After" in r.headers


def test_admin_pauses_learning_per_arm_and_responses_name_the_online_snapshot(client: TestClient, settings) -> None:
    import io

    import torch

    from reco.state.store import RedisStore, connect

    assert client.get("/v1/admin/learning").status_code == 401
    assert client.post("/v1/admin/learning/control/pause", headers={"X-API-Key": "nope"}).status_code == 403
    unknown = client.post("/v1/admin/learning/nope/pause", headers=KEY)
    assert unknown.status_code == 404 and "control" in unknown.json()["detail"]
    paused = client.post("/v1/admin/learning/control/pause", headers=KEY).json()["arms"]
    assert paused["control"]["paused"] is True and paused["treatment"]["paused"] is False
    from reco.online.control import is_paused

    store = RedisStore(connect(settings.redis_url), settings.redis_prefix)
    assert is_paused(store, "control")  # what the learner reads
    resumed = client.post("/v1/admin/learning/control/resume", headers=KEY).json()["arms"]
    assert not resumed["control"]["paused"] and not is_paused(store, "control")

    # The learner publishes a snapshot for both arms' base version; the server adopts it between requests.
    base = client.get("/readyz").json()["arms"]["control"]
    blob = io.BytesIO()
    torch.save(tiny_bundle(seed=0).model.state_dict(), blob)
    snaps = {arm: store.put_weights(arm, blob.getvalue(), {"base_version": base}) for arm in ("control", "treatment")}
    body, deadline = {}, time.monotonic() + 120
    while time.monotonic() < deadline:  # weights are polled every 0.2 s in the tests; generous under load
        body = client.post("/v1/recommendations", json={"user_id": "u-snap", "limit": 3}).json()
        if body["online_snapshot"] is not None:
            break
        time.sleep(0.1)
    assert body["online_snapshot"] == snaps[body["experiment_group"]] and body["model_version"] == base
    status = client.get("/v1/admin/learning", headers=KEY).json()["arms"]
    assert status[body["experiment_group"]]["online_snapshot"] == body["online_snapshot"]
    store.client.close()


def test_several_workers_report_merged_prometheus_metrics(tmp_path, redis_url, redis_prefix) -> None:
    """`reco serve --workers 2`: whichever worker answers /metrics counts every worker's requests."""
    import http.client
    import os
    import re
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    from serving.models import ModelCache

    for arm in ("control", "treatment"):
        ModelCache(tmp_path / "cache").save(arm, "4", tiny_bundle())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RECO_HOME": str(tmp_path / "home"), "RECO_REDIS_URL": redis_url,
           "RECO_REDIS_PREFIX": redis_prefix, "RECO_MLFLOW_TRACKING_URI": DEAD_MLFLOW,
           "RECO_MODEL_CACHE_DIR": str(tmp_path / "cache"), "RECO_MODEL_POLL_S": "3600"}  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    reco = Path(sys.executable).parent / "reco"
    server = subprocess.Popen([str(reco), "serve", "--port", str(port), "--workers", "2"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def call(method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)  # a new connection: any worker
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    try:
        ready, deadline = 0, time.monotonic() + 300  # both workers import torch and load the cached model
        while time.monotonic() < deadline:
            try:
                ready = ready + 1 if call("GET", "/readyz")[0] == 200 else 0
            except OSError:
                ready = 0
            if ready >= 6:
                break
            time.sleep(0.2)
        for i in range(10):
            assert call("POST", "/v1/recommendations", f'{{"user_id": "mp{i}", "limit": 2}}'.encode())[0] == 200
        for _ in range(5):
            text = call("GET", "/metrics")[1]
            counts = re.findall(r'^reco_recommendation_latency_seconds_count\{arm="\w+"\} (\S+)$', text, re.M)
            assert sum(float(c) for c in counts) == 10
            assert 'reco_model_version{arm="control"} 4.0' in text
    finally:
        server.terminate()
        try:
            server.wait(120)  # two workers shut down gracefully: slow on a loaded machine (30 s was not enough)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert (tmp_path / "home" / "run" / "prometheus").is_dir()
