"""`reco demo`, `reco up`, `reco down`, `reco status`: the local stack on one machine.

Everything lives under RECO_HOME (default `.reco/`): pid files in `run/`, logs in `logs/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


def _fail(message: str, code: int = 1) -> None:
    """One red line on stderr, no traceback."""
    _console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _home() -> Path:
    from reco.settings import RecoSettings

    return RecoSettings().home


def demo(
    scale: str | None = typer.Option(None, "--scale", help="small (CI, minutes) or full; default $DEMO_SCALE or full"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the summary as JSON here"),
) -> None:
    """Fetch MovieLens-100k, train two arms through Airflow, serve them, replay simulated traffic over HTTP,
    run the A/B report and print a summary. Stops every process it started."""
    import json

    from reco.devstack.demo import DemoError, run_demo, scale_named

    try:
        chosen = scale_named(scale)
    except ValueError as e:
        _fail(str(e), code=2)
    console = _console()
    console.print(f"[bold]reco demo[/bold] ({chosen.name} scale) in {_home().resolve()}")
    try:
        summary = run_demo(_home(), chosen, console=console)
    except DemoError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; every process the demo started was stopped", code=130)
    print_summary(console, summary)
    if json_out is not None:
        json_out.write_text(json.dumps(summary.to_dict(), indent=2, default=str))


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.2%}" if pct else f"{x:.4g}"
    return str(x)


def print_summary(console: Any, summary: Any) -> None:
    """The demo's result as rich tables."""
    from rich.table import Table

    if summary.story:
        console.print("[bold]What is compared[/bold]")
        for line in summary.story:
            console.print(f"  • {line}", highlight=False, soft_wrap=True)
    arms = Table(title="Arms", title_justify="left")
    for col in ("arm", "alias", "model version", "users", "impressions", "clicks", "CTR"):
        arms.add_column(col, justify="right" if col not in ("arm", "alias") else "left")
    for a in summary.arms:
        arms.add_row(
            a.arm, a.alias, _fmt(a.version), _fmt(a.users), _fmt(a.impressions), _fmt(a.clicks), _fmt(a.ctr, pct=True)
        )
    console.print(arms)
    online = Table(title="Online learning (the snapshot each arm served at the end)", title_justify="left")
    for col in ("arm", "online snapshot", "updates in it", "refused", "holdout log-loss", "base log-loss"):
        online.add_column(col, justify="left" if col == "arm" else "right")
    for a in summary.arms:
        online.add_row(a.arm, _fmt(a.online_snapshot), _fmt(a.online_updates), _fmt(a.online_refused),
                       _fmt(a.holdout_logloss), _fmt(a.base_logloss))  # fmt: skip
    console.print(online)
    console.print(f"champion: version {_fmt(summary.champion)}")
    comp = summary.comparison or {}
    if comp:
        lo, hi = comp.get("relative_ci") or (None, None)
        console.print(
            f"lift of {comp['arm']} over {comp['control']} (CTR per user, delta method): "
            f"{_fmt(comp.get('relative_lift'), pct=True)} (95% CI {_fmt(lo, pct=True)} .. {_fmt(hi, pct=True)}), "
            f"p-value {_fmt(comp.get('p_value'))}, always-valid p-value {_fmt(comp.get('p_value_sequential'))}"
        )
    decision = summary.decision or "-"
    console.print(
        f"decision: [bold]{decision}[/bold]" + (f" ({'; '.join(summary.reasons)})" if summary.reasons else "")
    )
    if summary.why:
        console.print("[bold]Why this verdict[/bold]")
        for line in summary.why:
            console.print(f"  • {line}", highlight=False, soft_wrap=True)
    console.print(f"report: {summary.report_html or '-'}  (JSON: {summary.report_json or '-'})")
    for name, url in summary.urls.items():
        console.print(f"{name}: {url}")
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in summary.timings_s.items())
    console.print(f"[dim]took {summary.total_s:.0f} s ({steps})[/dim]")


