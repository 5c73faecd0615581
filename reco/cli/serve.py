"""`reco serve`: run the personalization API (uvicorn). Settings come from the environment (`RECO_*`,
see serving/settings.py and docs/api.md); the flags override host, port and worker count."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    host: str | None = typer.Option(None, help="bind address (default RECO_HOST or 127.0.0.1)"),
    port: int | None = typer.Option(None, min=1, max=65535, help="port (default RECO_PORT or 8000)"),
    workers: int | None = typer.Option(None, min=1, max=64, help="worker processes (default RECO_WORKERS or 1)"),
) -> None:
    """Serve /v1/recommendations, /v1/events, /healthz, /readyz, /metrics and the OpenAPI docs."""
    from serving.settings import Settings

    settings = Settings()  # a bad value: one line and exit 2 (reco.cli.main)
    # Keep the allocator from returning the forward's buffers to the OS after every request (NOTES.md);
    # set before uvicorn starts so worker processes inherit it.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "16777216")
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "67108864")
    # BLAS thread pools busy-wait on a small, shared machine; the similarity products are tiny.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    n_workers = workers or settings.workers
    if n_workers > 1:
        _prometheus_multiprocess_dir(settings.home / "run" / "prometheus")
    import uvicorn

    from reco.telemetry.logs import dict_config

    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=n_workers,
        log_level="info",
        log_config=dict_config(settings.log_format),  # JSON lines with request_id under RECO_LOG_FORMAT=json
        access_log=False,  # the app's own access log (RECO_ACCESS_LOG) names the route and the request id
    )


def _prometheus_multiprocess_dir(path: Path) -> None:
    """An empty folder for prometheus_client's multiprocess mode, named in the environment the workers
    inherit (stale files of an earlier run would add old counts to the new ones)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
