"""Model manager: local cache, online weight snapshots from real Redis, reference swaps."""

from __future__ import annotations

import io

import pytest
import torch
from serving_helpers import tiny_bundle

from serving.models import ModelCache, ModelManager, with_weights

ARMS = {"control": "arm-control"}


def test_cache_round_trip_and_pointer(tmp_path) -> None:
    cache = ModelCache(tmp_path, keep=1)
    assert cache.load("control") is None
    cache.save("control", "1", tiny_bundle(seed=0))
    cache.save("control", "2", tiny_bundle(seed=1))
    version, bundle = cache.load("control")
    assert version == "2" and bundle.item_ids[0] == "<pad>"
    assert sorted(p.name for p in (tmp_path / "control").iterdir()) == ["2", "CURRENT"]  # old version pruned


def test_manager_without_registry_serves_the_cache_and_is_ready(tmp_path) -> None:
    empty = ModelManager(ARMS, None, ModelCache(tmp_path / "none"))
    empty.refresh()
    assert not empty.ready and empty.get("control") is None and empty.any() is None
    cache = ModelCache(tmp_path / "c")
    cache.save("control", "4", tiny_bundle())
    manager = ModelManager(ARMS, None, cache)
    manager.refresh()
    assert manager.ready and manager.versions() == {"control": "4"}


def blob_of(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


@pytest.fixture
def store(redis_url: str, redis_prefix: str):
    from reco.state.store import RedisStore, connect

    client = connect(redis_url)
    yield RedisStore(client, redis_prefix)
    client.close()


@pytest.mark.integration
def test_online_snapshot_is_swapped_in_and_old_references_keep_their_model(tmp_path, store) -> None:
    cache = ModelCache(tmp_path)
    cache.save("control", "4", tiny_bundle())
    seen: list[int | None] = []
    manager = ModelManager(ARMS, None, cache, store=store, on_change=lambda arm, m: seen.append(m.online_snapshot))
    manager.refresh()
    before = manager.get("control")
    state = {k: v.clone() for k, v in before.bundle.model.state_dict().items()}
    state["item_emb.weight"][1:] += 1.0
    assert manager.refresh_weights() == {}  # nothing published yet

    store.put_weights("control", blob_of(state), {"base_version": "3"})  # for another base: ignored
    assert manager.refresh_weights() == {}
    store.put_weights("control", blob_of(state), {"base_version": "4"})
    assert manager.refresh_weights() == {"control": 2}
    after = manager.get("control")
    assert after is not before and after.version == "4" and after.online_snapshot == 2
    assert torch.equal(after.bundle.model.item_emb.weight, state["item_emb.weight"])
    assert not torch.equal(before.bundle.model.item_emb.weight, state["item_emb.weight"])  # in-flight copy intact
    assert seen == [None, 2]

    store.put_weights("control", b"not a state dict", {"base_version": "4"})
    assert manager.refresh_weights() == {}  # a corrupt snapshot is refused
    assert manager.get("control") is after


def test_with_weights_refuses_a_mismatched_state_dict() -> None:
    bundle = tiny_bundle()
    with pytest.raises(RuntimeError):
        with_weights(bundle, blob_of({"item_emb.weight": torch.zeros(2, 2)}))
