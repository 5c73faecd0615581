"""The interaction event: one typed definition for the API, the Redis stream, the lake and validation.

`Event` (pydantic) validates what comes in over HTTP; `EVENT_SCHEMA` (Arrow) is the lake's column
layout. Both are derived from the same field list so that they cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class EventType(StrEnum):
    impression = "impression"
    view = "view"
    click = "click"
    add_to_cart = "add_to_cart"
    purchase = "purchase"


class PageType(StrEnum):
    home = "home"
    product = "product"
    category = "category"
    cart = "cart"


#: Events that count as positive feedback on a served item.
FEEDBACK_TYPES = frozenset({EventType.click, EventType.add_to_cart, EventType.purchase})

#: The device of a request that names none: the one default of serving, the pipeline and (as the value a
#: missing `device` is read as) training, evaluation and the simulators. It is in no ranker's device
#: vocabulary, so it takes the model's "unknown device" row (index 0).
DEFAULT_DEVICE = "unknown"

Id = Annotated[str, Field(min_length=1, max_length=128)]


class Event(BaseModel):
    """One interaction. `event_id` is the idempotency key: duplicates count once everywhere."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Id
    ts: datetime = Field(description="UTC; a naive timestamp is read as UTC")
    user_id: Id
    session_id: Id | None = None
    item_id: Id
    event_type: EventType
    request_id: Id | None = Field(None, description="links feedback to the recommendation that caused it")
    position: int | None = Field(None, ge=1, le=10_000)
    arm: Id | None = None
    model_version: Annotated[str, Field(max_length=128)] | None = None
    propensity: float | None = Field(None, gt=0.0, le=1.0)
    is_exploration: bool | None = None
    page_type: PageType | None = None
    device: Annotated[str, Field(max_length=32)] | None = None
    value: float | None = Field(None, ge=0.0, allow_inf_nan=False, description="revenue, purchases only")
    phase: int | None = Field(None, ge=1, le=1_000_000, description="experiment phase of a served impression")

    @field_validator("ts")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)

    @model_validator(mode="after")
    def _value_only_on_purchase(self) -> Event:
        if self.value is not None and self.event_type != EventType.purchase:
            raise ValueError("value is allowed only on purchase events")
        return self

    def to_row(self) -> dict[str, Any]:
        """A flat dict in lake column order (enums as plain strings)."""
        row = self.model_dump()
        row["event_type"] = str(self.event_type)
        row["page_type"] = None if self.page_type is None else str(self.page_type)
        return row


EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string()),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("request_id", pa.string()),
        pa.field("position", pa.int32()),
        pa.field("arm", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("propensity", pa.float64()),
        pa.field("is_exploration", pa.bool_()),
        pa.field("page_type", pa.string()),
        pa.field("device", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("phase", pa.int32()),  # experiment phase (reco.experiments.phases); null = before phases
    ]
)
EVENT_COLUMNS: tuple[str, ...] = tuple(EVENT_SCHEMA.names)
if tuple(Event.model_fields) != EVENT_COLUMNS:  # not an assert: it must hold under `python -O` too
    raise RuntimeError("Arrow schema and pydantic model drifted apart")


def events_to_table(events: list[Event]) -> pa.Table:
    """Validated events -> an Arrow table in `EVENT_SCHEMA`.

    >>> e = Event(event_id="e1", ts="2026-01-01T00:00:00Z", user_id="u", item_id="i", event_type="view")
    >>> events_to_table([e]).num_rows
    1
    """
    return pa.Table.from_pylist([e.to_row() for e in events], schema=EVENT_SCHEMA)
