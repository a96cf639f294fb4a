"""Truncated path signatures against known values, Chen's identity and a brute-force definition."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from panformer.timeseries.models.patchtst import PatchTST
from panformer.timeseries.signature import (
    SignatureEmbedding,
    signature,
    signature_size,
    time_augment,
)


def levels(sig: torch.Tensor, dim: int, depth: int) -> list[torch.Tensor]:
    """Split a flat signature into its levels, each shaped (d,) * k."""
    out, start = [], 0
    for k in range(1, depth + 1):
        out.append(sig[start : start + dim**k].view((dim,) * k))
        start += dim**k
    return out


def brute_force_signature(path: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """Iterated integrals as sums over ordered small steps of a subdivided path.

    Level k is Σ over sub-steps s1 <= ... <= sk of Π dX^{ij}_{sj}, ties weighted 1/2 and 1/6 (the
    integral over the simplex within one linear piece), which is exact for piecewise-linear paths.
    It runs one sub-step at a time on a subdivided path: a different computation from the
    vectorised cumulative sums under test, over different segments.
    """
    refine = 7
    points = [path[0]]
    for a, b in itertools.pairwise(path):
        for j in range(1, refine + 1):
            points.append(a + (b - a) * j / refine)
    steps = torch.stack(points).diff(dim=0).double()  # (M, d)
    d = steps.shape[1]
    result = [steps.sum(0)]
    # level 2: Σ_{s<t} dX_s ⊗ dX_t + Σ_s dX_s ⊗ dX_s / 2
    before = steps.cumsum(0) - steps
    result.append(before.T @ steps + steps.T @ steps / 2)
    if depth >= 3:
        level2_before = torch.zeros(d, d, dtype=torch.float64)
        level3 = torch.zeros(d, d, d, dtype=torch.float64)
        level1_before = torch.zeros(d, dtype=torch.float64)
        for step in steps:
            sq = torch.outer(step, step)
            level3 += (level2_before[..., None] * step + level1_before[:, None, None] * sq[None] / 2
                       + sq[..., None] * step / 6)
            level2_before += torch.outer(level1_before, step) + sq / 2
            level1_before += step
        result.append(level3)
    return result


def tensor_product(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    """Truncated tensor-algebra product (1 + a1 + a2 + a3)(1 + b1 + b2 + b3), levels 1..3."""
    outer = lambda x, y: torch.tensordot(x, y, dims=0)  # noqa: E731
    return [
        a[0] + b[0],
        a[1] + outer(a[0], b[0]) + b[1],
        a[2] + outer(a[1], b[0]) + outer(a[0], b[1]) + b[2],
    ]


def test_straight_line_levels_are_tensor_powers_over_factorials():
    delta = torch.tensor([0.5, -2.0, 1.5], dtype=torch.float64)
    path = torch.stack([torch.zeros(3, dtype=torch.float64), delta])
    s1, s2, s3 = levels(signature(path, 3), 3, 3)
    torch.testing.assert_close(s1, delta)
    torch.testing.assert_close(s2, torch.outer(delta, delta) / 2)
    torch.testing.assert_close(s3, torch.einsum("i,j,k->ijk", delta, delta, delta) / math.factorial(3))


def test_levy_area_of_right_then_up():
    path = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    _, s2 = levels(signature(path, 2), 2, 2)
    # ∫∫_{t1<t2} dX1 dX2 = 1 (all of x moves before y), ∫∫ dX2 dX1 = 0
    torch.testing.assert_close(s2, torch.tensor([[0.5, 1.0], [0.0, 0.5]], dtype=torch.float64))


def test_matches_the_brute_force_definition():
    torch.manual_seed(0)
    path = torch.randn(5, 2, dtype=torch.float64)
    ours = levels(signature(path, 3), 2, 3)
    for mine, reference in zip(ours, brute_force_signature(path, 3), strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-9, atol=1e-9)


def test_chens_identity():
    torch.manual_seed(1)
    path = torch.randn(9, 3, dtype=torch.float64)
    first, second = path[:5], path[4:]
    whole = levels(signature(path, 3), 3, 3)
    joined = tensor_product(levels(signature(first, 3), 3, 3), levels(signature(second, 3), 3, 3))
    for a, b in zip(whole, joined, strict=True):
        torch.testing.assert_close(a, b)


def test_invariant_to_reparametrisation_and_translation():
    torch.manual_seed(2)
    path = torch.randn(4, 2, dtype=torch.float64)
    midpoint = (path[1] + path[2]) / 2
    refined = torch.cat([path[:2], midpoint[None], midpoint[None], path[2:]])  # same path, more points
    torch.testing.assert_close(signature(path, 3), signature(refined, 3))
    torch.testing.assert_close(signature(path, 3), signature(path + 7.0, 3))


def test_batched_shapes_sizes_and_gradients():
    path = torch.randn(2, 6, 5, 3, requires_grad=True)
    sig = signature(path, 2)
    assert sig.shape == (2, 6, signature_size(3, 2)) == (2, 6, 12)
    sig.sum().backward()
    assert path.grad is not None and torch.isfinite(path.grad).all()
    with pytest.raises(ValueError, match="depth"):
        signature(path, 4)


def test_time_augmentation_and_embedding():
    windows = torch.zeros(3, 4, 8, 1)  # a constant path: only the time channel moves
    augmented = time_augment(windows)
    assert augmented.shape == (3, 4, 8, 2)
    torch.testing.assert_close(augmented[0, 0, :, 0], torch.linspace(0, 1, 8))
    embedding = SignatureEmbedding(1, 16, depth=3)
    assert embedding(windows).shape == (3, 4, 16)


def test_patchtst_uses_signature_features():
    torch.manual_seed(0)
    model = PatchTST(channels=1, context=16, horizon=4, patch=8, stride=4, dim=16, depth=1, num_heads=2,
                     signature_depth=2).eval()
    x = torch.randn(2, 1, 16)
    before = model(x)
    with torch.no_grad():
        model.signature.proj.weight.mul_(3.0)
    assert not torch.allclose(before, model(x))
