"""`panformer-timeseries`: the engine's CLI contract plus the time-series verbs."""

from __future__ import annotations

import typer

from panformer.engine.cli import build_cli, user_errors_exit_2
from panformer.timeseries.data import bundled_datasets
from panformer.timeseries.domain import TimeSeriesDomain

app = build_cli(TimeSeriesDomain())


@app.command()
@user_errors_exit_2
def datasets() -> None:
    """List the UEA/UCR datasets that ship inside aeon (usable offline as aeon:<Name>)."""
    for name in bundled_datasets():
        typer.echo(f"aeon:{name}")


if __name__ == "__main__":
    app()
