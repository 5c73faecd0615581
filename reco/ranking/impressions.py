"""The impression events of one served page: as `Event`s and as the store's serialised request log."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import Any

from reco.data.events import Event, EventType, PageType
from reco.ranking.request import RecoItem, RecoRequest
from reco.state.store import ImpressionRecord


def _impression_fields(
    req: RecoRequest,
    request_id: str,
    arm: str,
    model_version: str,
    items: Sequence[RecoItem],
    *,
    phase: int | None = None,
) -> list[dict[str, Any]]:
    """Each served item's impression event, but `ts`: values already valid for `Event` (device cut to the
    schema's 32 characters, propensity clamped into (0, 1])."""
    page, device = PageType(req.page_type), req.device[:32] if req.device else None
    return [
        {
            "event_id": f"{request_id}:{it.position}",
            "user_id": req.user_id,
            "session_id": req.session_id,
            "item_id": it.item_id,
            "event_type": EventType.impression,
            "request_id": request_id,
            "position": it.position,
            "arm": arm,
            "model_version": model_version,
            "propensity": min(1.0, max(it.propensity, 1e-9)),
            "is_exploration": it.is_exploration,
            "page_type": page,
            "device": device,
            **({} if phase is None else {"phase": phase}),
        }
        for it in items
    ]


def impression_events(
    req: RecoRequest,
    request_id: str,
    arm: str,
    model_version: str,
    items: Sequence[RecoItem],
    *,
    ts: datetime | None = None,
) -> list[Event]:
    """One `impression` event per served item; `event_id` is derived from request and position, so a
    retried write is deduplicated by the store.

    >>> it = RecoItem("i1", 0.5, "Trending now", "trending", 1, False, 1.0)
    >>> [e.event_id for e in impression_events(RecoRequest("u"), "r1", "control", "3", [it])]
    ['r1:1']
    """
    now = ts or datetime.now(UTC)
    # `model_construct` skips validation: every value is built from validated inputs.
    return [Event.model_construct(ts=now, **f) for f in _impression_fields(req, request_id, arm, model_version, items)]


def impression_records(
    req: RecoRequest,
    request_id: str,
    arm: str,
    model_version: str,
    items: Sequence[RecoItem],
    *,
    ts: datetime,
    phase: int | None = None,
) -> list[ImpressionRecord]:
    """`impression_events` serialised for the store's request log without building an `Event` or a dict per
    item: the fields every impression of the request shares are encoded once (plain `json`), each item adds
    its own five. Building and dumping 20 pydantic models took ~0.25 ms of the impression thread's GIL time
    per request, 20 `json.dumps` of whole dicts ~0.15 ms; tests hold each payload equal to its `Event`.

    >>> it = RecoItem("i1", 0.5, "Trending now", "trending", 1, False, 1.0, "Drama")
    >>> rec = impression_records(RecoRequest("u"), "r1", "control", "3", [it], ts=datetime(2026, 1, 1, tzinfo=UTC))
    >>> rec[0].event_id, rec[0].category, Event.model_validate_json(rec[0].payload).ts.year
    ('r1:1', 'Drama', 2026)
    """
    stamp = ts.astimezone(UTC).isoformat().replace("+00:00", "Z")  # as pydantic writes it (the stream's form)
    shared = {
        "ts": stamp,
        "user_id": req.user_id,
        "session_id": req.session_id,
        "event_type": EventType.impression.value,
        "request_id": request_id,
        "arm": arm,
        "model_version": model_version,
        "page_type": PageType(req.page_type).value,
        "device": req.device[:32] if req.device else None,
        **({} if phase is None else {"phase": phase}),
    }
    head = _dumps(shared)[:-1]  # '{...' without the closing brace: each item's fields follow
    event_id = _dumps(f"{request_id}:")[:-1]  # '"<request_id>:' : the position and the closing quote follow
    rid, out = f"{request_id}:", []
    for item_id, _, _, _, position, exploration, p, category in items:
        # Clamped into (0, 1] exactly as `_impression_fields`' min(1.0, max(p, 1e-9)), NaN -> 1.0 included.
        propensity = 1.0 if not p < 1.0 else (p if p > 1e-9 else 1e-9)
        pos = str(position)
        payload = (
            f'{head},"event_id":{event_id}{pos}","item_id":{_encode_str(item_id)},"position":{pos},'
            f'"propensity":{float.__repr__(propensity)},"is_exploration":{"true" if exploration else "false"}}}'
        )
        out.append(_record(ImpressionRecord, (rid + pos, item_id, payload, category)))
    return out


_dumps = json.JSONEncoder(separators=(",", ":")).encode
# `_dumps` of a str without its Python frame, and a record built as the tuple it is without the NamedTuple's
# Python __new__: with the item unpacked once and the clamp without min/max calls, the 20-item loop went
# from ~40 to ~21 us (`impression_records` of 20 items 1.5x less CPU).
_encode_str = encode_basestring_ascii
_record = tuple.__new__
