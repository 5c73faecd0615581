"""Errors as the API answers them: `ApiError` (a status and a message, never a traceback) and the
handlers that give every failure its documented body (422 in FastAPI's shape plus a one-line `message`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status and a message for the client (never a traceback)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR:
            # FastAPI's undocumented 400 for a body that json.loads cannot even decode (not UTF-8/16/32;
            # malformed JSON is already a 422): the same documented 422 as any other unreadable body.
            what = "not valid UTF-8 JSON" if isinstance(exc.__cause__, UnicodeDecodeError) else "not readable as JSON"
            return validation_response([{"loc": ("body",), "msg": f"body is {what}", "type": "json_invalid"}])
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_error_response(request.method, request.url.path)


def api_error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


def unexpected_error_response(method: str, path: str) -> JSONResponse:
    """Logged with its traceback on the server (call it while handling the exception); the client gets no
    internals."""
    log.exception("unhandled error on %s %s", method, path)
    return JSONResponse({"detail": "internal error"}, status_code=500)


BODY_PARSE_ERROR = "There was an error parsing the body"  # fastapi.routing's 400 detail


def validation_response(raw: Sequence[Any]) -> JSONResponse:
    """422 in FastAPI's documented shape (`detail`: list of loc/msg/type) plus a one-line `message`."""
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in raw[:20]
    ]
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
    return JSONResponse({"detail": errors, "message": f"invalid request: {summary}"}, status_code=422)
