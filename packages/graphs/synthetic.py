"""Seeded SYNTHETIC graphs with known structure, for offline demos, tests and the benchmark.

- `stochastic_block_model`: node classification where features alone are weak and communities decide;
- `cycles`: graph classification "one cycle" vs "two disjoint cycles" with the same node and edge counts
  (every node has degree 2, so 1-WL message passing cannot tell them apart; distances can);
- `triangles`: graph regression of the triangle count per node of random graphs.

Each returns `RawGraph`s: node features, edges, and a node- or graph-level target.
Legend: N nodes, F features, E edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class RawGraph:
    """One graph as read: x (N, F) float, edge_index (2, E) long, y (N,) per node or a scalar per graph,
    node_ids (N,) as strings for output files."""

    x: Tensor
    edge_index: Tensor
    y: Tensor
    node_ids: list[str]

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]


def _both_ways(pairs: np.ndarray) -> Tensor:
    e = torch.from_numpy(pairs.astype(np.int64)).reshape(-1, 2).t()
    return torch.cat([e, e.flip(0)], dim=1)


def stochastic_block_model(
    *, nodes: int = 400, blocks: int = 4, p_in: float = 0.06, p_out: float = 0.006, features: int = 8,
    feature_noise: float = 2.0, seed: int = 0,
) -> RawGraph:
    """Communities are the labels; features are the class mean plus heavy noise (weak alone)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, blocks, size=nodes)
    same = label[:, None] == label[None]
    upper = np.triu(rng.uniform(size=(nodes, nodes)) < np.where(same, p_in, p_out), k=1)
    means = rng.normal(0, 1, size=(blocks, features))
    x = means[label] + rng.normal(0, feature_noise, size=(nodes, features))
    return RawGraph(
        x=torch.tensor(x, dtype=torch.float32), edge_index=_both_ways(np.argwhere(upper)),
        y=torch.from_numpy(label).long(), node_ids=[str(i) for i in range(nodes)],
    )


def _cycle(nodes: np.ndarray) -> np.ndarray:
    return np.stack([nodes, np.roll(nodes, -1)], axis=1)


def cycles(*, graphs: int = 400, min_nodes: int = 12, max_nodes: int = 24, seed: int = 0) -> list[RawGraph]:
    """Label 0: one cycle over all N nodes; label 1: two disjoint cycles (each >= 3 nodes), shuffled ids."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(graphs):
        n = int(rng.integers(min_nodes, max_nodes + 1))
        order = rng.permutation(n)
        label = i % 2
        if label == 0:
            pairs = _cycle(order)
        else:
            cut = int(rng.integers(3, n - 2))
            pairs = np.concatenate([_cycle(order[:cut]), _cycle(order[cut:])])
        out.append(RawGraph(x=torch.ones(n, 1), edge_index=_both_ways(pairs), y=torch.tensor(label),
                            node_ids=[str(j) for j in range(n)]))
    return out


def triangles(*, graphs: int = 400, min_nodes: int = 10, max_nodes: int = 20, seed: int = 0) -> list[RawGraph]:
    """Erdos-Renyi graphs with a random density; target: triangles per node (float)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(graphs):
        n = int(rng.integers(min_nodes, max_nodes + 1))
        p = float(rng.uniform(0.1, 0.4))
        upper = np.triu(rng.uniform(size=(n, n)) < p, k=1)
        adjacency = (upper | upper.T).astype(np.int64)
        count = np.trace(adjacency @ adjacency @ adjacency) / 6
        out.append(RawGraph(x=torch.ones(n, 1), edge_index=_both_ways(np.argwhere(upper)),
                            y=torch.tensor(count / n, dtype=torch.float32), node_ids=[str(j) for j in range(n)]))
    return out
