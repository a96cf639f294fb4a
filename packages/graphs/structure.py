"""Structural encodings of graphs: Laplacian eigenvectors, random-walk return probabilities, shortest-path
distances, and a neighbour sampler for graphs too large to attend over whole.

Legend: N nodes, E edges, P positional-encoding width, S seed nodes.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path
from torch import Tensor


def undirected(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Both directions of every edge, without self loops or duplicates (2, E')."""
    e = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    e = e[:, e[0] != e[1]]
    key = torch.unique(e[0] * num_nodes + e[1])
    return torch.stack([key // num_nodes, key % num_nodes])


def laplacian_pe(edge_index: Tensor, num_nodes: int, k: int) -> Tensor:
    """The k eigenvectors of the symmetric normalised Laplacian after the trivial one (N, k).

    Signs are arbitrary (the model flips them at random in training); graphs with fewer than k + 1 nodes
    are zero-padded.
    """
    out = torch.zeros(num_nodes, k)
    if num_nodes < 2 or k == 0:
        return out
    adjacency = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    e = undirected(edge_index, num_nodes)
    adjacency[e[0], e[1]] = 1.0
    degree = adjacency.sum(1)
    inv_sqrt = torch.where(degree > 0, degree.clamp(min=1e-12).rsqrt(), torch.zeros_like(degree))
    laplacian = torch.eye(num_nodes, dtype=torch.float64) - inv_sqrt[:, None] * adjacency * inv_sqrt[None]
    _, vectors = torch.linalg.eigh(laplacian)
    take = vectors[:, 1 : k + 1].float()
    out[:, : take.shape[1]] = take
    return out


def random_walk_pe(edge_index: Tensor, num_nodes: int, steps: int) -> Tensor:
    """Return probabilities of random walks of 1..steps steps (RWSE) (N, steps); sparse, so large graphs fit."""
    if steps == 0:
        return torch.zeros(num_nodes, 0)
    e = undirected(edge_index, num_nodes)
    weight = 1.0 / torch.bincount(e[0], minlength=num_nodes).float().clamp(min=1)[e[0]]  # P[src, dst]
    out = torch.zeros(num_nodes, steps)
    block = 256  # start nodes walked together: memory O(E * block)
    for start in range(0, num_nodes, block):
        stop = min(num_nodes, start + block)
        rows, cols = torch.arange(start, stop), torch.arange(stop - start)
        state = torch.zeros(num_nodes, stop - start)
        state[rows, cols] = 1.0
        for step in range(steps):
            # state[:, j]: where a walk from node start + j is after step + 1 steps.
            state = torch.zeros_like(state).index_add_(0, e[1], state[e[0]] * weight[:, None])
            out[start:stop, step] = state[rows, cols]
    return out


def log_degree(edge_index: Tensor, num_nodes: int) -> Tensor:
    """log(1 + degree) of every node in the undirected graph (N, 1)."""
    degree = torch.bincount(undirected(edge_index, num_nodes)[0], minlength=num_nodes).float()
    return torch.log1p(degree)[:, None]


def node_positions(edge_index: Tensor, num_nodes: int, k: int) -> Tensor:
    """Laplacian eigenvectors as fixed node coordinates within one graph (N, k).

    Unlike `laplacian_pe` (which the GPS model flips at random because signs differ between graphs), these
    are features of the nodes of one graph, so each sign is fixed by a rule that does not depend on node
    order (largest-magnitude entry positive), and they are scaled by sqrt(N) so entries are O(1) at any size.
    """
    vectors = laplacian_pe(edge_index, num_nodes, k)
    peak = vectors.gather(0, vectors.abs().argmax(0, keepdim=True))  # (1, k)
    return vectors * torch.where(peak < 0, -1.0, 1.0) * num_nodes**0.5


def shortest_path_distances(edge_index: Tensor, num_nodes: int, max_distance: int) -> Tensor:
    """Hop distances clipped to max_distance, with max_distance + 1 for unreachable pairs (N, N) uint8.

    (Unreachable pairs get their own bucket: e.g. one cycle vs two disjoint cycles differ exactly there.)"""
    e = undirected(edge_index, num_nodes).numpy()
    graph = coo_matrix((np.ones(e.shape[1]), (e[0], e[1])), shape=(num_nodes, num_nodes)).tocsr()
    distance = shortest_path(graph, method="D", unweighted=True, directed=False)
    distance = np.where(np.isfinite(distance), np.minimum(distance, max_distance), max_distance + 1)
    return torch.from_numpy(distance.astype(np.uint8))


class NeighbourSampler:
    """GraphSAGE-style neighbour sampling (what PyG's NeighborLoader does with pyg-lib, here in plain torch).

    `sample(seeds, generator)` draws up to `fanout[i]` neighbours per frontier node at hop i (with
    replacement, duplicates merged) and returns the sampled node ids (seeds first) and the induced edges
    among them, so a mini-batch costs O(S * prod(fanout)) memory whatever the graph's size.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, fanout: list[int]) -> None:
        self.num_nodes = num_nodes
        self.fanout = list(fanout)
        # Incoming neighbours of each node in CSR form: messages flow source -> target.
        order = torch.argsort(edge_index[1], stable=True)
        self.sources = edge_index[0, order]
        self.rowptr = torch.zeros(num_nodes + 1, dtype=torch.long)
        self.rowptr[1:] = torch.cumsum(torch.bincount(edge_index[1], minlength=num_nodes), 0)
        # Scratch node -> position map, reset after each call: no O(N) allocation per sample.
        self._position = torch.full((num_nodes,), -1, dtype=torch.long)

    def _incoming(self, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """All incoming edges of `nodes`: (sources, index into `nodes` of the target)."""
        start, degree = self.rowptr[nodes], self.rowptr[nodes + 1] - self.rowptr[nodes]
        total = int(degree.sum())
        first = torch.repeat_interleave(torch.cumsum(degree, 0) - degree, degree)
        slot = torch.repeat_interleave(start, degree) + torch.arange(total) - first
        return self.sources[slot], torch.repeat_interleave(torch.arange(nodes.numel()), degree)

    def sample(self, seeds: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """seeds (S,) distinct -> (nodes (N,), edge_index (2, E) relabelled to positions in `nodes`)."""
        position = self._position
        ordered, frontier, count = [seeds], seeds, seeds.numel()
        position[seeds] = torch.arange(count)
        try:
            for k in self.fanout:
                start, degree = self.rowptr[frontier], self.rowptr[frontier + 1] - self.rowptr[frontier]
                has = degree > 0
                start, degree = start[has], degree[has]
                if start.numel() == 0:
                    break
                pick = (torch.rand(start.numel(), k, generator=generator) * degree[:, None]).long()
                found = self.sources[(start[:, None] + pick).flatten()].unique()
                found = found[position[found] < 0]
                position[found] = torch.arange(count, count + found.numel())
                count += found.numel()
                ordered.append(found)
                frontier = found
            nodes = torch.cat(ordered)
            sources, target = self._incoming(nodes)
            local = position[sources]
            keep = local >= 0
            return nodes, torch.stack([local[keep], target[keep]])
        finally:
            position[torch.cat(ordered)] = -1
