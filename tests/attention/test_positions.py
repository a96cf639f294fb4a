"""Position encodings against their defining formulas and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_attention.masks import Causal
from shared_attention.positions import (
    ALiBi,
    CoPE,
    LearnedAbsolute,
    NoPosition,
    RoPE,
    Sinusoidal,
    grid_coordinates,
    rotate,
    sinusoidal_table,
)
from shared_attention.score_mods import ALiBi as ALiBiScoreMod

from .conftest import assert_close

SETTINGS = settings(max_examples=20, deadline=None)


def rope_by_complex(x, positions, base=10000.0):
    """RoPE as complex multiplication of pairs (x_i, x_{i+D/2}) by e^{i·pos·θ_i}."""
    half = x.shape[-1] // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64) / half)
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    z = z * torch.polar(torch.ones_like(theta), positions.double()[..., None] * theta)
    return torch.cat((z.real, z.imag), dim=-1).float()


@SETTINGS
@given(length=st.integers(1, 10), half=st.integers(1, 8), offset=st.integers(0, 50))
def test_rope_matches_complex_rotation(length, half, offset):
    x = torch.randn(2, 3, length, 2 * half)
    positions = torch.arange(offset, offset + length)
    assert_close(rotate(x, positions), rope_by_complex(x, positions))


@SETTINGS
@given(shift=st.integers(0, 100), length=st.integers(2, 8))
def test_rope_scores_depend_only_on_relative_position(shift, length):
    module = RoPE().build(dim=16, num_heads=2, head_dim=8)
    q, k = torch.randn(1, 2, length, 8), torch.randn(1, 2, length, 8)
    pos = torch.arange(length)
    q1, k1 = module.encode_qk(q, k, pos, pos)
    q2, k2 = module.encode_qk(q, k, pos + shift, pos + shift)
    assert_close(q1 @ k1.transpose(-1, -2), q2 @ k2.transpose(-1, -2), atol=1e-4, rtol=1e-4)


def test_rope_batched_positions_match_per_row():
    x = torch.randn(2, 3, 5, 8)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 9, 11, 13, 15]])
    out = rotate(x, positions)
    for b in range(2):
        assert_close(out[b], rotate(x[b : b + 1], positions[b])[0])


def test_axial_rope_rotates_each_part_by_its_axis():
    module = RoPE(axes=2, grid=(3, 4)).build(dim=32, num_heads=2, head_dim=8)
    coords = module.default_positions(12)
    assert torch.equal(coords, grid_coordinates((3, 4)))
    assert torch.equal(coords[5], torch.tensor([1, 1]))
    q, k = torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8)
    rq, _ = module.encode_qk(q, k, coords, coords)
    assert_close(rq[..., :4], rotate(q[..., :4], coords[:, 0]))
    assert_close(rq[..., 4:], rotate(q[..., 4:], coords[:, 1]))
    # Shifting the whole grid leaves scores unchanged.
    rq2, rk2 = module.encode_qk(q, k, coords + torch.tensor([5, 2]), coords + torch.tensor([5, 2]))
    rq1, rk1 = module.encode_qk(q, k, coords, coords)
    assert_close(rq1 @ rk1.transpose(-1, -2), rq2 @ rk2.transpose(-1, -2), atol=1e-4, rtol=1e-4)


def test_axial_rope_validates():
    with pytest.raises(ValueError):
        RoPE(axes=3).build(dim=30, num_heads=3, head_dim=10)
    with pytest.raises(ValueError):
        RoPE(axes=2, grid=(2, 3, 4))


def test_sinusoidal_formula():
    positions = torch.arange(7)
    table = sinusoidal_table(positions, 6)
    for p in range(7):
        for i in range(3):
            angle = p / 10000 ** (2 * i / 6)
            assert math.isclose(table[p, 2 * i].item(), math.sin(angle), abs_tol=1e-5)
            assert math.isclose(table[p, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-5)
    module = Sinusoidal().build(dim=6, num_heads=2, head_dim=3)
    x = torch.randn(2, 7, 6)
    assert_close(module.encode_input(x, positions), x + table)


def test_learned_absolute_adds_embedding_and_checks_range():
    module = LearnedAbsolute(max_len=10).build(dim=4, num_heads=1, head_dim=4)
    x = torch.randn(2, 5, 4)
    positions = torch.arange(5)
    assert_close(module.encode_input(x, positions), x + module.embedding.weight[:5])
    with pytest.raises(ValueError, match="max_len"):
        module.encode_input(torch.randn(1, 11, 4), torch.arange(11))


def test_alibi_position_gives_alibi_score_mod():
    module = ALiBi(causal=False).build(dim=8, num_heads=4, head_dim=2)
    assert module.score_mod(None, None, scale=1.0) == ALiBiScoreMod(num_heads=4, causal=False)


def test_no_position_is_identity():
    module = NoPosition().build(dim=8, num_heads=2, head_dim=4)
    x, q, k = torch.randn(1, 3, 8), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    pos = torch.arange(3)
    assert module.encode_input(x, pos) is x
    assert module.encode_qk(q, k, pos, pos) == (q, k)
    assert module.score_mod(q, k, scale=1.0) is None


def cope_reference(q, k, embedding, max_positions, scale):
    """CoPE written per (i, j) from the paper: causal gates, counted positions, interpolation."""
    batch, heads, length, _ = q.shape
    bias = torch.zeros(batch, heads, length, length, dtype=torch.float64)
    q, k, embedding = q.double(), k.double(), embedding.double()
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                gates = [torch.sigmoid(q[b, h, i] @ k[b, h, t] * scale) for t in range(i + 1)]
                for j in range(i + 1):
                    p = min(sum(gates[j : i + 1]).item(), max_positions - 1)
                    lo, hi = math.floor(p), math.ceil(p)
                    e = embedding[:, lo] * (1 - (p - lo)) + embedding[:, hi] * (p - lo)
                    bias[b, h, i, j] = q[b, h, i] @ e
    return bias


def test_cope_matches_paper_definition():
    module = CoPE(max_positions=4).build(dim=8, num_heads=2, head_dim=4)
    with torch.no_grad():
        module.embedding.normal_()
    q, k = torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 4)
    mod = module.score_mod(q, k, mask=Causal(), scale=0.5)
    expected = cope_reference(q, k, module.embedding, 4, 0.5)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert_close(mod.bias[..., causal].double(), expected[..., causal], atol=1e-5, rtol=1e-5)
