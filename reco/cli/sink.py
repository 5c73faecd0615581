"""`reco sink`: the long-running stream -> lake sink (compose service `sink`), with /metrics and a
heartbeat for its healthcheck (`reco sink --check`)."""

from __future__ import annotations

import contextlib
import signal
import time

import typer


def register(app: typer.Typer) -> None:
    app.command("sink")(sink)


def _fail(msg: str) -> typer.Exit:
    typer.secho(f"error: {msg}", fg="red", err=True)
    return typer.Exit(2)


def sink(
    check: bool = typer.Option(False, "--check", help="healthcheck: exit 0 when this sink drained in the last minute"),
    consumer: str = typer.Option("sink-service", help="consumer name in the group (stable across restarts)"),
    group: str = typer.Option("lake-sink", help="consumer group (the training DAG's ingest task uses the same)"),
    batch: int = typer.Option(5000, min=1, help="stream entries per read"),
    block_ms: int = typer.Option(1000, min=1, help="how long one read waits for new entries"),
    metrics_port: int | None = typer.Option(None, min=0, max=65535, help="serve Prometheus /metrics on this port"),
    max_seconds: float | None = typer.Option(None, min=0.1, help="stop after this many seconds (bounded run)"),
) -> None:
    """Drain the event stream into the lake (Parquet per UTC day) until stopped; exactly-once storage."""
    from reco.data.lake import EventLake
    from reco.settings import RecoSettings
    from reco.state.embedded_redis import resolve_url
    from reco.state.sink_service import SinkTotals, last_beat, run_sink
    from reco.state.store import RedisStore, connect
    from reco.telemetry import logs
    from reco.telemetry.exposition import format_flat, serve_metrics

    settings = RecoSettings()
    if check:
        if not settings.redis_url:
            raise _fail("--check needs RECO_REDIS_URL (the sink's Redis)")
        try:
            when = last_beat(connect(settings.redis_url, socket_timeout=2.0), settings.redis_prefix, consumer)
        except Exception as exc:  # any Redis failure means "not healthy", said in one line
            typer.echo(f"unhealthy: redis unavailable ({exc})")
            raise typer.Exit(1) from None
        if when is None:
            typer.echo(f"unhealthy: sink {consumer!r} has not drained in the last minute")
            raise typer.Exit(1)
        typer.echo(f"healthy: sink {consumer!r} drained {time.time() - when:.0f} s ago")
        return
    logs.configure(settings.log_format)
    url, _server = resolve_url(settings.redis_url, settings.home)
    store = RedisStore(connect(url, socket_timeout=max(5.0, block_ms / 1000 + 2)), settings.redis_prefix)
    totals = SinkTotals()
    if metrics_port is not None:
        serve_metrics(metrics_port, lambda: format_flat(totals.metrics()))
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(now=True))
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    typer.echo(f"sink: {url.split('@')[-1]} stream -> {settings.lake_dir} (group {group}, consumer {consumer})")
    with contextlib.suppress(KeyboardInterrupt):
        run_sink(
            store, EventLake(settings.lake_dir), group=group, consumer=consumer, batch=batch, block_ms=block_ms,
            totals=totals, stop=lambda: stopping["now"] or (deadline is not None and time.monotonic() > deadline),
        )  # fmt: skip
    typer.echo(f"stopped: {totals.read} events read, {totals.appended} new in the lake, {totals.errors} errors")
