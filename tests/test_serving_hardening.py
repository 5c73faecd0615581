"""The serving fixes of docs/reliability.md: F-1 (a non-UTF-8 body is a documented 422), F-2 (the
unknown-item 422 matches its documented schema), the smoke-test refusal (R-1/R-2: counted and logged once),
and the demo's `X-Reco-Event-Time` header (honoured only when configured). Real app, real Redis."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from reliability_helpers import ARM_ALIASES, StaticSource, event, nan_bundle, static_source
from serving_helpers import serving_settings, tiny_bundle

from serving.app import create_app
from serving.models import ModelCache, ModelManager

pytestmark = pytest.mark.integration

KEY = {"X-API-Key": "test-key"}
EVENT_TIME = "X-Reco-Event-Time"


def _app(tmp_path, redis_url: str, redis_prefix: str, **overrides):
    settings = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, **overrides)
    return TestClient(create_app(settings, model_source=static_source()))


def test_a_body_that_is_not_utf8_is_a_422_saying_so(tmp_path, redis_url, redis_prefix) -> None:
    with _app(tmp_path, redis_url, redis_prefix) as c:
        for path, headers in (("/v1/recommendations", {}), ("/v1/events", KEY)):
            r = c.post(
                path, content=b'{"user_id": "\xff\xfe\xfa"}', headers={**headers, "Content-Type": "application/json"}
            )
            assert r.status_code == 422, (path, r.text)
            body = r.json()
            assert body["detail"] == [{"loc": ["body"], "msg": "body is not valid UTF-8 JSON", "type": "json_invalid"}]
            assert body["message"] == "invalid request: body: body is not valid UTF-8 JSON"


def test_the_unknown_item_422_is_the_documented_error_body(tmp_path, redis_url, redis_prefix) -> None:
    with _app(tmp_path, redis_url, redis_prefix) as c:
        doc = c.get("/openapi.json").json()
        r = c.post("/v1/events", json={"events": [event(1, item="no-such-item")]}, headers=KEY)
    declared = doc["paths"]["/v1/events"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert declared == {"$ref": "#/components/schemas/ErrorBody"}
    assert r.status_code == 422 and "events[0].item_id='no-such-item'" in r.json()["detail"]
    from serving.schemas import ErrorBody

    ErrorBody.model_validate(r.json())  # the string detail is what the document says


def test_a_refused_version_is_counted_and_logged_once(tmp_path, caplog) -> None:
    refused: list[tuple[str, str]] = []
    source = StaticSource({"1": tiny_bundle(version="1"), "2": nan_bundle("2")}, dict.fromkeys(ARM_ALIASES, "1"))
    arms = {"control": "arm-control"}
    manager = ModelManager(arms, source, ModelCache(tmp_path / "cache"),
                           on_refused=lambda arm, kind: refused.append((arm, kind)))  # fmt: skip
    manager.refresh()
    source.aliases = dict.fromkeys(ARM_ALIASES, "2")
    with caplog.at_level(logging.ERROR, logger="serving.models"):
        for _ in range(3):  # three polls see the same bad version
            assert manager.refresh() == {}
    assert refused == [("control", "registry")]
    assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()] == [
        "arm control: registry version 2 (arm-control) refused, keeps serving 1: "
        "smoke test failed: weights not finite (item_emb.weight)"
    ]
    source.aliases = dict.fromkeys(ARM_ALIASES, "3")
    source.bundles["3"] = tiny_bundle(seed=1, version="3")
    assert manager.refresh() == {"control": "3"}  # a good version after a refused one still loads


def test_a_refused_version_at_start_serves_the_cache(tmp_path, redis_url, redis_prefix) -> None:
    settings = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix)
    with TestClient(create_app(settings, model_source=static_source(version="1"))) as c:
        assert c.get("/readyz").json()["arms"] == {"control": "1", "treatment": "1"}
    bad = StaticSource({"2": nan_bundle("2")}, dict.fromkeys(ARM_ALIASES, "2"))
    with TestClient(create_app(settings, model_source=bad)) as c:
        assert c.get("/readyz").json()["arms"] == {"control": "1", "treatment": "1"}
        metrics = c.get("/metrics").text
    assert 'reco_model_refused_total{arm="control",kind="registry"} 1.0' in metrics


def _impression_times(redis_url: str, redis_prefix: str) -> set[str]:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.xrange(f"{redis_prefix}:events")
    finally:
        client.close()
    events = [json.loads(fields[b"e"]) for _, fields in entries]
    return {e["ts"] for e in events if e["event_type"] == "impression"}


def test_the_event_time_header_stamps_impressions_only_when_honoured(tmp_path, redis_url, redis_prefix) -> None:
    body = {"user_id": "u1", "limit": 3}
    with _app(tmp_path / "off", redis_url, redis_prefix) as c:  # default: the header is ignored, even a bad one
        assert c.post("/v1/recommendations", json=body, headers={EVENT_TIME: "yesterday"}).status_code == 200
    wall = _impression_times(redis_url, redis_prefix)
    assert len(wall) == 1 and not next(iter(wall)).startswith("2030")
    with _app(tmp_path / "on", redis_url, redis_prefix, honour_event_time_header=True) as c:
        ok = c.post("/v1/recommendations", json=body, headers={EVENT_TIME: "2030-05-06T07:08:09+02:00"})
        assert ok.status_code == 200, ok.text
        bad = c.post("/v1/recommendations", json=body, headers={EVENT_TIME: "yesterday"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["header", "x-reco-event-time"]
        assert "not an ISO-8601 date-time: 'yesterday'" in bad.json()["message"]
    assert _impression_times(redis_url, redis_prefix) - wall == {"2030-05-06T05:08:09Z"}  # stamped, in UTC