def up(
    mlflow_port: int = typer.Option(5000, min=1, max=65535, help="MLflow UI / tracking server port"),
    airflow_port: int = typer.Option(8080, min=1, max=65535, help="Airflow UI / REST API port"),
    api_port: int = typer.Option(8000, min=1, max=65535, help="reco API port"),
    api: bool = typer.Option(True, "--api/--no-api", help="start the reco API"),
    learner: bool = typer.Option(True, "--learner/--no-learner", help="start the online learner"),
    profile: str = typer.Option(
        "local", help="local (embedded Redis, SQLite, LocalExecutor) or production (real services, Celery)"
    ),
) -> None:
    """Start the long-running local stack (Redis, MLflow, Airflow, API, learner) on 127.0.0.1 and return.

    `--profile production`: Airflow with the CeleryExecutor and MLflow on PostgreSQL, the API with 2 workers,
    the learner and the stream sink, configured only by the environment / `.env` (docs/operations.md)."""
    from reco.devstack import local_stack as ls
    from reco.settings import RecoSettings
    from reco.state.embedded_redis import EmbeddedRedisError

    settings = RecoSettings()
    console = _console()
    if profile not in ("local", "production"):
        _fail(f"unknown profile {profile!r}: use local or production", code=2)
    if profile == "production":
        _up_production(settings.home, console)
        return
    try:
        info = ls.up(
            settings.home,
            redis_url=settings.redis_url,
            tracking_uri=settings.mlflow_tracking_uri,
            mlflow_port=mlflow_port,
            airflow_port=airflow_port,
            api_port=api_port,
            with_api=api,
            with_learner=learner,
            say=lambda m: console.print(f"[cyan]•[/cyan] {m}", highlight=False),
        )
    except (ls.StackError, ls.AirflowError, EmbeddedRedisError) as e:
        _fail(f"{e}\n(what this command started was stopped; `reco down` stops the rest)")
    except KeyboardInterrupt:
        _fail("interrupted; what this command started was stopped", code=130)
    console.print("[bold green]local stack is up[/bold green]")
    console.print(f"MLflow UI:   {info.mlflow_url}")
    console.print(f"Airflow UI:  {info.airflow_url}  login {info.airflow_user} / {info.airflow_password}")
    console.print(f"             DAGs unpaused: {', '.join(info.unpaused)}")
    if info.api_url:
        console.print(f"API:         {info.api_url}/docs  (X-API-Key: {info.api_key})")
    if info.learner:
        console.print(f"learner:     {info.learner}")
    console.print(f"Redis:       {info.redis_url}")
    console.print(f"logs:        {info.logs}")
    console.print("stop with:   make down  (or reco down)")


def _up_production(home: Path, console: Any) -> None:
    from reco.devstack import local_stack as ls
    from reco.devstack import production

    try:
        info = production.up(home, say=lambda m: console.print(f"[cyan]•[/cyan] {m}", highlight=False))
    except (ls.StackError, ls.AirflowError) as e:
        _fail(f"{e}\n(what this command started was stopped; `reco down` stops the rest)")
    except KeyboardInterrupt:
        _fail("interrupted; what this command started was stopped", code=130)
    console.print("[bold green]production profile is up[/bold green] (CeleryExecutor, PostgreSQL)")
    console.print(f"MLflow UI:   {info.mlflow_url}")
    console.print(f"Airflow UI:  {info.airflow_url}  login {info.airflow_user} (AIRFLOW_ADMIN_PASSWORD)")
    console.print(f"API:         {info.api_url}/docs  (X-API-Key from RECO_API_KEYS)")
    console.print(f"logs:        {info.logs}")
    console.print("stop with:   reco down")


def down() -> None:
    """Stop every process of the local stack (and its embedded Redis)."""
    from reco.devstack import local_stack as ls

    stopped = ls.down(_home())
    _console().print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def status() -> None:
    """Show the local stack's processes: pid, health, port, log file."""
    from rich.table import Table

    from reco.devstack import local_stack as ls

    table = Table(title=f"local stack in {_home().resolve()}", title_justify="left")
    for col in ("service", "pid", "state", "url / port", "log"):
        table.add_column(col, overflow="fold")
    states = ls.LocalStack(_home()).status()
    for s in states:
        state = (
            "stopped (stale pid file removed)"
            if not s.running
            else {True: "healthy", False: "unhealthy"}.get(s.healthy, "running")
        )
        table.add_row(s.name, str(s.pid or "-"), state, s.health_url or str(s.port or "-"), str(s.log))
    console = _console()
    if states:
        console.print(table)
    else:
        console.print("nothing is running (start with `make up`)")
