"""`reco train` and `reco evaluate`: train a model bundle from MovieLens files or the event lake, and
print the offline evaluation table (leave-one-out, full ranking; see `reco.offline.evaluation`)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import typer


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _load_events(data: Path | None, lake: Path | None, catalog: Path | None, start: str | None, end: str | None):
    """(events, catalog) from MovieLens atomic files (`data`) or the lake + a catalog parquet file."""
    from reco.data.catalog import ItemCatalog

    if (data is None) == (lake is None):
        _fail("give exactly one of --data (MovieLens-100k directory) or --lake (event lake directory)")
    if data is not None:
        from reco.data.movielens import load_movielens

        ml = load_movielens(data)
        return ml.events, ml.catalog
    from reco.data.lake import EventLake

    if catalog is None:
        _fail("--lake needs --catalog (an ItemCatalog parquet file, e.g. a bundle's catalog.parquet)")
    if not Path(lake).is_dir():  # type: ignore[arg-type]
        _fail(f"lake directory not found: {lake}")
    try:
        first, last = (date.fromisoformat(x) if x else None for x in (start, end))
    except ValueError as e:
        _fail(f"bad date: {e}")
    events = EventLake(lake).read_pandas(first, last)  # type: ignore[arg-type]
    if events.empty:
        _fail(f"no events in {lake} for {start or 'the beginning'} .. {end or 'the end'}")
    return events, ItemCatalog.from_parquet(catalog)  # type: ignore[arg-type]


def train_cmd(
    out: Path = typer.Option(..., "--out", help="directory to write the model bundle to"),
    data: Path | None = typer.Option(None, "--data", help="MovieLens-100k atomic files"),
    lake: Path | None = typer.Option(None, "--lake", help="event lake directory"),
    catalog: Path | None = typer.Option(None, "--catalog", help="item catalog parquet (with --lake)"),
    start: str | None = typer.Option(None, help="first lake day, YYYY-MM-DD"),
    end: str | None = typer.Option(None, help="last lake day, YYYY-MM-DD"),
    init: Path | None = typer.Option(None, "--init", help="warm-start from this model bundle"),
    epochs: int = typer.Option(30, min=1),
    seed: int = typer.Option(0),
    threads: int = typer.Option(1, min=1),
    holdout: bool = typer.Option(
        True, help="hold out each user's last 2 events: pick the epoch on validation, report test metrics"
    ),
) -> None:
    """Train the session-aware ranker and save a model bundle."""
    from reco.artifacts.bundle import BundleError, ModelBundle
    from reco.data.movielens import DataFileError
    from reco.offline.evaluation import evaluate_split, format_table, leave_one_out
    from reco.offline.trainer import TrainConfig, WarmStartError, interactions, train

    try:
        events, cat = _load_events(data, lake, catalog, start, end)
        events = interactions(events)  # the split, like training, sees no impressions
        parent = ModelBundle.load(init) if init else None
        cfg = TrainConfig(epochs=epochs, seed=seed, threads=threads)
        if holdout:
            split = leave_one_out(events)
            vs, vt, _ = split.sessions("valid")
            result = train(events.iloc[split.train_rows], cat, cfg, init=parent, validation=(vs, vt))
            test = evaluate_split(result.bundle, split, "test")
            result.bundle.meta["test_metrics"] = test
            typer.echo(format_table({"reco": test["model"], "MostPop": test["mostpop"]}))
        else:
            result = train(events, cat, cfg, init=parent)
    except (DataFileError, BundleError, WarmStartError, ValueError) as e:
        _fail(str(e))
    result.bundle.save(out)
    typer.echo(json.dumps({"out": str(out), **result.metrics}))


def evaluate_cmd(
    model: Path = typer.Option(..., "--model", help="model bundle directory"),
    data: Path = typer.Option(..., "--data", help="MovieLens-100k atomic files"),
    which: str = typer.Option("test", help="'test' or 'valid'"),
) -> None:
    """Evaluate a model bundle on the leave-one-out split (full ranking) and print the table."""
    from reco.artifacts.bundle import BundleError, ModelBundle
    from reco.data.movielens import DataFileError, load_movielens
    from reco.offline.evaluation import evaluate_split, format_table, leave_one_out

    if which not in ("test", "valid"):
        _fail("--which must be 'test' or 'valid'")
    try:
        bundle = ModelBundle.load(model)
        ml = load_movielens(data)
    except (DataFileError, BundleError) as e:
        _fail(str(e))
    res = evaluate_split(bundle, leave_one_out(ml.events), which)
    typer.echo(format_table({"reco": res["model"], "MostPop": res["mostpop"]}))


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)
