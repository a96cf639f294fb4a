"""`python -m panformer` is the umbrella command (so `torchrun -m panformer DOMAIN train ...` works)."""

from __future__ import annotations

import pytest

from tests.cli import run_cli

# Each run starts an interpreter that imports every domain (~10 s alone, more on a busy machine).
pytestmark = pytest.mark.slow


def test_python_m_panformer_shows_help():
    done = run_cli("panformer", "--help")
    assert done.returncode == 0, done.stderr
    assert "domains" in done.stdout and "graphs" in done.stdout


def test_python_m_panformer_runs_a_domain_command():
    done = run_cli("panformer", "graphs", "recipes")
    assert done.returncode == 0, done.stderr
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    assert {"karate", "demo", "cora"} <= set(names)
