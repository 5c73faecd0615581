"""The served model learned online, end to end: `reco serve --workers 2` (real uvicorn worker processes)
serves a registered `SessionAwareRanker`; the learner trains that model from real events in the Redis
stream and publishes a snapshot; every worker process swaps to it (each answers with its own pid)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
import torch
from serving_helpers import register_version, tiny_bundle
from test_online import _close_windows, _one_thread, _traffic  # noqa: F401 (fixture)

from reco.online.arm import ArmLearner
from reco.online.learner import OnlineLearner
from reco.online.model import from_bundle
from reco.state.snapshots import decode_weights
from reco.state.store import RedisStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "test-key"
WORKERS = 2


def _get(url: str) -> dict:
    # A new connection per call: the kernel spreads connections over the workers' shared socket.
    req = urllib.request.Request(url, headers={"X-API-Key": KEY, "Connection": "close"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _served_by_worker(base: str, want: int, timeout_s: float) -> dict[int, int | None]:
    """pid -> the treatment arm's online snapshot, asking until `want` distinct workers answered."""
    seen: dict[int, int | None] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < want and time.monotonic() < deadline:
        status = _get(f"{base}/v1/admin/learning")
        seen[status["worker"]] = status["arms"]["treatment"]["online_snapshot"]
    return seen


def test_every_api_worker_swaps_to_the_snapshot_the_learner_trained(
    tmp_path: Path, mlflow_server: str, redis_url: str, redis_prefix: str
) -> None:
    import socket

    name = f"reco-workers-{uuid.uuid4().hex[:8]}"
    bundle = tiny_bundle(seed=0)
    version = register_version(mlflow_server, name, bundle, "w1", ("arm-control", "arm-treatment"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
    env.update(RECO_HOME=str(tmp_path / "home"), RECO_MLFLOW_TRACKING_URI=mlflow_server, RECO_REGISTERED_MODEL=name,
               RECO_REDIS_URL=redis_url, RECO_REDIS_PREFIX=redis_prefix, RECO_API_KEYS=KEY,
               RECO_MODEL_POLL_S="1")  # fmt: skip
    argv = [str(Path(sys.executable).parent / "reco"), "serve", "--workers", str(WORKERS), "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    store = RedisStore(redis.Redis.from_url(redis_url), redis_prefix)
    before: dict[int, int | None] = {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if len(before := _served_by_worker(base, WORKERS, 30)) == WORKERS:
                    break
            except OSError:  # not listening yet, or a worker still loading its models
                time.sleep(0.5)
        assert len(before) == WORKERS and set(before.values()) == {None}, before

        # Real events through Redis (the API's ingest path) train the served architecture.
        store.ingest(_traffic(400, seed=21))
        _close_windows(store, 10_000)
        arm = ArmLearner(from_bundle(tiny_bundle(seed=0), version), lr=0.05, update_every=64, batch_size=64,
                         replay=32, min_holdout=20, max_session=50, seed=0)  # fmt: skip
        learner = OnlineLearner(store, {"treatment": arm}, window_s=60, read_count=500, publish_every_s=0)
        while learner.poll(block_ms=None):
            pass
        learner.maybe_publish(force=True)
        snap = store.get_weights("treatment")
        assert snap.meta["base_version"] == version and snap.meta["snapshot"] > 0
        assert snap.meta["holdout_logloss"] < snap.meta["base_logloss"]
        trained = decode_weights(snap.blob)
        assert any(not torch.equal(v, trained[k]) for k, v in bundle.model.state_dict().items())

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            after = _served_by_worker(base, WORKERS, 30)
            if len(after) == WORKERS and set(after.values()) == {snap.version}:
                break
            time.sleep(0.5)
        assert len(after) == WORKERS and set(after.values()) == {snap.version}, after
        assert set(after) == set(before)  # the same worker processes, each swapped on its own
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
        store.client.close()
