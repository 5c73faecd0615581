"""`RecommendFastPath`: valid recommendation requests are answered past FastAPI's routing layer, with the
route's answers; everything else reaches the route unchanged. Real app, real Redis."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from reliability_helpers import static_source
from serving_helpers import serving_settings

from serving.app import RecommendFastPath, create_app

pytestmark = pytest.mark.integration

RECO = "/v1/recommendations"
SAME = ("item_id", "score", "reason", "source", "position", "is_exploration", "propensity")


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """Which way each recommendation went: "fast" (the middleware) or "route" (FastAPI)."""
    seen: list[str] = []
    parse = RecommendFastPath._parse

    def spy_parse(scope, body, services):
        request = parse(scope, body, services)
        seen.append("fast" if request is not None else "route")
        return request

    monkeypatch.setattr(RecommendFastPath, "_parse", staticmethod(spy_parse))
    return seen


def _client(tmp_path, redis_url: str, redis_prefix: str, source=None, **overrides) -> TestClient:
    settings = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, **overrides)
    return TestClient(create_app(settings, model_source=source or static_source()), raise_server_exceptions=False)


def _answer(client: TestClient, body: dict) -> dict:
    r = client.post(RECO, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_fast_path_answers_as_the_route(tmp_path, redis_url, redis_prefix, calls) -> None:
    body = {"user_id": "u7", "session_id": "s7", "page_type": "product", "context_item_id": "5", "limit": 7}
    # Two apps on two empty key spaces (the first one's impressions move the exploration statistics).
    with _client(tmp_path / "fast", redis_url, f"{redis_prefix}:fast") as c:
        fast = _answer(c, body)
    assert calls == ["fast"]
    with _client(tmp_path / "route", redis_url, f"{redis_prefix}:route", fast_path=False) as c:
        route = _answer(c, body)
    assert calls == ["fast"]  # without the middleware nothing was parsed by it: FastAPI served the second
    assert fast.keys() == route.keys()
    for key in ("user_id", "model_version", "online_snapshot", "experiment_group", "alias", "degraded"):
        assert fast[key] == route[key], key
    assert [[it[k] for k in SAME] for it in fast["items"]] == [[it[k] for k in SAME] for it in route["items"]]
    assert len(fast["items"]) == 7 and fast["request_id"] != route["request_id"]


def test_everything_but_a_valid_plain_request_goes_to_the_route(tmp_path, redis_url, redis_prefix, calls) -> None:
    with _client(tmp_path, redis_url, redis_prefix, honour_event_time_header=True) as c:
        bad = c.post(RECO, json={"user_id": "u", "limit": 0})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "limit"]
        assert bad.json()["message"].startswith("invalid request: body.limit")
        form = c.post(RECO, content=json.dumps({"user_id": "u"}), headers={"Content-Type": "text/plain"})
        assert form.status_code == 422  # FastAPI's answer to a body that is not declared JSON
        timed = c.post(RECO, json={"user_id": "u"}, headers={"X-Reco-Event-Time": "2026-01-02T03:04:05Z"})
        assert timed.status_code == 200 and len(timed.json()["items"]) == 20
        ok = c.post(RECO, json={"user_id": "u", "limit": 3})
        assert ok.status_code == 200 and len(ok.json()["items"]) == 3
    assert calls == ["route", "route", "route", "fast"]


def test_the_fast_path_answers_503_before_a_model_is_loaded(tmp_path, redis_url, redis_prefix, calls) -> None:
    registry_down = static_source()
    registry_down.down = True  # and nothing in the model cache: no model at all
    with _client(tmp_path, redis_url, redis_prefix, source=registry_down) as c:
        r = c.post(RECO, json={"user_id": "u"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "5" and r.json()["detail"].startswith("not ready")
    assert calls == ["fast"]


def test_the_fast_path_hides_an_unexpected_error_as_the_app_does(tmp_path, redis_url, redis_prefix, calls) -> None:
    with _client(tmp_path, redis_url, redis_prefix) as c:

        def broken(req, defer_log=False):
            raise RuntimeError("internal detail that must not leak")

        c.app.state.services.recommender.recommend = broken
        r = c.post(RECO, json={"user_id": "u"})
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    assert calls == ["fast"]


def test_a_request_waits_one_turn_of_the_loop_before_its_pipeline(monkeypatch) -> None:
    """The pipeline holds the event loop for its whole run: it starts only after one turn of the loop, so that
    what the loop already has queued (another connection's request read earlier) runs first."""
    import asyncio
    from types import SimpleNamespace

    import serving.fast_path as fast_path

    order: list[str] = []

    def pipeline(services, request, ts):
        order.append(f"pipeline {request.user_id}")
        return b"{}", SimpleNamespace(start_log=lambda: order.append("impressions"))

    monkeypatch.setattr(fast_path, "recommendation", pipeline)
    services = SimpleNamespace(settings=SimpleNamespace(honour_event_time_header=False),
                               metrics=SimpleNamespace(observe=lambda result: order.append("metrics")))  # fmt: skip
    scope = {"type": "http", "path": RECO, "method": "POST", "headers": [(b"content-type", b"application/json")],
             "app": SimpleNamespace(state=SimpleNamespace(services=services))}  # fmt: skip
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b'{"user_id": "late"}', "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> None:
        app = RecommendFastPath(lambda *a: None)
        asyncio.get_running_loop().call_soon(order.append, "queued before")
        await app(scope, receive, send)

    asyncio.run(main())
    assert order == ["queued before", "pipeline late", "metrics", "impressions"]
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


def test_behind_the_body_limit_the_body_is_read_once(monkeypatch) -> None:
    """BodyLimit reads the body and leaves it in the scope: the fast path answers from it without reading
    again, and a body it does not take reaches the app behind it through the replaying `receive`."""
    import asyncio
    from types import SimpleNamespace

    import serving.fast_path as fast_path
    from serving.middleware import BodyLimit

    monkeypatch.setattr(
        fast_path, "recommendation", lambda services, request, ts: (b"{}", SimpleNamespace(start_log=None))
    )
    services = SimpleNamespace(settings=SimpleNamespace(honour_event_time_header=False),
                               metrics=SimpleNamespace(observe=lambda result: None))  # fmt: skip
    behind: list[bytes] = []

    async def route(scope, receive, send) -> None:
        behind.append((await receive())["body"])

    def answer(body: bytes) -> tuple[int, list[dict]]:
        scope = {"type": "http", "path": RECO, "method": "POST", "headers": [(b"content-type", b"application/json")],
                 "app": SimpleNamespace(state=SimpleNamespace(services=services))}  # fmt: skip
        reads, sent = [], []

        async def receive() -> dict:
            reads.append(body)
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        asyncio.run(BodyLimit(RecommendFastPath(route), max_bytes=1024)(scope, receive, send))
        return len(reads), sent

    reads, sent = answer(b'{"user_id": "u"}')
    assert reads == 1 and [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"{}"
    assert sent[0]["headers"] == [(b"content-length", b"2"), (b"content-type", b"application/json")]
    assert answer(b'{"user_id": ""}') == (1, []) and behind == [b'{"user_id": ""}']  # invalid: to the route
