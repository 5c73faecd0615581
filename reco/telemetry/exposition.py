"""A `/metrics` endpoint for processes that are not web servers (the learner, the sink).

Metrics come from a render function called per scrape, so the process keeps its figures in its own
objects and nothing is copied on the hot path. The server runs in a daemon thread.

>>> server = serve_metrics(0, lambda: format_flat({'reco_x_total': 3, 'reco_y{arm="a"}': 0.5}))
>>> import urllib.request
>>> body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics").read().decode()
>>> print(body.strip())
reco_x_total 3.0
reco_y{arm="a"} 0.5
>>> server.shutdown()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def format_flat(metrics: Mapping[str, float]) -> str:
    """Prometheus text format of flat `name{labels}` -> value pairs, sorted by name."""
    return "".join(f"{k} {float(v)!r}\n" for k, v in sorted(metrics.items()))


def serve_metrics(port: int, render: Callable[[], str], host: str = "0.0.0.0") -> ThreadingHTTPServer:  # nosec B104
    """Serve `render()` at GET /metrics (and 200 "ok" at /healthz) on `port` (0 = any free port). All
    interfaces by default: in a container the scraper comes from another one (the port is not published)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/healthz":
                self._reply(200, b"ok\n")
                return
            if self.path.split("?")[0] != "/metrics":
                self._reply(404, b"not found\n")
                return
            try:
                body = render().encode()
            except Exception as exc:  # a failed scrape is a 500 and a log line, never a dead thread
                log.warning("metrics render failed: %s", exc)
                self._reply(500, f"metrics unavailable: {exc}\n".encode())
                return
            self._reply(200, body)

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
