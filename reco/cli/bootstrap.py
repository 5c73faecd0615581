"""`reco bootstrap`: the first model of a fresh stack (MovieLens-100k -> train -> register -> `champion` +
every arm's alias). Does nothing but fill in missing arm aliases when a champion exists."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("bootstrap")(bootstrap)


def _fail(msg: str) -> typer.Exit:
    typer.secho(f"error: {msg}", fg="red", err=True)
    return typer.Exit(2)


def bootstrap(
    epochs: int = typer.Option(5, min=1, max=200, help="training epochs of the first model"),
    data_dir: Path | None = typer.Option(None, help="MovieLens-100k files (default RECO_DATA_DIR)"),
    seed: int = typer.Option(0, help="training seed"),
    threads: int = typer.Option(1, min=1, max=64, help="torch threads"),
) -> None:
    """Put the first model in the registry: train on MovieLens-100k, alias champion and every arm."""
    from reco.cli.learn import tracking_problem
    from reco.data.movielens import DataFileError
    from reco.experiments.assignment import load_config
    from reco.offline.bootstrap import bootstrap as run
    from reco.settings import RecoSettings
    from reco.telemetry import logs

    settings = RecoSettings()
    logs.configure(settings.log_format)
    if (problem := tracking_problem(settings.tracking_uri)) is not None:
        raise _fail(problem)
    try:
        aliases = list(load_config(settings.experiments_path).aliases.values())
    except Exception as exc:  # ConfigError and friends: one line
        raise _fail(str(exc)) from None
    directory = data_dir or settings.movielens_dir
    try:
        result = run(settings.tracking_uri, settings.registered_model, directory, aliases,
                     epochs=epochs, seed=seed, threads=threads)  # fmt: skip
    except (DataFileError, FileNotFoundError) as exc:
        raise _fail(f"{exc} (MovieLens-100k files: `reco data fetch`, or set RECO_DATA_DIR)") from None
    typer.echo(json.dumps({"version": result.version, "trained": result.trained, "moved": result.moved,
                           "metrics": result.metrics}))  # fmt: skip
