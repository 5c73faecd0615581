"""The values `RedisStore` takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from reco.data.events import Event

__all__ = ["ImpressionRecord", "IngestResult", "RequestFeatures", "StreamEntry", "WeightsSnapshot"]


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int


@dataclass(frozen=True)
class RequestFeatures:
    """Everything one recommendation request reads from Redis (one pipelined round trip).

    session_items / user_items are oldest first. trending holds the current decayed score of each
    candidate (0.0 when absent). thompson maps category -> (successes, failures) evidence.
    """

    session_items: list[str]
    user_items: list[str]
    user_profile: dict[str, str]
    item_features: dict[str, dict[str, str]]
    trending: dict[str, float]
    thompson: dict[str, tuple[float, float]]
    cart_items: list[str] = field(default_factory=list)  # the session's cart, oldest addition first
    trending_top: list[tuple[str, float]] = field(default_factory=list)  # top `trending_k`, best first

    @classmethod
    def of_session(cls, session_items: list[str]) -> RequestFeatures:
        """A request that knows only its session (offline evaluation and benchmarks hold sessions in memory)."""
        return cls(list(session_items), [], {}, {}, {}, {})


class ImpressionRecord(NamedTuple):
    """One served impression as `log_request` takes it: the event already serialised."""

    event_id: str
    item_id: str
    payload: str  # the `Event` as JSON (what the stream holds)
    category: str  # drives the arm's Thompson statistics ("" = read P:item:<id> category)


@dataclass(frozen=True)
class StreamEntry:
    entry_id: str
    event: Event | None  # None when the entry cannot be parsed (counted, acknowledged, not lost silently)
    raw: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightsSnapshot:
    version: int
    meta: dict[str, Any]
    blob: bytes
