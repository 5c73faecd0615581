"""`reco ab report`: the A/B significance report from logged events."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import typer

ab_app = typer.Typer(no_args_is_help=True, help="A/B experiments: significance reports")


def _fail(message: str) -> None:
    """One red line on stderr and exit code 2 (bad input), no traceback."""
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _parse_date(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        _fail(f"{name} must be a date YYYY-MM-DD, got {value!r}")
    return None


def parse_traffic(items: list[str] | None) -> dict[str, float] | None:
    """["control=0.5", "b=0.5"] -> {"control": 0.5, "b": 0.5}; ValueError on a malformed item.

    >>> parse_traffic(["control=0.5", "b=0.5"])
    {'control': 0.5, 'b': 0.5}
    """
    from reco.experiments.report_config import parse_assignments

    return parse_assignments(
        items, lambda arm, share: bool(arm) and share > 0, "--traffic expects ARM=SHARE with a positive share"
    )


@ab_app.command("report")
def report(
    events: Path = typer.Option(..., "--events", help="lake directory, Parquet file or CSV file of events"),
    control: str = typer.Option(..., "--control", help="control arm"),
    start: str | None = typer.Option(None, "--start", help="first day of the experiment (YYYY-MM-DD)"),
    end: str | None = typer.Option(None, "--end", help="last day to include (YYYY-MM-DD)"),
    fmt: str = typer.Option("json", "--format", help="json or html"),
    out: Path | None = typer.Option(None, "--out", help="write here instead of stdout"),
    traffic: list[str] | None = typer.Option(None, "--traffic", help="configured share, ARM=SHARE (repeat)"),
    experiment: str | None = typer.Option(
        None, "--experiment", help="experiment name (its traffic shares come from --experiments); default: the first"
    ),
    experiments: Path | None = typer.Option(
        None, "--experiments", help="experiment config YAML for the traffic shares; default: the built-in config"
    ),
    min_days: int = typer.Option(14, "--min-days", help="days with data in the phase before a ship/stop decision"),
    planned_days: int = typer.Option(28, "--planned-days", help="days with data after which 'not significant' stops"),
    guardrail: list[str] | None = typer.Option(
        None, "--guardrail", help="non-inferiority margin, METRIC=MARGIN (repeat; default: the experiment config's)"
    ),
    phase: int | None = typer.Option(None, "--phase", help="phase to analyse (default 1)"),
    pre_period_days: int = typer.Option(14, "--pre-period-days", help="CUPED pre-exposure window, days"),
) -> None:
    """Aggregate events per arm, run the statistics and print (or write) the report."""
    from reco.experiments.report import ReportError, parse_guardrails, render_html, render_json, report_for

    if fmt not in ("json", "html"):
        _fail(f"--format must be json or html, got {fmt!r}")
    if phase is not None and phase < 1:
        _fail(f"--phase must be >= 1, got {phase}")
    if pre_period_days < 0:
        _fail(f"--pre-period-days must be >= 0, got {pre_period_days}")
    d0, d1 = _parse_date(start, "--start"), _parse_date(end, "--end")
    if d0 and d1 and d1 < d0:
        _fail(f"--end {d1} is before --start {d0}")
    try:
        rep = report_for(events, control=control, experiment=experiment, start=d0, end=d1,
                         traffic=parse_traffic(traffic), traffic_source="--traffic", experiments_path=experiments,
                         min_days=min_days, planned_days=planned_days, guardrails=parse_guardrails(guardrail),
                         phase=phase, pre_period_days=pre_period_days)  # fmt: skip
    except (ReportError, ValueError, OSError) as e:
        _fail(str(e))
        return
    text = render_json(rep) if fmt == "json" else render_html(rep)
    if out is None:
        typer.echo(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        typer.echo(f"{rep['decision']['action']} {rep['decision']['arm'] or ''}".strip() + f" -> {out}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(ab_app, name="ab")
