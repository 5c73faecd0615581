"""HTTP observability of the API: per-route request counts and latency histograms (by method and status),
the request id in every log line, and an optional access log (`RECO_ACCESS_LOG`).

`HttpObservability` is the outermost pure ASGI middleware, so it sees every answer: the fast path's,
FastAPI's routes', BodyLimit's 413 and the error handlers'. The route label is the route's template
(`/v1/admin/learning/{arm}/pause`), never the raw path, so the label set stays bounded; unmatched paths
count as `other`.
"""

from __future__ import annotations

import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reco.ranking.request import new_request_id
from reco.telemetry.logs import request_id
from serving.errors import unexpected_error_response

access = logging.getLogger("reco.access")

#: Paths answered outside FastAPI's routing (the fast path) or before it (BodyLimit): named as they are.
KNOWN_PATHS = frozenset({"/v1/recommendations", "/v1/events", "/healthz", "/readyz", "/metrics"})
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def route_of(scope: Scope) -> str:
    """The route template FastAPI matched, else the path when it is a known one, else `other`.

    >>> route_of({"path": "/v1/events"}), route_of({"path": "/wp-login.php"})
    ('/v1/events', 'other')
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        return template
    path = scope.get("path", "")
    return path if path in KNOWN_PATHS else "other"


def incoming_request_id(scope: Scope) -> str:
    """The caller's X-Request-ID when it is a plain token (the proxy sets one), else a new one.

    >>> incoming_request_id({"headers": [(b"x-request-id", b"abc-1")]})
    'abc-1'
    >>> len(incoming_request_id({"headers": [(b"x-request-id", b"bad value\\n")]}))
    32
    """
    for name, value in scope.get("headers") or ():
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SAFE_ID.match(text):
                return text
            break
    # The pipeline's ids (a per-process random prefix and a counter): as unique as a uuid4 and in the same
    # 32-hex form, without uuid4's os.urandom call and UUID object (~3 us) per request.
    return new_request_id()


class HttpObservability:
    def __init__(self, app: ASGIApp, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_request_id(scope)
        token = request_id.set(rid)
        status = 0  # the answer's, once it starts
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if status:  # the answer has started: nothing else can be sent
                raise
            # An error no handler took: the documented 500, answered here so that it carries the request id (its
            # header, and the log line with the traceback); Starlette's last-resort layer, outside, would not.
            error = unexpected_error_response(scope.get("method", ""), scope.get("path", ""))
            await error(scope, receive, send_with_id)
        finally:
            status = status or 500  # the app died before answering, and so did the 500
            elapsed = time.perf_counter() - started
            route, method = route_of(scope), scope.get("method", "")
            services = getattr(getattr(scope.get("app"), "state", None), "services", None)
            if services is not None:
                services.metrics.http_observed(route, method, status, elapsed)
            if self.access_log:
                access.info(
                    "%s %s %d %.1f ms", method, route, status, elapsed * 1000,
                    extra={"method": method, "route": route, "status": status, "ms": round(elapsed * 1000, 3)},
                )  # fmt: skip
            request_id.reset(token)
