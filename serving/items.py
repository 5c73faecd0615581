"""The catalogue API (`PUT /v1/items/{item_id}`, `PUT /v1/items`) and how API workers follow the catalogue.

Upserts go to Redis (`reco.state.items.ItemStore`, one atomic call per batch, idempotent: the same content
changes nothing). Every worker's model manager polls the catalogue version with the online weights
(`catalogue_poll`, one GET when nothing changed) and, when it moved, updates each arm's served model off
the request path: incrementally (`ServedModel.updated`: new items' rows appended to the scorer's tables and
the embedding index, changed items' rows and availability set; O(changed items) work plus table copies)
when the arm still serves the model this builder last made for it, in full (`ServedModel.build(...,
items=...)`) at a model swap. New items are scored from their content (`reco.ranking.cold_start`),
unavailable ones are blocked from every candidate list. The lake's items table
copies Redis in the training pipeline (`reco.state.items.export_items`).
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations, which name objects
# imported inside `add_item_routes` (serving.routes imports this module).
import weakref
from typing import Annotated, Any

from fastapi import FastAPI, Path

from reco.ranking.recommend import ServedModel
from reco.state.items import CatalogFollower, ItemStore
from serving.schemas import ItemBatch, ItemsUpserted, ItemUpsert, ItemUpserted

ITEM_ID_PATH = Path(min_length=1, max_length=128, pattern=r"^[^\s<>]+$", description="the item's id")


def served_model_builder(follower: CatalogFollower | None, ann_threshold: int) -> Any:
    """`ModelManager`'s `build`: the served model of `bundle` with the catalogue records the worker holds now.
    The same bundle, version and online snapshot as a model this builder made and that is still alive (the
    manager's rebuild for a catalogue change): that model updated incrementally; else a full build (a model
    swap, a new online snapshot). Models are remembered by weak reference: a swapped-out one is not kept."""
    last: dict[tuple[int, str, Any], weakref.ref[ServedModel]] = {}

    def build(bundle: Any, version: str, **kwargs: Any) -> ServedModel:
        records = follower.records if follower is not None else {}
        version_read = follower.version if follower is not None else 0
        key = (id(bundle), str(version), kwargs.get("online_snapshot"))
        found = last.get(key)
        previous = found() if found is not None else None
        if previous is not None and previous.bundle is bundle and records and set(kwargs) <= {"online_snapshot"}:
            model = previous.updated(records, version_read)
        else:
            model = ServedModel.build(bundle, version, items=records or None, catalog_version=version_read,
                                      ann_threshold=ann_threshold, **kwargs)  # fmt: skip
        for k in [k for k, ref in last.items() if ref() is None]:
            del last[k]
        last[key] = weakref.ref(model)
        return model

    return build


def catalogue_poll(follower: CatalogFollower) -> bool:
    """The model manager's poll hook: True when the catalogue changed (the arms are then rebuilt)."""
    return follower.poll()


def add_item_routes(app: FastAPI) -> None:
    from serving.errors import ApiError
    from serving.middleware import ApiKey
    from serving.services import Services, ServicesDep

    errors = {
        401: {"description": "missing API key"},
        403: {"description": "invalid API key"},
        413: {"description": "batch or body too large"},
        422: {"description": "invalid item"},
        503: {"description": "Redis unavailable; retry after Retry-After seconds"},
    }

    def _items(services: Services) -> ItemStore:
        if services.items is None:
            raise ApiError(503, "catalogue store unavailable", {"Retry-After": "1"})
        return services.items

    def _upsert(services: Services, pairs: list[tuple[str, ItemUpsert]], versions: bool = False) -> tuple[Any, Any]:
        """(the upsert result, the catalogue version; or, with `versions`, each item's stored version)."""
        from reco.state.store import StoreUnavailable

        store = _items(services)
        try:
            result = store.upsert(pairs)
            if versions:
                return result, {iid: r.version for iid, r in store.get([i for i, _ in pairs]).items()}
            return result, store.seq()
        except StoreUnavailable:
            raise ApiError(
                503, "catalogue store unavailable: nothing was stored, retry", {"Retry-After": "1"}
            ) from None

    @app.put("/v1/items/{item_id}", response_model=ItemUpserted, responses=errors, tags=["catalogue"])
    def put_item(
        item_id: Annotated[str, ITEM_ID_PATH], body: ItemUpsert, services: ServicesDep, _: ApiKey
    ) -> ItemUpserted:
        """Create or replace one item (idempotent: the same body again changes nothing)."""
        result, versions = _upsert(services, [(item_id, body)], versions=True)
        status = "created" if result.created else "updated" if result.updated else "unchanged"
        return ItemUpserted(item_id=item_id, status=status, version=versions.get(item_id, 0))

    @app.put("/v1/items", response_model=ItemsUpserted, responses=errors, tags=["catalogue"])
    def put_items(batch: ItemBatch, services: ServicesDep, _: ApiKey) -> ItemsUpserted:
        """Create or replace many items in one atomic call (a repeated id: the last entry wins)."""
        limit = services.settings.max_items_per_batch
        if len(batch.items) > limit:
            raise ApiError(413, f"batch of {len(batch.items)} items exceeds the maximum of {limit}")
        pairs = [(e.item_id, ItemUpsert(**e.model_dump(exclude={"item_id"}))) for e in batch.items]
        result, seq = _upsert(services, pairs)
        return ItemsUpserted(created=len(result.created), updated=len(result.updated),
                             unchanged=len(result.unchanged), catalog_version=seq)  # fmt: skip


def category_of_upserted(store: ItemStore | None, item_ids: list[str]) -> dict[str, str] | None:
    """item -> category of ids known to the catalogue store but not (yet) to the served model; None when
    the store cannot answer. Events for an item upserted since the last poll are accepted this way."""
    if store is None or not item_ids:
        return {}
    try:
        found = store.get(item_ids)
    except Exception:  # Redis down: the caller treats the ids as unknown
        return None
    return {iid: r.category for iid, r in found.items()}


__all__ = ["add_item_routes", "catalogue_poll", "category_of_upserted", "served_model_builder"]
