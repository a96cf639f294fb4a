"""Structural encodings and the neighbour sampler against direct computations."""

from __future__ import annotations

import torch

from panformer.graphs.structure import (
    NeighbourSampler,
    laplacian_pe,
    random_walk_pe,
    shortest_path_distances,
    undirected,
)


def cycle(n: int) -> torch.Tensor:
    a = torch.arange(n)
    return torch.stack([a, (a + 1) % n])


def test_random_walk_pe_matches_matrix_powers():
    edges = undirected(torch.tensor([[0, 1, 2, 2, 3], [1, 2, 0, 3, 4]]), 5)
    adjacency = torch.zeros(5, 5)
    adjacency[edges[0], edges[1]] = 1
    walk = adjacency / adjacency.sum(1, keepdim=True)
    expected = torch.stack([torch.linalg.matrix_power(walk, k).diagonal() for k in range(1, 7)], 1)
    torch.testing.assert_close(random_walk_pe(edges, 5, 6), expected)


def test_laplacian_pe_are_eigenvectors_of_the_normalised_laplacian():
    edges = undirected(cycle(7), 7)
    pe = laplacian_pe(edges, 7, 3).double()
    adjacency = torch.zeros(7, 7, dtype=torch.float64)
    adjacency[edges[0], edges[1]] = 1
    laplacian = torch.eye(7, dtype=torch.float64) - adjacency / 2  # every degree is 2
    for j in range(3):
        v = pe[:, j]
        assert abs(float(v.norm()) - 1) < 1e-5
        eigenvalue = float(v @ laplacian @ v)
        torch.testing.assert_close(laplacian @ v, eigenvalue * v, atol=1e-5, rtol=1e-5)
        assert eigenvalue > 1e-6  # the trivial (constant) eigenvector is skipped
    # fewer nodes than requested vectors: zero padding
    assert laplacian_pe(undirected(cycle(3), 3), 3, 5)[:, 2:].abs().sum() == 0


def test_shortest_paths_clip_and_mark_unreachable():
    # path 0-1-2-3-4 plus an isolated node 5
    edges = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    spd = shortest_path_distances(edges, 6, max_distance=3)
    assert spd[0, 0] == 0 and spd[0, 2] == 2 and spd[2, 0] == 2
    assert spd[0, 4] == 3  # 4 hops, clipped to max_distance
    assert spd[0, 5] == 4 and spd[5, 5] == 0  # unreachable = max_distance + 1


def test_neighbour_sampler_bounds_memory_and_keeps_real_edges():
    generator = torch.Generator().manual_seed(0)
    n = 2000
    edges = undirected(torch.randint(0, n, (2, 20000), generator=generator), n)
    sampler = NeighbourSampler(edges, n, [5, 3])
    seeds = torch.tensor([0, 1, 2])
    nodes, sub = sampler.sample(seeds, generator)
    assert torch.equal(nodes[:3], seeds)
    assert nodes.numel() <= 3 * (1 + 5 + 5 * 3)
    assert nodes.unique().numel() == nodes.numel()
    existing = set(map(tuple, edges.t().tolist()))
    assert all((int(nodes[s]), int(nodes[d])) in existing for s, d in sub.t().tolist())
    assert sub.shape[1] > 0
