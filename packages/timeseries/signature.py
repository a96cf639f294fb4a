"""Truncated path signatures (the SigFormer idea): order-aware summary features of short paths.

The signature of a path X: [0, 1] -> R^d is the sequence of its iterated integrals; level k holds the
d^k integrals of dX^{i1} ... dX^{ik} over 0 < t1 < ... < tk < 1. Truncated at depth 2 or 3 it is a
small, fixed-size feature that sees the order of events (level 2 holds the Lévy areas), not just the
values, and it is differentiable in the path.

For a piecewise-linear path with increments Δ_1..Δ_n, Chen's identity (the signature of a
concatenation is the tensor product of the signatures) gives every level as cumulative sums:

    S1 = Σ_k Δ_k
    S2 = Σ_k (S1_{<k} ⊗ Δ_k + Δ_k^{⊗2} / 2)
    S3 = Σ_k (S2_{<k} ⊗ Δ_k + S1_{<k} ⊗ Δ_k^{⊗2} / 2 + Δ_k^{⊗3} / 6)

where S_{<k} is the signature of the path up to the start of segment k. That is what `signature`
computes, vectorised over the segments (no Python loop), in plain torch so it runs on any device.

Legend: T path points, d path dimension, N tokens, P points per token, D model width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def signature_size(dim: int, depth: int) -> int:
    """Number of features of a depth-truncated signature of a d-dimensional path (levels 1..depth)."""
    return sum(dim**k for k in range(1, depth + 1))


def _outer(a: Tensor, b: Tensor) -> Tensor:
    """(..., m), (..., d) -> (..., m * d), the flattened tensor product."""
    return (a.unsqueeze(-1) * b.unsqueeze(-2)).flatten(-2)


def _exclusive_cumsum(x: Tensor, dim: int) -> Tensor:
    return x.cumsum(dim) - x


def signature(path: Tensor, depth: int) -> Tensor:
    """Truncated signature of piecewise-linear paths.

    path (..., T, d) with T >= 1 -> (..., d + d^2 [+ d^3]) for depth 1, 2 or 3 (levels concatenated,
    each flattened row-major: index (i1, i2, i3) -> i1 d^2 + i2 d + i3).
    """
    if depth not in (1, 2, 3):
        raise ValueError(f"signature depth must be 1, 2 or 3, got {depth}")
    delta = path.diff(dim=-2)  # (..., T-1, d): one increment per linear segment
    level1_before = _exclusive_cumsum(delta, dim=-2)  # S1 of the path before each segment
    levels = [delta.sum(-2)]
    if depth >= 2:
        delta2 = _outer(delta, delta)
        level2_steps = _outer(level1_before, delta) + delta2 / 2
        levels.append(level2_steps.sum(-2))
    if depth >= 3:
        level2_before = _exclusive_cumsum(level2_steps, dim=-2)
        level3_steps = _outer(level2_before, delta) + _outer(level1_before, delta2) / 2 + _outer(delta2, delta) / 6
        levels.append(level3_steps.sum(-2))
    return torch.cat(levels, dim=-1)


def time_augment(path: Tensor) -> Tensor:
    """Prepend a time channel running 0 -> 1: (..., T, d) -> (..., T, d + 1).

    Without it, the signature cannot tell how fast the path moved, and a constant path has a zero
    signature."""
    steps = path.shape[-2]
    t = torch.linspace(0.0, 1.0, steps, device=path.device, dtype=path.dtype)
    return torch.cat([t.expand(*path.shape[:-1]).unsqueeze(-1), path], dim=-1)


class SignatureEmbedding(nn.Module):
    """Embed each token's window by its truncated signature: (..., P, d) -> (..., D).

    The window is time-augmented (d + 1 dimensions), its signature layer-normalised (levels differ in
    scale by orders of magnitude) and projected to the model width. Add the result to the token
    embedding of the same window (SigFormer-style signature features alongside attention).
    """

    def __init__(self, path_dim: int, dim: int, *, depth: int = 2) -> None:
        super().__init__()
        self.depth = depth
        features = signature_size(path_dim + 1, depth)
        self.norm = nn.LayerNorm(features)
        self.proj = nn.Linear(features, dim)

    def forward(self, windows: Tensor) -> Tensor:
        """windows (..., P, d) -> (..., D)."""
        features = signature(time_augment(windows.float()), self.depth)
        return self.proj(self.norm(features))
