"""What stands in front of the routes: the body size limit (`BodyLimit`, pure ASGI) and the API key
check (`require_api_key`, a dependency), plus the body helpers the ASGI layers share."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import ApiError
from serving.services import ServicesDep


async def require_api_key(services: ServicesDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
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


ApiKey = Annotated[None, Depends(require_api_key)]


#: The scope key under which `BodyLimit` leaves the body it read, so that the layer behind it
#: (`RecommendFastPath`) need not read it again through the replaying `receive`.
BODY = "reco.body"


class BodyLimit:
    """Pure ASGI middleware: 413 for bodies over `max_bytes`.

    A declared Content-Length over the limit is refused before anything is read. Otherwise the body is
    read here, at most `max_bytes` plus one chunk: over the limit -> the 413 is sent from here (an error
    raised inside the app's `receive` would be turned into FastAPI's 400 "error parsing the body"); within
    it -> the app gets the buffered body as one message, and the body itself in `scope[BODY]`. The app
    reads whole JSON bodies anyway, so buffering costs no extra memory.
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
        body = scope[BODY] = b"".join(chunks)
        await self.app(scope, replay_body(body, receive), send)

    async def _reject(self, send: Send) -> None:
        resp = JSONResponse({"detail": f"request body exceeds {self.max_bytes} bytes"}, status_code=413)
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body (None: the client went away first)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Receive:
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
