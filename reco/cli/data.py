"""`reco data ...`: obtain and load datasets.

Library imports happen inside the commands so that `reco --help` stays fast. Expected failures (bad or
missing files, a failed download) print one red line on stderr and exit with status 2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from reco.settings import RecoSettings

data_app = typer.Typer(no_args_is_help=True, help="obtain and load datasets")
DATASETS = ("movielens-100k",)
EXIT_USAGE = 2

err = Console(stderr=True)
out = Console()


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def fail(message: str) -> typer.Exit:
    """Print one red line on stderr; raise the returned Exit."""
    err.print(f"[bold red]error:[/bold red] {' '.join(str(message).split())}", soft_wrap=True, highlight=False)
    return typer.Exit(EXIT_USAGE)


@contextlib.contextmanager
def _expected_errors() -> Iterator[None]:
    """Turn the library's documented failures into a one-line message and exit 2 (no traceback)."""
    from reco.data.movielens import DataFileError, FetchError

    try:
        yield
    except (DataFileError, FetchError, ValueError, OSError) as e:
        raise fail(str(e)) from None


def _parse_day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise fail(f"{option}: {value!r} is not a date (YYYY-MM-DD)") from None


def _settings() -> RecoSettings:
    # imported here: pydantic-settings is not needed for --help
    from reco.settings import RecoSettings

    return RecoSettings()


@data_app.command("fetch")
def fetch(
    dataset: str = typer.Argument(..., help=f"dataset name: {', '.join(DATASETS)}"),
    dest: Path | None = typer.Option(None, "--dest", help="target folder (default: <RECO_HOME>/data/ml-100k)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
) -> None:
    """Download and verify a dataset (MovieLens-100k comes from the recbole==1.2.1 wheel on PyPI)."""
    if dataset not in DATASETS:
        raise fail(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    from reco.data.movielens import fetch_movielens

    target = dest if dest is not None else _settings().movielens_dir
    with _expected_errors():
        path = fetch_movielens(target, progress=not quiet)
    out.print(f"[green]ok[/green] movielens-100k in {path}", soft_wrap=True, highlight=False)


@data_app.command("load-lake")
def load_lake(
    source: Path | None = typer.Option(None, "--source", help="ML-100k folder (default: <RECO_HOME>/data/ml-100k)"),
    lake: Path | None = typer.Option(None, "--lake", help="event lake root (default: <RECO_HOME>/lake)"),
    start: str | None = typer.Option(None, "--start", help="first day to load, YYYY-MM-DD (UTC)"),
    end: str | None = typer.Option(None, "--end", help="last day to load, YYYY-MM-DD (UTC, inclusive)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Load MovieLens-100k into the event lake, one partition per day (rerunning rewrites the same rows)."""
    first, last = _parse_day(start, "--start"), _parse_day(end, "--end")
    if first and last and first > last:
        raise fail(f"--start {first} is after --end {last}")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from reco.data.lake import EventLake
    from reco.data.movielens import ingest_movielens

    settings = None if source and lake else _settings()
    src = source or settings.movielens_dir
    event_lake = EventLake(lake or settings.lake_dir)
    bar = Progress(
        TextColumn("writing partitions"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
        TimeElapsedColumn(), console=err, disable=quiet or not err.is_terminal, transient=True,
    )  # fmt: skip
    with _expected_errors(), bar:
        task = bar.add_task("", total=None)

        def advance(day: date, rows: int) -> None:
            bar.update(task, advance=1, description=f"{day} ({rows} rows)")

        t0 = datetime.now()
        written = ingest_movielens(src, event_lake, first, last, on_partition=advance)
        seconds = (datetime.now() - t0).total_seconds()
    _print_summary(written, event_lake.root, seconds, event_lake.snapshot_id(first, last))


def _print_summary(written: dict[date, int], root: Path, seconds: float, snapshot: str) -> None:
    from rich.table import Table

    if not written:
        out.print("no events in the given range: nothing written")
        return
    days = sorted(written)
    rows = [written[d] for d in days]
    table = Table(title="rows per day", show_edge=False)
    table.add_column("day")
    table.add_column("rows", justify="right")
    shown = days if len(days) <= 12 else [*days[:5], None, *days[-5:]]
    for d in shown:
        if d is None:
            table.add_row("…", "…")
        else:
            table.add_row(d.isoformat(), str(written[d]))
    out.print(table)
    rows_sorted = sorted(rows)
    out.print(
        f"[green]ok[/green] {sum(rows)} events in {len(days)} partitions ({days[0]} .. {days[-1]}; per day min "
        f"{rows_sorted[0]}, median {rows_sorted[len(rows) // 2]}, max {rows_sorted[-1]}) -> {root} "
        f"in {seconds:.2f} s; snapshot {snapshot}",
        soft_wrap=True,
        highlight=False,
    )
