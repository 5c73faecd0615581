"""The API's routes: recommendations, events, the admin learning switches and the ops endpoints.

The recommendation endpoint is `async def` and runs the pipeline on the event loop (`render.recommendation`);
`/v1/events` and the admin routes stay plain `def` (thread pool): they wait on Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Header
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask

from serving.errors import ApiError
from serving.items import category_of_upserted
from serving.middleware import ApiKey
from serving.render import recommendation
from serving.schemas import (
    ErrorBody,
    EventBatch,
    EventsAccepted,
    Health,
    LearningArm,
    LearningStatus,
    Readiness,
    RecommendationRequest,
    RecommendationResponse,
)
from serving.services import Services, ServicesDep

log = logging.getLogger(__name__)


def add_routes(app: FastAPI) -> None:
    @app.post(
        "/v1/recommendations",
        response_model=RecommendationResponse,
        responses={503: {"description": "no model loaded yet"}},
        tags=["recommendations"],
    )
    async def recommendations(
        body: RecommendationRequest,
        services: ServicesDep,
        x_reco_event_time: Annotated[str | None, Header(max_length=64, description=EVENT_TIME_DOC)] = None,
        x_reco_sim_epoch: Annotated[int | None, Header(ge=0, description=SIM_EPOCH_DOC)] = None,
    ) -> RecommendationResponse:
        await asyncio.sleep(0)  # served in the order read, as on the fast path (serving/fast_path.py)
        ts = None
        if x_reco_event_time is not None and services.settings.honour_event_time_header:
            ts = event_time(x_reco_event_time)
        if not services.settings.simulated_clock:
            return recommend_response(services, body, ts)
        if x_reco_sim_epoch is not None:  # the snapshots of this tick of the simulator's clock, adopted now
            services.manager.adopt_epoch(x_reco_sim_epoch)
        return recommend_response(services, body, ts, log_now=True)

    @app.post(
        "/v1/events",
        status_code=202,
        response_model=EventsAccepted,
        responses={
            401: {"description": "missing API key"},
            403: {"description": "invalid API key"},
            413: {"description": "batch or body too large"},
            # Not FastAPI's HTTPValidationError alone: the unknown-item 422 has a string `detail`.
            422: {"model": ErrorBody, "description": "invalid batch, or unknown item ids (string detail)"},
            503: {"description": "Redis unavailable; retry after Retry-After seconds"},
        },
        tags=["events"],
    )
    def events(batch: EventBatch, services: ServicesDep, _: ApiKey) -> EventsAccepted:
        settings = services.settings
        if len(batch.events) > settings.max_events_per_batch:
            raise ApiError(
                413, f"batch of {len(batch.events)} events exceeds the maximum of {settings.max_events_per_batch}"
            )
        categories = _check_items(services, batch)
        if services.store is None:
            raise ApiError(503, "event store unavailable", {"Retry-After": "1"})
        from reco.state.store import StoreUnavailable

        try:
            result = services.store.ingest(batch.events, categories=categories)
        except StoreUnavailable:
            services.metrics.events.labels(result="unavailable").inc(len(batch.events))
            raise ApiError(
                503, "event store unavailable: nothing was stored, retry the batch", {"Retry-After": "1"}
            ) from None
        services.metrics.events.labels(result="accepted").inc(result.accepted)
        services.metrics.events.labels(result="duplicate").inc(result.duplicates)
        services.metrics.clicks_observed(batch.events, result.duplicates)
        return EventsAccepted(accepted=result.accepted, duplicates=result.duplicates)

    _add_admin_routes(app)
    from serving.items import add_item_routes

    add_item_routes(app)

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        return Health()

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, tags=["ops"])
    def readyz(services: ServicesDep) -> Any:
        redis_ok = False
        if services.store is not None:
            try:
                redis_ok = bool(services.store.client.ping())
            except Exception:  # readiness reports Redis; it does not require it (degraded serving)
                redis_ok = False
        body = Readiness(ready=services.manager.ready, arms=services.manager.versions(), redis=redis_ok)
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics(services: ServicesDep) -> Response:
        payload, content_type = services.metrics.render()
        return Response(payload, media_type=content_type)


EVENT_TIME_DOC = (
    "Event time (ISO-8601) to stamp the served impressions with instead of the server clock. Honoured only "
    "when the server sets RECO_HONOUR_EVENT_TIME_HEADER (simulations and the demo); ignored otherwise."
)


SIM_EPOCH_DOC = (
    "Epoch of the click simulator's clock (reco.state.simclock): the online snapshots published at that tick "
    "are adopted before the request is served. Honoured only when the server sets RECO_SIMULATED_CLOCK."
)


def event_time(value: str) -> datetime:
    """The `X-Reco-Event-Time` header as a UTC datetime (naive = UTC, as event timestamps); bad -> 422."""
    try:
        ts = datetime.fromisoformat(value.strip())
    except ValueError:
        raise RequestValidationError(
            [{"loc": ("header", "x-reco-event-time"), "msg": f"not an ISO-8601 date-time: {value[:64]!r}",
              "type": "datetime_parsing"}]
        ) from None  # fmt: skip
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def recommend_response(
    services: Services, body: RecommendationRequest, ts: datetime | None, *, log_now: bool = False
) -> Response:
    """Run the pipeline for one validated request (`serving.render.recommendation`): the response, with the
    impression write as its background task. `log_now` (simulated time): the impression write starts before
    the response (and lands before it without a log executor)."""
    content, result = recommendation(services, body, ts, log_now=log_now)
    services.metrics.observe(result)
    # The impression write starts once the response is sent (the log thread would otherwise take the
    # GIL from the serialisation and the send).
    background = None if result.start_log is None else BackgroundTask(run_now, result.start_log)
    return Response(content, media_type="application/json", background=background)


def _add_admin_routes(app: FastAPI) -> None:
    """Pause/resume online learning per arm (`reco.online.control` keys; the learner checks them)."""
    admin = {
        401: {"description": "missing API key"},
        403: {"description": "invalid API key"},
        404: {"description": "unknown arm"},
        503: {"description": "Redis unavailable"},
    }

    @app.get("/v1/admin/learning", response_model=LearningStatus, responses=admin, tags=["admin"])
    def learning_status(services: ServicesDep, _: ApiKey) -> LearningStatus:
        from reco.online.control import paused_arms

        arms = list(services.manager.arms)
        paused = _redis_op(services, lambda store: paused_arms(store, arms))
        return _learning_status(services, paused)

    def _set(services: Services, arm: str, paused: bool) -> LearningStatus:
        from reco.online.control import pause, paused_arms, resume

        if arm not in services.manager.arms:
            raise ApiError(404, f"unknown arm {arm!r}; arms: {', '.join(services.manager.arms)}")
        _redis_op(services, lambda store: (pause if paused else resume)(store, arm))
        log.info("online learning of arm %s %s by the admin API", arm, "paused" if paused else "resumed")
        arms = list(services.manager.arms)
        return _learning_status(services, _redis_op(services, lambda store: paused_arms(store, arms)))

    @app.post("/v1/admin/learning/{arm}/pause", response_model=LearningStatus, responses=admin, tags=["admin"])
    def pause_learning(arm: str, services: ServicesDep, _: ApiKey) -> LearningStatus:
        return _set(services, arm, True)

    @app.post("/v1/admin/learning/{arm}/resume", response_model=LearningStatus, responses=admin, tags=["admin"])
    def resume_learning(arm: str, services: ServicesDep, _: ApiKey) -> LearningStatus:
        return _set(services, arm, False)


def _redis_op(services: Services, op: Any) -> Any:
    """Run `op(store)`; Redis unreachable -> 503 (the control functions use the raw client)."""
    import redis

    from reco.state.store import StoreUnavailable

    if services.store is None:
        raise ApiError(503, "Redis unavailable", {"Retry-After": "1"})
    try:
        return op(services.store)
    except (redis.RedisError, StoreUnavailable) as exc:
        raise ApiError(503, f"Redis unavailable: {type(exc).__name__}", {"Retry-After": "1"}) from None


def _learning_status(services: Services, paused: set[str]) -> LearningStatus:
    arms = {}
    for arm in services.manager.arms:
        model = services.manager.get(arm)
        arms[arm] = LearningArm(
            paused=arm in paused,
            model_version=None if model is None else model.version,
            online_snapshot=None if model is None else model.online_snapshot,
        )
    return LearningStatus(arms=arms, worker=os.getpid())


def _check_items(services: Services, batch: EventBatch) -> dict[str, str]:
    """Every event's item must be in the served catalogue, or upserted through the catalogue API since the
    last poll (422 otherwise); returns item -> category."""
    model = services.manager.any()
    if model is None:
        return {}
    index, row_category = model.index, model.row_category
    categories: dict[str, str] = {}
    missing: list[str] = []
    for iid in dict.fromkeys(e.item_id for e in batch.events):
        row = index.row_of(iid)
        if row is None:
            missing.append(iid)
        else:
            categories[iid] = row_category[row]
    if missing:
        categories.update(category_of_upserted(services.items, missing) or {})
    unknown = [(i, e.item_id) for i, e in enumerate(batch.events) if e.item_id not in categories]
    if unknown:
        shown = ", ".join(f"events[{i}].item_id={iid!r}" for i, iid in unknown[:5])
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise ApiError(422, f"unknown item ids: {shown}{more}")
    return categories


async def run_now(fn: Callable[[], Any]) -> None:
    """A background task on the event loop (a plain function would be run through the thread pool)."""
    fn()
