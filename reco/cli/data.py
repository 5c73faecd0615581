"""`reco data ...`: obtain and inspect datasets."""

from __future__ import annotations

import typer

data_app = typer.Typer(no_args_is_help=True, help="obtain and load datasets")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
