"""The umbrella command: `panformer <domain> ...` for every installed domain, and `panformer demo`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from panformer.engine.cli import run_demo, user_errors_exit_2
from panformer.engine.domain import registered_domains
from panformer.engine.errors import UserError
from panformer.engine.files import write_text_atomic

app = typer.Typer(
    name="panformer",
    help="Panformer: one attention core, many domains. `panformer DOMAIN --help` for a domain's commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for _name, _domain_type in registered_domains().items():
    app.add_typer(_domain_type().app(), name=_name)


@app.command()
@user_errors_exit_2
def domains() -> None:
    """List the installed domains."""
    for name, domain_type in registered_domains().items():
        typer.echo(f"{name:<12} panformer-{name}  ({domain_type.__module__})")


@app.command()
@user_errors_exit_2
def demo(
    out: Annotated[Path, typer.Option(help="folder for the demo runs and summary")] = Path("runs/demo"),
    only: Annotated[list[str] | None, typer.Option(help="run only these domains")] = None,
) -> None:
    """Run every domain's `demo` recipe (train, evaluate, predict) and write summary.md."""
    names = list(registered_domains())
    for name in only or []:
        if name not in names:
            raise UserError(f"--only {name}: unknown domain; installed: {', '.join(names)}")
    rows = []
    for name in only or names:
        started = time.perf_counter()
        result, seconds = run_demo(registered_domains()[name](), out / name)
        outputs = ", ".join(f"`{p}`" for p in result.outputs)
        rows.append(f"| {name} | {result.metric} | {result.value:.4f} | {seconds:.0f} | {outputs} |")
        typer.echo(f"{name}: {result.metric} = {result.value:.4f} ({time.perf_counter() - started:.0f}s)")
    table = "\n".join(
        ["# Panformer demo", "", "| domain | metric | value | time (s) | outputs |", "|---|---|---|---|---|", *rows]
    )
    write_text_atomic(out / "summary.md", table + "\n")
    typer.echo(f"summary: {out / 'summary.md'}")
