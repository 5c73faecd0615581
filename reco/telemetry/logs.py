"""Structured logs: one JSON object per line, with the request id of the request being served.

`configure("json")` (RECO_LOG_FORMAT=json, the compose stack) or `configure("text")` (default, local).
The API sets `request_id` (a ContextVar) per request, so every line logged while serving it, from any
module, carries it.

>>> import io, json
>>> stream = io.StringIO()
>>> configure("json", stream=stream, logger_name="reco.doctest")
>>> token = request_id.set("r-1")
>>> logging.getLogger("reco.doctest").info("served %d items", 3, extra={"route": "/v1/recommendations"})
>>> request_id.reset(token)
>>> line = json.loads(stream.getvalue())
>>> line["message"], line["request_id"], line["route"], line["level"]
('served 3 items', 'r-1', '/v1/recommendations', 'info')
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import IO, Any

#: The id of the request being served (the X-Request-ID header, or one the API made up).
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has: anything else was passed in `extra=` and goes into the JSON object.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class _TextWithRequestId(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = request_id.get()
        return f"{text} request_id={rid}" if rid else text


_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")


def dict_config(fmt: str = "text", level: str = "INFO") -> dict[str, Any]:
    """The same setup as a `logging.config.dictConfig` dict (uvicorn applies it in every worker process).

    >>> dict_config("json")["formatters"]["default"]["()"]
    'reco.telemetry.logs.JsonFormatter'
    """
    formatter = {"()": f"{__name__}.{'JsonFormatter' if fmt == 'json' else '_TextWithRequestId'}"}
    if fmt != "json":
        formatter["fmt"] = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["default"], "level": level},
        # uvicorn's loggers propagate to root (one format); its own access log stays off (RECO_ACCESS_LOG).
        "loggers": {name: {"handlers": [], "propagate": True} for name in _UVICORN},
    }


def configure(
    fmt: str = "text", level: int | str = logging.INFO, *, stream: IO[str] | None = None, logger_name: str = ""
) -> None:
    """Send `logger_name`'s records (root by default) to `stream` (stderr) as JSON lines or plain text."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextWithRequestId("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(logger_name)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    if logger_name:
        logger.propagate = False
