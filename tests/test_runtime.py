"""Serving's start-up heap freeze (`serving.runtime.freeze_imported_heap`): what was alive is out of the garbage
collector's full passes; what is created afterwards (models, requests) is still collected."""

from __future__ import annotations

import gc
import weakref

import pytest

from serving.runtime import freeze_imported_heap


@pytest.fixture
def frozen():
    count = freeze_imported_heap()
    yield count
    gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it
        self.payload = bytearray(1 << 20)


def test_the_heap_alive_at_start_up_is_frozen(frozen) -> None:
    assert frozen > 10_000  # torch, mlflow, FastAPI and the reco modules: tens of thousands of objects
    assert gc.get_freeze_count() > 10_000  # (a frozen object that refcounting frees leaves the count)


def test_what_is_created_after_the_freeze_is_still_collected(frozen) -> None:
    node = _Node()  # like a model loaded after start-up, then replaced by a new version
    gone = weakref.ref(node)
    del node
    assert gone() is not None  # a cycle: refcounting alone keeps it
    gc.collect()
    assert gone() is None


def test_an_app_freezes_before_it_loads_its_models(tmp_path, redis_url, redis_prefix) -> None:
    from fastapi.testclient import TestClient
    from reliability_helpers import static_source
    from serving_helpers import serving_settings

    from serving.app import create_app

    gc.unfreeze()
    settings = serving_settings(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix)
    with TestClient(create_app(settings, model_source=static_source())) as client:
        assert gc.get_freeze_count() > 10_000
        model = client.app.state.services.manager.get("control")
        assert model is not None and gc.is_tracked(model)
        index = weakref.ref(model.index)
    del model
    client.app.state.services = None  # the app's last reference to its models
    try:
        gc.collect()  # the freeze still in force: a frozen index (it holds a reference cycle) would survive this
        assert index() is None  # the model was loaded after the freeze: freed once nothing holds it
    finally:
        gc.unfreeze()
