"""`reco` command line. Each command group lives in its own module under `reco/cli/`, which exposes
`register(app)`; heavy imports (torch, mlflow, GX) stay inside the command bodies so that `reco --help`
is fast."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="reco: real-time personalization")

#: Modules under reco/cli/ that add commands.
COMMAND_MODULES = ("data", "serve", "ab", "demo", "learn", "train", "sink", "bootstrap")

for _name in COMMAND_MODULES:
    importlib.import_module(f"reco.cli.{_name}").register(app)


def main() -> None:
    """Console entry point (`reco`): a bad setting stops the command with one line naming the variable and
    the expected form, exit status 2, never a traceback."""
    from reco.settings import SettingsInvalid

    try:
        app()
    except SettingsInvalid as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
