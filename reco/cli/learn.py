"""`reco learn`: the online learner (single writer of online weights); `reco simulate`: the click simulator
against a running API."""

from __future__ import annotations

import logging
import math
import signal
import time
from datetime import date
from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    app.command("learn")(learn)
    app.command("simulate")(simulate)


def _fail(msg: str) -> typer.Exit:
    typer.secho(f"error: {msg}", fg="red", err=True)
    return typer.Exit(2)


def tracking_problem(uri: str, timeout_s: float = 3.0) -> str | None:
    """Why an HTTP MLflow tracking server cannot be reached (None when it answers, or for a local URI).

    Asked up front because the MLflow client retries for minutes and then reports a missing server as a
    missing model version.

    >>> tracking_problem("sqlite:///tmp/x.db") is None
    True
    >>> tracking_problem("http://127.0.0.1:1", timeout_s=1.0).startswith("MLflow tracking server unreachable")
    True
    """
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError:  # it answered (an auth proxy, an old server without /health): reachable
        return None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"MLflow tracking server unreachable at {uri}: {reason}"


def _check(consumer: str) -> int:
    """0 when the learner `consumer` beat within the heartbeat TTL, else 1 (with the reason)."""
    from reco.online.control import last_beat
    from reco.settings import RecoSettings
    from reco.state.store import connect

    settings = RecoSettings()
    if not settings.redis_url:
        typer.secho("error: --check needs RECO_REDIS_URL (the learner's Redis)", fg="red", err=True)
        return 2
    try:
        when = last_beat(connect(settings.redis_url, socket_timeout=2.0), settings.redis_prefix, consumer)
    except Exception as exc:  # any Redis failure means "not healthy", said in one line
        typer.echo(f"unhealthy: redis unavailable ({exc})")
        return 1
    if when is None:
        typer.echo(f"unhealthy: learner {consumer!r} has not polled in the last minute")
        return 1
    typer.echo(f"healthy: learner {consumer!r} polled {time.time() - when:.0f} s ago")
    return 0


