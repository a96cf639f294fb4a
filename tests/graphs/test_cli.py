"""The CLI end to end in a subprocess: train -> evaluate --json -> predict, on a tiny inline recipe."""

from __future__ import annotations

import json

import pandas as pd

from tests.cli import assert_user_error
from tests.graphs.helpers import cli, cli_inprocess

RECIPE = """
description: tiny cycles run for the CLI test
task: graph-classification
data: {source: "synthetic:cycles", synthetic_size: 60, lap_pe: 2, walk_steps: 4, max_distance: 12}
model: {name: gps, dim: 16, depth: 1, num_heads: 2, dropout: 0.0}
train: {epochs: 3, batch_size: 16, lr: 0.005, device: cpu}
"""


def test_train_evaluate_predict(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    run = tmp_path / "run"
    trained = cli("train", "--recipe", str(recipe), "--out", str(run))
    assert trained.returncode == 0, trained.stderr
    assert (run / "metrics.json").is_file() and (run / "recipe.yaml").is_file()

    evaluated = cli("evaluate", "--checkpoint", str(run), "--json", "--plot", str(tmp_path / "cm.png"))
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout.strip().splitlines()[-1])
    saved = json.loads((run / "metrics.json").read_text())["test"]
    assert abs(metrics["accuracy"] - saved["accuracy"]) < 1e-9  # the same test split, the same weights
    assert (tmp_path / "cm.png").stat().st_size > 0

    # Predict on graphs written as CSV files (graph column: one prediction per graph).
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    (graphs / "nodes.csv").write_text("graph,id,f0\n" + "".join(f"a,{i},1\n" for i in range(6))
                                      + "".join(f"b,{i},1\n" for i in range(6)))
    ring = "".join(f"a,{i},{(i + 1) % 6}\n" for i in range(6))
    two = "b,0,1\nb,1,2\nb,2,0\nb,3,4\nb,4,5\nb,5,3\n"
    (graphs / "edges.csv").write_text("graph,src,dst\n" + ring + two)
    out = tmp_path / "pred.csv"
    predicted = cli("predict", "--checkpoint", str(run), "--input", str(graphs), "--output", str(out))
    assert predicted.returncode == 0, predicted.stderr
    table = pd.read_csv(out)
    assert list(table["graph"]) == ["a", "b"] and set(table["predicted"].astype(str)) <= {"0", "1"}

    # Bad predict input: feature width mismatch -> exit 2, one line, nothing written.
    (graphs / "nodes.csv").write_text("graph,id,f0,f1\na,0,1,2\n")
    (graphs / "edges.csv").write_text("graph,src,dst\na,0,0\n")
    bad = cli_inprocess("predict", "--checkpoint", str(run), "--input", str(graphs), "--output", str(tmp_path / "bad.csv"))
    assert_user_error(bad, "nodes.csv", "feature column")
    assert not (tmp_path / "bad.csv").exists()
