"""Reading graphs: CSV folders, temporal CSVs and PyG names; bad input is a one-line UserError (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from panformer.engine.errors import UserError
from panformer.graphs.data import load_pyg, load_source, read_csv_folder
from panformer.graphs.synthetic import cycles, triangles
from panformer.graphs.temporal import read_temporal_csv, synthetic_temporal
from tests.cli import assert_user_error
from tests.graphs.helpers import cli_inprocess


def write(folder: Path, nodes: str, edges: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nodes.csv").write_text(nodes)
    (folder / "edges.csv").write_text(edges)
    return folder


def test_csv_folder_reads_features_labels_and_undirected_edges(tmp_path):
    folder = write(tmp_path / "g", "id,a,b,label\nx,1,2,cat\ny,3,4,dog\nz,5,6,cat\n", "src,dst\nx,y\ny,z\n")
    source = read_csv_folder(folder)
    graph = source.graphs[0]
    assert source.level == "node" and graph.x.shape == (3, 2) and graph.y == ["cat", "dog", "cat"]
    assert graph.edge_index.shape == (2, 4)


@pytest.mark.parametrize(
    ("nodes", "edges", "needle"),
    [
        ("id,a,label\nx,1,c\n", "src,to\nx,x\n", "missing column(s) dst"),
        ("id,a,label\nx,1,c\ny,2,d\n", "src,dst\nx,q\n", "unknown nodes (e.g. 'q')"),
        ("id,a,label\n", "src,dst\n", "no rows"),
        ("id,a\nx,1\n", "src,dst\nx,x\n", "missing column label"),
        ("id,a,label\nx,hello,c\n", "src,dst\nx,x\n", "not numeric"),
    ],
)
def test_bad_csv_folders_are_user_errors(tmp_path, nodes, edges, needle):
    with pytest.raises(UserError) as err:
        read_csv_folder(write(tmp_path / "g", nodes, edges))
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("src,dst,t\na,b,2\nb,c,1\n", "timestamps go backwards at line 3"),
        ("src,dst,t\na,b,1\nb,c,\n", "missing or non-numeric timestamp in line 3"),
        ("src,dst\na,b\n", "missing column(s) t"),
    ],
)
def test_bad_temporal_csvs_are_user_errors(tmp_path, text, needle):
    path = tmp_path / "events.csv"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_temporal_csv(path)
    assert needle in str(err.value)


def test_unknown_pyg_dataset_and_offline_download_fail_cleanly(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not a torch_geometric dataset"):
        load_pyg("NoSuchDataset", cache_dir=tmp_path)

    import torch_geometric.datasets.planetoid as planetoid

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(planetoid.fs, "cp", offline)  # what the download does when there is no network
    with pytest.raises(UserError, match="could not download"):
        load_pyg("Cora", cache_dir=tmp_path)


def test_karate_club_ships_with_pyg():
    source = load_source("pyg:KarateClub", cache_dir=Path("unused"), synthetic_size=0, seed=0)
    assert source.level == "node" and source.graphs[0].num_nodes == 34 and len(set(source.graphs[0].y.tolist())) == 4


def test_synthetic_sets_have_the_structure_they_promise():
    for graph in cycles(graphs=20, seed=3):
        degree = torch.bincount(graph.edge_index[0], minlength=graph.num_nodes)
        assert (degree == 2).all()  # one or two cycles: every node has degree 2
    graph = triangles(graphs=1, seed=0)[0]
    a = torch.zeros(graph.num_nodes, graph.num_nodes)
    a[graph.edge_index[0], graph.edge_index[1]] = 1
    assert abs(float(torch.trace(a @ a @ a)) / 6 / graph.num_nodes - float(graph.y)) < 1e-5
    first, again = synthetic_temporal(events=300, seed=1), synthetic_temporal(events=300, seed=1)
    assert (first.dst == again.dst).all() and (first.t[1:] >= first.t[:-1]).all()


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path):
    result = cli_inprocess("train", "--recipe", "demo", "--data", "pyg:NoSuchDataset", "--out", str(tmp_path / "r"))
    assert_user_error(result, "pyg:NoSuchDataset")
    folder = write(tmp_path / "g", "id,a,label\nx,1,c\ny,2,d\n", "src,dst\nx,q\n")
    result = cli_inprocess("train", "--recipe", "sbm", "--data", str(folder), "--out", str(tmp_path / "r2"))
    assert_user_error(result, "edges.csv", "unknown nodes")
    events = tmp_path / "events.csv"
    events.write_text("src,dst,t\na,b,2\nb,c,1\n")
    result = cli_inprocess("train", "--recipe", "temporal-link", "--data", str(events), "--out", str(tmp_path / "r3"))
    assert_user_error(result, "timestamps go backwards")
    result = cli_inprocess("train", "--recipe", "demo", "--set", "task=molecules", "--out", str(tmp_path / "r4"))
    assert_user_error(result, "not a graphs task")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


def test_every_graphs_recipe_validates():
    from panformer.engine.config import list_recipes, load_recipe
    from tests.graphs.helpers import DOMAIN

    recipes = list_recipes("graphs")
    assert {"demo", "sbm", "karate", "triangles", "digits-sagvit", "temporal-link", "flows", "flows-anomaly"} <= recipes.keys()
    for name in recipes:
        assert load_recipe(DOMAIN.recipe_type_for, "graphs", name).description


def test_netflow_without_label_column_is_a_user_error(tmp_path):
    from panformer.graphs.flows import read_flows

    path = tmp_path / "flows.csv"
    path.write_text("IPV4_SRC_ADDR,IPV4_DST_ADDR,IN_BYTES\n1.1.1.1,2.2.2.2,40\n")
    with pytest.raises(UserError, match="missing column"):
        read_flows(path)