def learn(
    check: bool = typer.Option(
        False, "--check", help="healthcheck: exit 0 when this consumer's learner polled in the last minute"
    ),
    arms: str | None = typer.Option(
        None, help="comma-separated arms to learn (default: every arm of the experiment config)"
    ),
    window_s: float = typer.Option(1800.0, min=1.0, help="reward window in event time (seconds)"),
    update_every: int = typer.Option(512, min=1, help="labelled examples per update (per arm)"),
    batch_size: int = typer.Option(512, min=1, help="newest fresh examples in each mini-batch"),
    replay: int = typer.Option(128, min=0, help="replay-buffer rows added to each mini-batch"),
    lr: float = typer.Option(1e-3, min=0.0, help="Adam learning rate"),
    grad_clip: float = typer.Option(1.0, min=0.0, help="gradient-norm clip"),
    ips: bool = typer.Option(False, help="inverse-propensity weighting with the logged propensities"),
    ips_clip: float = typer.Option(10.0, min=1.0, help="largest IPS weight"),
    margin: float = typer.Option(
        0.01, help="holdout log-loss margin: an update worse than the last good snapshot (or the base) is refused"
    ),
    patience: int = typer.Option(
        3, min=1, help="consecutive checks with the last good snapshot worse than the base before going back to it"
    ),
    holdout_fraction: float = typer.Option(0.1, min=0.0, max=0.9, help="labelled examples kept out as the holdout"),
    min_holdout: int = typer.Option(200, min=1, help="holdout rows needed before any update can be published"),
    publish_every_s: float = typer.Option(1.0, min=0.0, help="minimum seconds between publications"),
    checkpoint_every_s: float = typer.Option(300.0, min=1.0, help="seconds between MLflow checkpoints"),
    no_checkpoint: bool = typer.Option(False, "--no-checkpoint", help="do not checkpoint to MLflow"),
    metrics_file: Path | None = typer.Option(None, help="Prometheus text file (default <home>/metrics/online.prom)"),
    metrics_port: int | None = typer.Option(None, min=0, max=65535, help="serve Prometheus /metrics on this port"),
    consumer: str = typer.Option("learner-1", help="consumer name in the group (stable across restarts)"),
    threads: int = typer.Option(1, min=1, max=64, help="torch threads (1: measured fastest on 2 shared cores)"),
    max_seconds: float | None = typer.Option(None, min=1.0, help="stop after this many seconds (bounded run)"),
    base_poll_s: float = typer.Option(30.0, min=1.0, help="seconds between checks of each arm's registry alias"),
    seed: int = typer.Option(0, help="seed of the holdout split, replay sampling (and dropout on simulated time)"),
    lease_ttl_s: float = typer.Option(
        10.0, min=0.5, help="lease lifetime: a standby takes over at most this long (+1/3) after the writer dies"
    ),
    claim_idle_s: float | None = typer.Option(
        None, min=0.1, help="claim another consumer's pending entries only after this idle time (default: lease TTL)"
    ),
) -> None:
    """Consume the event stream, learn online per arm under guardrails, publish weight snapshots.

    One writer per arm: a second `reco learn` on the same arms waits as a standby and takes over when the
    first stops or dies (its lease expires after --lease-ttl-s)."""
    if check:
        raise typer.Exit(_check(consumer))
    import torch
    from redis import RedisError

    from reco.artifacts.registry import RegistryError, client_for, load_bundle
    from reco.experiments.assignment import load_config
    from reco.online import ArmLearner, OnlineLearner, from_bundle
    from reco.online.handoff import MlflowCheckpointer, RegistryBases
    from reco.settings import RecoSettings
    from reco.state.embedded_redis import resolve_url
    from reco.state.store import RedisStore, StoreUnavailable, connect
    from reco.telemetry import logs

    logs.configure(RecoSettings().log_format)
    torch.set_num_threads(threads)
    settings = RecoSettings()
    try:
        config = load_config(settings.experiments_path)
        aliases = config.aliases
    except Exception as exc:  # ConfigError and friends: a clear message, no traceback
        raise _fail(str(exc)) from None
    # Online learning is part of an arm's policy: an arm with `learning: frozen` is not learned (the phase
    # recorded at its promotion says so too).
    frozen = {a.name for e in config.experiments for a in e.arms if a.learning == "frozen"}
    names = [a.strip() for a in arms.split(",") if a.strip()] if arms else [a for a in aliases if a not in frozen]
    unknown = [a for a in names if a not in aliases]
    if unknown:
        raise _fail(f"unknown arm(s) {unknown}; the experiment config has {sorted(aliases)}")
    if (problem := tracking_problem(settings.tracking_uri)) is not None:
        raise _fail(problem)
    client = client_for(settings.tracking_uri)

    def make_learner(bundle, version: str) -> ArmLearner:
        return ArmLearner(
            from_bundle(bundle, version), lr=lr, update_every=update_every, batch_size=batch_size,
            replay=replay, grad_clip=grad_clip, ips=ips, ips_clip=ips_clip, margin=margin, patience=patience,
            holdout_fraction=holdout_fraction, min_holdout=min_holdout,
            max_session=bundle.model.config.max_session_len, seed=seed,
        )  # fmt: skip

    learners = {}
    for arm in names:
        try:
            bundle, mv = load_bundle(client, settings.registered_model, aliases[arm])
        except RegistryError as exc:
            raise _fail(f"arm {arm!r}: {exc} (train and promote a model first)") from None
        learners[arm] = make_learner(bundle, str(mv.version))
        typer.echo(f"arm {arm}: base version {mv.version} ({aliases[arm]})")
    url, _server = resolve_url(settings.redis_url, settings.home)
    store = RedisStore(connect(url, socket_timeout=5.0), settings.redis_prefix)
    metrics = metrics_file or settings.home / "metrics" / "online.prom"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    # Simulated time (the demo, tests): publications only at the simulator's ticks, no wall-clock checkpoint.
    simulated = settings.simulated_clock
    if simulated:
        publish_every_s, no_checkpoint = math.inf, True
        typer.echo("simulated clock: learning and publishing at the simulator's ticks only")
    learner = OnlineLearner(
        store, learners, consumer=consumer, window_s=window_s, publish_every_s=publish_every_s,
        checkpoint=None if no_checkpoint else MlflowCheckpointer(settings.tracking_uri, settings.registered_model),
        checkpoint_every_s=checkpoint_every_s, metrics_path=str(metrics), base_poll_s=base_poll_s,
        rebase=RegistryBases(settings.tracking_uri, settings.registered_model, aliases, make_learner),
        lease_ttl_ms=int(lease_ttl_s * 1000), claim_idle_ms=int((claim_idle_s or lease_ttl_s) * 1000),
    )  # fmt: skip
    if not learner.hold_leases():
        holders = learner.lease_holders()
        typer.echo(f"standby: another learner writes these arms ({holders}); taking over when it stops")
    if metrics_port is not None:
        _serve_metrics(metrics_port, learner)
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(now=True))
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    try:
        stop = lambda: stopping["now"] or (deadline is not None and time.monotonic() > deadline)  # noqa: E731
        if simulated:
            from reco.online.simulated import run_simulated
            from reco.state.simclock import SimClock

            run_simulated(learner, SimClock(store.client, settings.redis_prefix, store.stream_key), stop, seed=seed)
        else:
            # No separate start(): run() starts (and restarts, after a lost Redis connection) by itself.
            learner.run(stop=stop)
    except KeyboardInterrupt:
        try:
            learner.maybe_publish(force=True)
        except (StoreUnavailable, RedisError) as exc:
            raise _fail(f"redis unavailable at {url}: {exc}") from None
    typer.echo(f"stopped: {learner.stats.read} events read, {learner.stats.publications} publications")


