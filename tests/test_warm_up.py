"""A worker's warm-up (serving.warm_up): every arm's pipeline runs once at start-up, with nothing written and
the served policies' random streams untouched. Real app, real Redis."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient
from reliability_helpers import static_source
from serving_helpers import serving_settings

import serving.app
import serving.warm_up
from serving.warm_up import WARM_UP_USER

pytestmark = pytest.mark.integration

BODY = {"user_id": "u3", "session_id": "s3", "limit": 8}
# Every slot below the protected top explored (epsilon 1), every Thompson slot by its draws alone (weight 1): each
# answer is the policies' random streams, so a warm-up that drew from them would change it.
ALL_EXPLORATION = """
version: 1
experiments:
  - name: warm
    salt: warm-1
    control: control
    arms:
      - {name: control, traffic: 0.5, alias: arm-control, exploration: {strategy: epsilon_greedy, rate: 1.0}}
      - {name: treatment, traffic: 0.5, alias: arm-treatment, exploration: {strategy: thompson, rate: 1.0}}
"""


@pytest.fixture
def outcomes(monkeypatch) -> list[dict[str, list[str]]]:
    """What each app's warm-up returned (the arms it ran, each one's degraded parts)."""
    seen: list[dict[str, list[str]]] = []
    real = serving.app.warm_up

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(serving.app, "warm_up", spy)
    return seen


def _keys(redis_url: str, prefix: str) -> set[str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return {k.removeprefix(prefix) for k in client.scan_iter(match=f"{prefix}:*", count=1000)}
    finally:
        client.close()


def _first_answers(tmp_path, redis_url: str, prefix: str) -> tuple[set[str], list[dict]]:
    """(the keys the app's start-up wrote, its answers to its first requests, users of both arms) of a new app on
    an empty key space."""
    experiments = tmp_path / "experiments.yaml"
    experiments.parent.mkdir(parents=True, exist_ok=True)
    experiments.write_text(ALL_EXPLORATION)
    settings = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=prefix, experiments_path=experiments)
    with TestClient(serving.app.create_app(settings, model_source=static_source())) as client:
        started = _keys(redis_url, prefix)
        answers = [client.post("/v1/recommendations", json={**BODY, "user_id": f"u{k}"}) for k in range(6)]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    return started, [a.json() for a in answers]


def test_the_warm_up_runs_every_arm_and_changes_nothing(tmp_path, redis_url, redis_prefix, outcomes, monkeypatch):
    warmed_keys, warmed = _first_answers(tmp_path / "warm", redis_url, f"{redis_prefix}:warm")
    assert outcomes == [{"control": [], "treatment": []}]  # both arms' whole pipeline ran
    monkeypatch.setattr(serving.app, "warm_up", lambda *args, **kwargs: {})
    cold_keys, cold = _first_answers(tmp_path / "cold", redis_url, f"{redis_prefix}:cold")
    # Nothing written: the same keys as a start-up without it (no impression, no request log, no user record).
    assert warmed_keys == cold_keys
    assert not any(WARM_UP_USER in key for key in warmed_keys)
    # The served policies' streams and the new-item counts untouched: the first answers are the same, to the bit.
    same = ("item_id", "score", "reason", "source", "position", "is_exploration", "propensity")
    assert {a["experiment_group"] for a in warmed} == {"control", "treatment"}
    for w, c in zip(warmed, cold, strict=True):
        assert [[it[k] for k in same] for it in w["items"]] == [[it[k] for k in same] for it in c["items"]]
        assert w["experiment_group"] == c["experiment_group"] and w["degraded"] == c["degraded"] == []
        assert sum(it["is_exploration"] for it in w["items"]) > 0


def test_a_worker_without_a_model_starts_and_says_so(tmp_path, redis_url, redis_prefix, outcomes):
    from reliability_helpers import StaticSource

    settings = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix)
    with TestClient(serving.app.create_app(settings, model_source=StaticSource({}, {}))) as client:
        assert client.post("/v1/recommendations", json=BODY).status_code == 503
    assert outcomes == [{"control": ["no model"], "treatment": ["no model"]}]


def test_a_warm_up_that_fails_does_not_stop_the_worker(tmp_path, redis_url, redis_prefix, outcomes, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the store broke")

    monkeypatch.setattr(serving.warm_up, "_one", broken)
    settings = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix)
    with TestClient(serving.app.create_app(settings, model_source=static_source())) as client:
        assert client.post("/v1/recommendations", json=BODY).status_code == 200
    assert outcomes == [{"control": ["warm-up"], "treatment": ["warm-up"]}]
