"""The catalogue API against a real Redis: validated, idempotent upserts; events for a new item accepted at
once; new items served through cold start after the next poll; unavailable items never served after it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from serving_helpers import serving_settings, tiny_bundle

from serving.app import create_app

pytestmark = pytest.mark.integration

KEY = {"X-API-Key": "test-key"}


class OneVersion:
    """A `ModelSource` holding one real bundle (no registry needed for catalogue behaviour)."""

    def __init__(self) -> None:
        self.bundle = tiny_bundle(n_items=40, seed=0)

    def current_version(self, alias: str) -> str:
        return "1"

    def load(self, alias: str, version: str):
        return self.bundle


@pytest.fixture
def client(tmp_path, redis_url: str, redis_prefix: str) -> Iterator[TestClient]:
    settings = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, max_items_per_batch=3)
    with TestClient(create_app(settings, model_source=OneVersion()), raise_server_exceptions=False) as c:
        yield c


def _wait_catalogue(client: TestClient, version: int, timeout: float = 60.0) -> None:
    """Until every arm's served model was built from catalogue `version` or later (the poll is 0.2 s)."""
    manager = client.app.state.services.manager
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((m := manager.get(a)) is not None and m.catalog_version >= version for a in manager.arms):
            return
        time.sleep(0.05)
    raise AssertionError(f"catalogue version {version} not adopted within {timeout} s")


def _served(client: TestClient, user: str, limit: int = 20) -> list[dict]:
    resp = client.post("/v1/recommendations", json={"user_id": user, "limit": limit})
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]


def test_upserts_are_validated_and_idempotent(client: TestClient) -> None:
    body = {"title": "Blue Shoe", "categories": ["Drama"], "attributes": {"colour": "blue", "size": 42}}
    assert client.put("/v1/items/new-1", json=body).status_code == 401
    assert client.put("/v1/items/new-1", json=body, headers={"X-API-Key": "nope"}).status_code == 403
    for bad in ({**body, "price": 3}, {**body, "categories": "Drama"}, {**body, "title": "x" * 600},
                {**body, "attributes": {"k": [1, 2]}}, {**body, "available": "maybe"}):  # fmt: skip
        resp = client.put("/v1/items/new-1", json=bad, headers=KEY)
        assert resp.status_code == 422 and "message" in resp.json(), bad
    assert client.put("/v1/items/a%20b", json=body, headers=KEY).status_code == 422  # ids carry no spaces
    assert (
        client.put("/v1/items/new-1", content=b"{", headers={**KEY, "content-type": "application/json"}).status_code
        == 422
    )

    first = client.put("/v1/items/new-1", json=body, headers=KEY).json()
    again = client.put("/v1/items/new-1", json=body, headers=KEY).json()
    assert first["status"] == "created" and again == {**first, "status": "unchanged"}
    changed = client.put("/v1/items/new-1", json={**body, "title": "Red Shoe"}, headers=KEY).json()
    assert changed["status"] == "updated" and changed["version"] > first["version"]

    batch = {
        "items": [{"item_id": "new-2", "categories": ["Comedy"]}, {"item_id": "new-1", **body, "title": "Red Shoe"}]
    }
    out = client.put("/v1/items", json=batch, headers=KEY).json()
    assert (out["created"], out["updated"], out["unchanged"]) == (1, 0, 1)
    too_many = {"items": [{"item_id": f"x{i}"} for i in range(4)]}
    assert client.put("/v1/items", json=too_many, headers=KEY).status_code == 413
    assert client.put("/v1/items", json={"items": []}, headers=KEY).status_code == 422


def test_new_item_is_accepted_served_by_cold_start_and_blocked_when_unavailable(client: TestClient) -> None:
    view = {"event_id": "e-new-1", "ts": "2026-01-01T00:00:00Z", "user_id": "u1", "session_id": "s1",
            "item_id": "new-1", "event_type": "view"}  # fmt: skip
    assert client.post("/v1/events", json={"events": [view]}, headers=KEY).status_code == 422  # not yet upserted
    created = client.put("/v1/items/new-1", json={"title": "Blue Shoe", "categories": ["Drama"]}, headers=KEY).json()
    # Accepted at once (the store knows the item), before any worker polled the catalogue.
    assert client.post("/v1/events", json={"events": [view]}, headers=KEY).json() == {"accepted": 1, "duplicates": 0}

    _wait_catalogue(client, created["version"])
    pages = [_served(client, f"cold-{k}") for k in range(5)]
    shown = [it for page in pages for it in page if it["item_id"] == "new-1"]
    assert shown, "a new item is offered by the new_items source and lifted by its bonus"
    assert all(it["is_exploration"] and 0 < it["propensity"] <= 1 for it in shown)
    # Its view made it trending too; the more specific source keeps it (`SOURCE_PRIORITY`).
    assert {it["source"] for it in shown} <= {"new_items", "trending"}
    assert all(it["reason"] == "New in Drama" for it in shown if it["source"] == "new_items")

    gone = client.put("/v1/items/new-1", json={"title": "Blue Shoe", "categories": ["Drama"], "available": False},
                      headers=KEY).json()  # fmt: skip
    _wait_catalogue(client, gone["version"])
    for k in range(20):  # context pages of the item itself and plain pages: never served again
        assert all(it["item_id"] != "new-1" for it in _served(client, f"after-{k}", limit=40))
    resp = client.post("/v1/recommendations", json={"user_id": "p", "page_type": "product", "context_item_id": "3"})
    assert all(it["item_id"] != "new-1" for it in resp.json()["items"])
    # Its events are still accepted: the vocabulary keeps unavailable items (their history still trains).
    again = {**view, "event_id": "e-new-2"}
    assert client.post("/v1/events", json={"events": [again]}, headers=KEY).json()["accepted"] == 1
