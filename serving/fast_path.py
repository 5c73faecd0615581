"""`RecommendFastPath`: valid recommendation requests answered past FastAPI's routing."""

from __future__ import annotations

import asyncio

from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.errors import ApiError, api_error_response, unexpected_error_response
from serving.middleware import BODY, read_body, replay_body
from serving.render import recommendation
from serving.schemas import RecommendationRequest
from serving.services import Services

JSON = (b"content-type", b"application/json")


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
        body = scope.get(BODY)  # BodyLimit's read, replayed by its `receive`, which stays untouched here
        if body is None:
            body = await read_body(receive)
            if body is None:  # the client went away: nothing to answer
                return
            receive = replay_body(body, receive)
        services = getattr(scope["app"].state, "services", None)
        request = None if services is None else self._parse(scope, body, services)
        if request is None:
            await self.app(scope, receive, send)
            return
        # One turn of the event loop before the pipeline, which holds the loop for its whole run: requests are
        # then served in the order they were read. Without it uvloop served some connections' requests ahead
        # of others' for hundreds of requests in a row: with 4 clients on 1 worker two clients waited ~2x as
        # long as the other two (p50 14-16 against 6-7 ms), p99/p50 2.5-3.2; with it every client's p50 was
        # ~10 ms and p99/p50 1.7, at the same throughput (docs/benchmarks.md, "Serving on realistic traffic").
        await asyncio.sleep(0)
        try:
            content, result = recommendation(services, request, None)
        except ApiError as exc:  # the app's exception handlers are behind this layer: the same answers here
            await api_error_response(exc)(scope, receive, send)
            return
        except Exception:
            await unexpected_error_response("POST", self.PATH)(scope, receive, send)
            return
        # What the route's `Response` sends (same headers, same order), without building it and its
        # background task. The pipeline's metrics are recorded once the body is sent (they are no part of the
        # answer: ~5 us less before it), then the impression write starts, as the route's does.
        headers = [(b"content-length", b"%d" % len(content)), JSON]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})
        services.metrics.observe(result)
        if result.start_log is not None:
            result.start_log()

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
