"""Graphs without node features: structural features stand in for them (issue #23: a featureless karate club
CSV folder trained to chance)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pandas as pd
import pytest
import torch

from panformer.engine.cli import load_model
from panformer.engine.config import load_recipe
from panformer.engine.errors import UserError
from panformer.engine.trainer import Trainer
from panformer.graphs.data import read_csv_folder
from panformer.graphs.static import StructuralFeatures, StructurePlan
from tests.graphs.helpers import DOMAIN


def karate_club_folder(folder: Path) -> Path:
    """Zachary's karate club as a user has it: nodes.csv (id, label) with no feature columns, edges.csv (source,
    target); the labels are the two clubs the members joined."""
    graph = nx.karate_club_graph()
    folder.mkdir(parents=True)
    pd.DataFrame({"id": list(graph.nodes), "label": [graph.nodes[n]["club"] for n in graph.nodes]}).to_csv(
        folder / "nodes.csv", index=False)
    pd.DataFrame(list(graph.edges), columns=["source", "target"]).to_csv(folder / "edges.csv", index=False)
    return folder


def fit_karate(folder: Path, run_dir: Path, *, split: int, seed: int):
    recipe = load_recipe(DOMAIN.recipe_type_for, "graphs", "karate",
                         overrides=[f"data.split_seed={split}", f"train.seed={seed}", "train.device=cpu"])
    return Trainer(DOMAIN, recipe, run_dir=run_dir).fit(source=str(folder))


def test_featureless_karate_club_learns_the_two_clubs(tmp_path, capsys):
    folder = karate_club_folder(tmp_path / "karate")
    accuracies = [fit_karate(folder, tmp_path / f"run{split}", split=split, seed=split).test_metrics["accuracy"]
                  for split in range(2)]
    # 10 test nodes, 2 balanced clubs: chance is 0.5 (what it scored before structural features).
    assert min(accuracies) >= 0.8, accuracies
    assert "structural node features: degree, 8 Laplacian eigenvectors, 8 random-walk return probabilities, " \
           "node identity (34 learned node embeddings)" in capsys.readouterr().err

    # predict on the same files rebuilds the same features: the whole graph's clubs come back.
    loaded = load_model(DOMAIN, tmp_path / "run0", torch.device("cpu"))
    out = tmp_path / "clubs.csv"
    loaded.task.predict(loaded.model, recipe=loaded.recipe, info=loaded.info, input_path=folder, output_path=out,
                        device=torch.device("cpu"))
    predicted = pd.read_csv(out).merge(pd.read_csv(folder / "nodes.csv"), on="id")
    assert len(predicted) == 34 and (predicted["predicted"] == predicted["label"]).mean() >= 0.85

    # ... but files with feature columns do not fit a model trained on structure alone.
    nodes = pd.read_csv(folder / "nodes.csv").assign(age=30)
    nodes.to_csv(folder / "nodes.csv", index=False)
    with pytest.raises(UserError, match="trained without node features"):
        loaded.task.predict(loaded.model, recipe=loaded.recipe, info=loaded.info, input_path=folder,
                            output_path=tmp_path / "bad.csv", device=torch.device("cpu"))
    assert not (tmp_path / "bad.csv").exists()


def test_structural_features_follow_node_ids_not_row_order(tmp_path):
    """Node positions and identities belong to node ids: a reordered nodes.csv gives each node the same row."""
    folder = karate_club_folder(tmp_path / "karate")
    graph = read_csv_folder(folder).graphs[0]
    assert graph.x.shape == (34, 0)
    plan = StructurePlan.choose(StructuralFeatures(), level="node", sampled=False, graph=graph)
    features = plan.features(graph)
    assert features.shape == (34, 1 + 8 + 8 + 34)

    nodes = pd.read_csv(folder / "nodes.csv")
    nodes.iloc[::-1].to_csv(folder / "nodes.csv", index=False)
    shuffled = read_csv_folder(folder).graphs[0]
    again = plan.features(shuffled)
    row = {node: i for i, node in enumerate(shuffled.node_ids)}
    order = torch.tensor([row[node] for node in graph.node_ids])
    # The Fiedler vector (simple eigenvalue) and the rest agree; degenerate eigenvectors could rotate.
    assert torch.allclose(again[order][:, :2], features[:, :2], atol=1e-4)
    assert torch.allclose(again[order][:, 9:], features[:, 9:], atol=1e-5)

    # graph tasks and sampled graphs get no positions or identities (they do not carry across graphs).
    assert StructurePlan.choose(StructuralFeatures(), level="graph", sampled=False, graph=graph).node_ids is None
    sampled = StructurePlan.choose(StructuralFeatures(), level="node", sampled=True, graph=graph)
    assert (sampled.laplacian, sampled.walk_steps, sampled.node_ids) == (0, 0, None)
