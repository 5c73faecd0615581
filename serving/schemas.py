"""HTTP request and response bodies. Requests forbid unknown fields; every bound is explicit so that bad
input is a 422 naming the field, never a 500. Responses are separate models (nothing echoes a request)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from reco.data.catalog import ItemId, ItemUpsert
from reco.data.events import DEFAULT_DEVICE, Event, PageType

Id = Annotated[str, Field(min_length=1, max_length=128)]


class RecommendationRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user_id": "u42", "page_type": "product", "context_item_id": "50", "session_id": "s1",
                 "device": "mobile", "limit": 10}
            ]
        },
    )  # fmt: skip

    user_id: Id
    page_type: PageType = PageType.home
    context_item_id: Id | None = Field(None, description="the page's item (product pages: similar items)")
    session_id: Id | None = None
    device: Annotated[str, Field(min_length=1, max_length=32)] = DEFAULT_DEVICE
    limit: int = Field(20, ge=1, le=100)


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    reason: str = Field(description='for the UI, e.g. "Because you viewed Toy Story (1995)"')
    source: str = Field(
        description="candidate source: session_similar, session_query, context_similar, trending, new_items, popular"
    )
    position: int = Field(description="1-based slot")
    is_exploration: bool
    propensity: float = Field(description="probability with which the arm's policy put this item at this slot")


class RecommendationResponse(BaseModel):
    request_id: str
    user_id: str
    items: list[RecommendedItem]
    model_version: str = Field(description="registry version of the arm's model")
    online_snapshot: int | None = Field(None, description="online-weights snapshot in use; None = registry weights")
    latency_ms: float
    experiment_group: str = Field(description="the experiment arm")
    alias: str = Field(description="registry alias the arm serves")
    degraded: list[str] = Field(description="parts that fell back: features, model, impressions, candidates:<source>")


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, description="at most `max_events_per_batch` (default 1000)")


class EventsAccepted(BaseModel):
    accepted: int
    duplicates: int


class Readiness(BaseModel):
    ready: bool
    arms: dict[str, str | None] = Field(description="arm -> loaded model version (None: none yet)")
    redis: bool


class LearningArm(BaseModel):
    paused: bool = Field(description="online updates of this arm are paused (events are still consumed)")
    model_version: str | None = Field(description="registry version this server serves for the arm")
    online_snapshot: int | None = Field(description="online weights snapshot in use (None: registry weights)")


class LearningStatus(BaseModel):
    arms: dict[str, LearningArm]
    worker: int | None = Field(None, description="process id of the worker that answered (`reco serve --workers N`)")


class Health(BaseModel):
    status: str = "ok"


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every 4xx body: `detail` is a message, or (validation errors) the list of issues, with `message`
    then summing them up in one line."""

    detail: str | list[ValidationIssue]
    message: str | None = None


# --- catalogue API (`PUT /v1/items...`; the item model itself is reco.data.catalog.ItemUpsert) ---------


class ItemBatchEntry(ItemUpsert):
    item_id: ItemId


class ItemBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemBatchEntry] = Field(min_length=1, description="at most `max_items_per_batch` (default 1000)")


class ItemUpserted(BaseModel):
    item_id: str
    status: str = Field(description="created, updated or unchanged (same content: nothing changed)")
    version: int = Field(description="catalogue version that last changed the item")


class ItemsUpserted(BaseModel):
    created: int
    updated: int
    unchanged: int
    catalog_version: int = Field(description="the catalogue version after this batch")
