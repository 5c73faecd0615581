"""Two API workers (two `create_app` instances on the same Redis and registry) serve the same online
snapshot after the learner publishes it (each polls weights every second; how fast is a benchmark's
question: here they are polled until they agree, with a deadline generous for a loaded machine)."""

from __future__ import annotations

import time
import uuid

import pytest
from fastapi.testclient import TestClient
from serving_helpers import register_version, serving_settings, tiny_bundle

from reco.online.arm import ArmLearner
from reco.online.learner import OnlineLearner
from reco.online.model import from_bundle
from reco.state.store import RedisStore, connect
from serving.app import create_app

pytestmark = pytest.mark.integration

KEY = {"X-API-Key": "test-key"}
POLL_S = 1.0  # the app polls weights every min(model_poll_s, 2 s)
DEADLINE_S = 120.0  # one refresh (registry alias lookup + weights swap + smoke batch) takes ~1 s when idle


def _both_serve(a: TestClient, b: TestClient, version: int) -> dict[str, dict[str, int | None]]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        served = {"a": _served(a), "b": _served(b)}
        if served["a"]["treatment"] == served["b"]["treatment"] == version or time.monotonic() > deadline:
            return served
        time.sleep(0.2)


def _served(client: TestClient) -> dict[str, int | None]:
    arms = client.get("/v1/admin/learning", headers=KEY).json()["arms"]
    return {arm: s["online_snapshot"] for arm, s in arms.items()}


def test_two_workers_serve_the_same_snapshot_the_learner_published(tmp_path, mlflow_server, redis_url, redis_prefix):
    name = f"reco-workers-{uuid.uuid4().hex[:8]}"
    version = register_version(mlflow_server, name, tiny_bundle(seed=0), "w1", ("arm-control", "arm-treatment"))
    settings = [
        serving_settings(tmp_path / f"w{i}", redis_url=redis_url, redis_prefix=redis_prefix,
                         mlflow_tracking_uri=mlflow_server, registered_model=name, model_poll_s=POLL_S)
        for i in range(2)
    ]  # fmt: skip
    with TestClient(create_app(settings[0])) as a, TestClient(create_app(settings[1])) as b:
        assert _served(a)["treatment"] is None and _served(b)["treatment"] is None
        # The learner's own publication path, on the arm's registry version.
        store = RedisStore(connect(redis_url), redis_prefix)
        bundle = tiny_bundle(seed=0)
        learner = OnlineLearner(store, {"treatment": ArmLearner(from_bundle(bundle, version), max_session=50)})
        for published in range(2):  # the first snapshot, then a newer one replacing it
            learner._publish("treatment")
            v = learner.published_version("treatment")
            served = _both_serve(a, b, v)
            assert served["a"]["treatment"] == served["b"]["treatment"] == v, (published, served)
        rec = a.post("/v1/recommendations", json={"user_id": "u-w", "limit": 3}).json()
        if rec["experiment_group"] == "treatment":
            assert rec["online_snapshot"] == v and rec["model_version"] == version
        store.client.close()
