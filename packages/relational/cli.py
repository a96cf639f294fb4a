"""`panformer-relational`: the engine's CLI contract, plus `schema` (print a database's discovered
schema), `pretrain` (train a recipe with masked-cell pretraining first) and `baseline` (the trees alone).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from panformer.engine.cli import build_cli, train_run, user_errors_exit_2
from panformer.engine.config import load_recipe
from panformer.relational.database import read_database
from panformer.relational.domain import (
    EntityTask,
    RelationalData,
    RelationalDomain,
    load_task_data,
    resolve_source,
    split_rows,
)

domain = RelationalDomain()
app = build_cli(domain)


@app.command()
@user_errors_exit_2
def schema(
    data: Annotated[str, typer.Option(help="duckdb:///FILE, sqlite:///FILE, postgresql://... or demo")],
    schema_file: Annotated[Path | None, typer.Option(help="YAML override of keys and time columns")] = None,
) -> None:
    """Print the schema discovered from the database's keys (and the override file)."""
    if data == "demo" or data.startswith("demo:"):
        db = resolve_source(data, RelationalData())[0]
    else:
        db = read_database(data, schema_file=schema_file)
    typer.echo(db.describe())


@app.command()
@user_errors_exit_2
def pretrain(
    recipe: Annotated[str, typer.Option(help="recipe name or .yaml path")] = "demo",
    steps: Annotated[int, typer.Option(min=1, help="masked-cell pretraining steps")] = 300,
    data: Annotated[str | None, typer.Option(help="the target database (zero-shot, then fine-tuned)")] = None,
    out: Annotated[Path | None, typer.Option(help="run folder")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. pretrain.lr=1e-3")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N, mps")] = None,
) -> None:
    """Pretrain on the recipe's pretraining databases, score zero-shot, then fine-tune (as train)."""
    train_run(domain, recipe=recipe, data=data, out=out, overrides=[*(set_ or []), f"pretrain.steps={steps}"],
              resume=None, device=device)


@app.command()
@user_errors_exit_2
def baseline(
    recipe: Annotated[str, typer.Option(help="recipe name or .yaml path")] = "demo",
    data: Annotated[str | None, typer.Option(help="database; defaults to the recipe's")] = None,
    json_: Annotated[bool, typer.Option("--json", help="print the metrics as one JSON line last")] = False,
) -> None:
    """Gradient-boosted trees on aggregate features and the majority class, on the recipe's test split."""
    loaded = load_recipe(domain.recipe_type_for, domain.name, recipe)
    source = data or loaded.data.source
    task, spec = load_task_data(source, loaded.data)
    metrics = EntityTask.baselines(task, split_rows(task.rows, spec, source), spec, loaded.data)
    if json_:
        typer.echo(json.dumps(metrics))
    else:
        for key, value in metrics.items():
            typer.echo(f"{key:>18}  {value:.4f}")


if __name__ == "__main__":
    app()
