"""Shared helpers for the graphs tests: the CLI in a subprocess and in-process, and tiny training runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from panformer.engine.config import validate_recipe
from panformer.engine.trainer import FitResult, Trainer
from panformer.graphs.cli import app
from panformer.graphs.domain import GraphsDomain
from tests.cli import cli_of, invoke

DOMAIN = GraphsDomain()


cli = cli_of("panformer.graphs.cli")


def cli_inprocess(*args: str):
    """The same CLI in this process (fast, for bad-input checks): result.exit_code / .stderr."""
    return invoke(app, *args)




def train(raw: dict[str, Any], run_dir: Path) -> FitResult:
    raw = {"domain": "graphs", "description": "test", **raw}
    raw.setdefault("train", {})
    raw["train"] = {"device": "cpu", "warmup_ratio": 0.1, **raw["train"]}
    recipe = validate_recipe(DOMAIN.recipe_type_for, raw, source="test")
    return Trainer(DOMAIN, recipe, run_dir=run_dir).fit()