def _serve_metrics(port: int, learner: Any) -> None:
    """/metrics: the learner's figures plus its backlog in the stream (undelivered + unacknowledged)."""
    from reco.telemetry.exposition import format_flat, serve_metrics

    def render() -> str:
        figures = dict(learner.metrics())
        try:
            lag = learner.lag()
            figures["reco_learner_lag_entries"] = lag["lag"] + lag["pending"]
        except Exception:  # Redis away: the other figures still go out; the lag alert sees no sample
            logging.getLogger(__name__).warning("learner lag unavailable")
        return format_flat(figures)

    serve_metrics(port, render)


def simulate(
    api_url: str = typer.Option("http://127.0.0.1:8000", help="base URL of the API"),
    api_key: str | None = typer.Option(None, envvar="RECO_SIM_API_KEY", help="X-API-Key for /v1/events"),
    users: int = typer.Option(100, min=1, help="simulated users"),
    days: int = typer.Option(3, min=1, help="simulated days (compressed)"),
    start_day: str = typer.Option("1998-04-23", help="first simulated day (YYYY-MM-DD)"),
    sessions_per_user_day: float = typer.Option(0.5, min=0.0, help="sessions per user per day"),
    seed: int = typer.Option(0, help="seed of users, sessions and clicks"),
    data_dir: Path | None = typer.Option(None, help="MovieLens-100k files (default RECO_DATA_DIR)"),
) -> None:
    """Simulated users browse the API over HTTP; prints CTR per arm."""
    from reco.settings import RecoSettings
    from reco.sim import replay
    from reco.sim.client import ApiError

    try:
        first = date.fromisoformat(start_day)
    except ValueError:
        raise _fail(f"--start-day must be YYYY-MM-DD, got {start_day!r}") from None
    directory = data_dir or RecoSettings().movielens_dir
    try:
        stats = replay(api_url=api_url, data_dir=directory, users=users, days=days, start_day=first,
                       sessions_per_user_day=sessions_per_user_day, seed=seed, api_key=api_key)  # fmt: skip
    except (FileNotFoundError, ApiError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot reach the API at {api_url}: {exc}") from None
    for arm, t in sorted(stats.arms.items()):
        typer.echo(f"{arm}: {t.requests} requests, {t.impressions} impressions, {t.clicks} clicks, CTR {t.ctr:.4f}")
