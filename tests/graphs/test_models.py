"""Model properties: shapes, padding and permutation invariance, the patch graph, no look-ahead in histories."""

from __future__ import annotations

import numpy as np
import torch

from panformer.graphs.data import Encodings, collate, encode
from panformer.graphs.gps import GraphTransformer
from panformer.graphs.images import SAGViT, grid_edges
from panformer.graphs.synthetic import cycles, stochastic_block_model
from panformer.graphs.temporal import (
    History,
    Todyformer,
    link_collate,
    query_item,
    synthetic_temporal,
)

ENC = Encodings(lap_pe=0, walk_steps=4, max_distance=5)


def small_model(level: str, attention: str = "full", **kw) -> GraphTransformer:
    torch.manual_seed(0)
    return GraphTransformer(in_features=1, out_features=3, level=level, dim=16, depth=2, num_heads=2, lap_pe=0,
                            walk_steps=4, max_distance=5, attention=attention, dropout=0.0, **kw).eval()


def test_graph_outputs_do_not_depend_on_batch_padding():
    graphs = cycles(graphs=4, min_nodes=5, max_nodes=12, seed=1)
    items = [encode(g.x, g.edge_index, g.y, ENC) for g in graphs]
    for attention in ("full", "sparse"):
        model = small_model("graph", attention)
        together = model(collate(items))
        alone = torch.cat([model(collate([item])) for item in items])
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_node_outputs_are_permutation_equivariant():
    graph = stochastic_block_model(nodes=30, features=1, seed=0)
    model = small_model("node")
    item = encode(graph.x, graph.edge_index, graph.y, ENC)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    inverse = torch.argsort(perm)
    permuted = encode(graph.x[perm], inverse[graph.edge_index], graph.y[perm], ENC)
    out = model(collate([item]))[0]
    out_permuted = model(collate([permuted]))[0]
    torch.testing.assert_close(out_permuted, out[perm], atol=1e-5, rtol=1e-4)


def test_distance_bias_separates_one_cycle_from_two():
    """Both graphs are 2-regular with 12 nodes: without distances (and no lap PE) they look the same."""
    one, two = cycles(graphs=2, min_nodes=12, max_nodes=12, seed=0)
    blind = Encodings(lap_pe=0, walk_steps=0, max_distance=0)
    model = GraphTransformer(in_features=1, out_features=2, level="graph", dim=16, depth=1, num_heads=2, lap_pe=0,
                             walk_steps=0, max_distance=0, dropout=0.0).eval()
    same = model(collate([encode(g.x, g.edge_index, g.y, blind) for g in (one, two)]))
    torch.testing.assert_close(same[0], same[1])
    assert (encode(two.x, two.edge_index, two.y, ENC).spd == ENC.max_distance + 1).any()
    assert not (encode(one.x, one.edge_index, one.y, ENC).spd == ENC.max_distance + 1).any()


def test_sagvit_patch_graph_and_shapes():
    e = grid_edges(3, 3)
    assert e.shape[1] == 2 * 20  # 6 horizontal + 6 vertical + 8 diagonal links, both directions
    assert (e[0] != e[1]).all()
    model = SAGViT(num_classes=10, image_size=32, dim=16, depth=1, num_heads=2).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    knn = SAGViT(num_classes=10, image_size=32, dim=16, depth=1, num_heads=2, graph="knn", k=4).eval()
    assert knn(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_temporal_history_never_sees_the_future():
    events = synthetic_temporal(nodes=30, events=400, seed=0)
    history = History(events)
    i = 250
    u, t = int(events.src[i]), float(events.t[i])
    _, times, eid = history.before(u, t, 1000)
    assert (times < t).all() and (eid < i).all()
    torch.manual_seed(0)
    model = Todyformer(num_nodes=30, edge_features=1, history=8, patch=4, dim=16, depth=1, num_heads=2,
                       dropout=0.0).eval()
    candidates = np.array([events.dst[i], 1, 2, 3])
    full = model(link_collate([query_item(events, history, u, candidates, t, k=8, time_scale=1.0)]))
    # The same query with only the past known: identical scores.
    past_only = History(events, upto=i)
    cut = model(link_collate([query_item(events, past_only, u, candidates, t, k=8, time_scale=1.0)]))
    torch.testing.assert_close(full, cut)
    assert full.shape == (1, 4)


def test_gated_attention_starts_as_the_local_model_and_learns_to_open():
    """With `attention_gate` the global branch is scaled by a zero-initialised scalar: at init the outputs equal
    the attention-free model's, and the gate (only the gate) gets a gradient through the attention branch."""
    graph = stochastic_block_model(nodes=30, features=1, seed=0)
    batch = collate([encode(graph.x, graph.edge_index, graph.y, ENC)])
    gated = small_model("node", attention_gate=True)
    local_only = small_model("node", attention="none")
    local_only.load_state_dict({k: v for k, v in gated.state_dict().items() if k in local_only.state_dict()})
    torch.testing.assert_close(gated(batch), local_only(batch))
    gated(batch).square().sum().backward()
    for layer in gated.layers:
        assert layer.gate.grad is not None and layer.gate.grad.abs().item() > 0
        assert all(p.grad is None or p.grad.abs().max() == 0 for p in layer.attention.parameters())


def test_padding_to_a_fixed_shape_changes_no_output():
    """Under train.cuda_graphs graph batches are padded to one shape (more nodes, self-loops of a padding node):
    the model's outputs must not see it."""
    from panformer.graphs.data import FixedShape

    graphs = cycles(graphs=5, min_nodes=5, max_nodes=12, seed=2)
    items = [encode(g.x, g.edge_index, g.y, ENC) for g in graphs]
    shape = FixedShape.covering(items, batch_size=8)
    assert shape.nodes == max(i.x.shape[0] for i in items) + 1
    assert shape.edges == sum(i.edge_index.shape[1] for i in items)  # fewer graphs than a batch: all of them
    padded = collate(items[:3], shape=shape)
    assert padded["x"].shape[1] == shape.nodes and padded["edge_index"].shape[1] == shape.edges
    assert not padded["valid"][-1, -1]  # the self-loops' node is padding
    for attention in ("full", "sparse", "none"):
        model = small_model("graph", attention)
        torch.testing.assert_close(model(padded), model(collate(items[:3])), atol=1e-5, rtol=1e-4)


def test_cuda_graphs_recipes_batch_graphs_in_one_shape():
    from panformer.engine.config import validate_recipe
    from panformer.engine.trainer import make_loader
    from tests.graphs.helpers import DOMAIN

    raw = {"domain": "graphs", "description": "test", "task": "graph-regression",
           "data": {"source": "synthetic:triangles", "synthetic_size": 60, "lap_pe": 0, "walk_steps": 4,
                    "max_distance": 0},
           "model": {"name": "gps", "dim": 16, "depth": 1, "num_heads": 2},
           "train": {"batch_size": 8, "device": "cpu", "cuda_graphs": True}}
    recipe = validate_recipe(DOMAIN.recipe_type_for, raw, source="test")
    task = DOMAIN.task(recipe)
    splits = task.load_splits(recipe)
    shapes = {tuple((k, tuple(v.shape)) for k, v in sorted(batch.items()))
              for batch in make_loader(task, splits.train, batch_size=8, shuffle=True)}
    assert len(shapes) <= 2, shapes  # full batches, and a smaller last one
    assert {dict(s)["edge_index"][1] for s in shapes} == {task.fixed_shape.edges}
