"""`panformer-graphs`: the engine's CLI contract (train, evaluate, predict, recipes, info, demo)."""

from __future__ import annotations

from panformer.engine.cli import build_cli
from panformer.graphs.domain import GraphsDomain

app = build_cli(GraphsDomain())

if __name__ == "__main__":
    app()
