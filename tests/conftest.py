"""Shared fixtures. Integration fixtures talk to the real services of this machine (Redis at
127.0.0.1:6379, PostgreSQL at 127.0.0.1:5432) under their own key prefix / database and clean up."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

SHARED_ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k"


@pytest.fixture(scope="session")
def movielens_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MovieLens-100k atomic files: the shared copy when present, else fetched like a user would."""
    explicit = os.environ.get("RECO_TEST_ML100K")
    for cand in (Path(explicit) if explicit else None, SHARED_ML100K, Path("/work/shared/data/movielens-100k")):
        if cand is not None and (cand / "ml-100k.inter").exists():
            return cand
    from reco.data.movielens import fetch_movielens

    dest = Path.home() / ".cache" / "reco" / "ml-100k"
    if not (dest / "ml-100k.inter").exists():
        fetch_movielens(dest)
    return dest


@pytest.fixture
def redis_url() -> str:
    return os.environ.get("RECO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_prefix(redis_url: str):
    """A unique key prefix on the real Redis; every key under it is deleted afterwards."""
    import redis

    prefix = f"reco-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
