"""Shared helpers for the graphs tests: the CLI in a subprocess and in-process, and tiny training runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from panformer.engine.config import validate_recipe
from panformer.engine.trainer import FitResult, Trainer
from panformer.graphs.cli import app
from panformer.graphs.domain import GraphsDomain

DOMAIN = GraphsDomain()


def cli(*args: str) -> subprocess.CompletedProcess:
    # One math thread per subprocess: on a shared 2-core box OpenMP spin-waiting costs more than it gains.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, "-m", "panformer.graphs.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def cli_inprocess(*args: str):
    """The same CLI in this process (fast, for bad-input checks): result.exit_code / .stderr."""
    return CliRunner().invoke(app, list(args))


def assert_user_error(exit_code: int, stderr: str, *needles: str) -> None:
    assert exit_code == 2, (exit_code, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def train(raw: dict[str, Any], run_dir: Path) -> FitResult:
    raw = {"domain": "graphs", "description": "test", **raw}
    raw.setdefault("train", {})
    raw["train"] = {"device": "cpu", "warmup_ratio": 0.1, **raw["train"]}
    recipe = validate_recipe(DOMAIN.recipe_type_for, raw, source="test")
    return Trainer(DOMAIN, recipe, run_dir=run_dir).fit()
