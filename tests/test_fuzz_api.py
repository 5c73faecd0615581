"""Schemathesis against the app's own OpenAPI document: every operation, with the API key, over real HTTP
(uvicorn on a loopback port, real Redis). Checks: no 5xx, responses conform to their documented schema,
status codes are documented. F-1 (a body that is not UTF-8 JSON got FastAPI's undocumented 400) and F-2 (the
unknown-item 422 of /v1/events did not match the documented 422 schema) are fixed, so nothing is tolerated.
Bounded and derandomized."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from reliability_helpers import free_port, static_source
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance
from serving_helpers import serving_settings

from serving.app import create_app

pytestmark = pytest.mark.integration

KEY = {"X-API-Key": "test-key"}
PREFIX = f"reco-fuzz-{uuid.uuid4().hex[:8]}"


def _schema_only_app():
    """The app object just for its OpenAPI document (no lifespan: nothing is started)."""
    import tempfile
    from pathlib import Path

    return create_app(serving_settings(Path(tempfile.mkdtemp(prefix="reco-fuzz-schema-"))))


schema = schemathesis.openapi.from_dict(_schema_only_app().openapi())


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, redis_url_module: str) -> Iterator[str]:
    import uvicorn

    app = create_app(
        serving_settings(tmp_path_factory.mktemp("fuzz"), redis_url=redis_url_module, redis_prefix=PREFIX),
        model_source=static_source(),
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="fuzz-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 180  # generous: the app loads its models first, on a loaded machine
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=20)
    import redis

    client = redis.Redis.from_url(redis_url_module)
    keys = list(client.scan_iter(match=f"{PREFIX}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def redis_url_module() -> str:
    import os

    return os.environ.get("RECO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)


@schema.parametrize()
@FUZZ
def test_api_never_5xx_and_responses_match_their_schema(case, base_url: str) -> None:
    response = case.call(base_url=base_url, headers=KEY, timeout=30)
    case.validate_response(response, checks=CHECKS)
    documented = {str(code) for code in case.operation.definition.raw.get("responses", {})}
    if case.method.upper() != case.operation.method.upper():  # a negative case on purpose: wrong method
        documented.add("405")
    assert str(response.status_code) in documented, (response.status_code, response.text[:300])
