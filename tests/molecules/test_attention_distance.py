"""The attention-vs-distance analysis (the paper's): closed forms for uniform and distance-biased attention,
and the files it writes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from panformer.molecules.attention_distance import (
    attention_by_distance,
    plot_attention_distance,
    write_attention_distance,
)
from panformer.molecules.domain import CoordFormerConfig, build_model, collate
from panformer.molecules.structures import Structure


def _molecules(count: int = 12) -> list[Structure]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        n = 4 + i % 5  # padded batches: molecules of 4 to 8 atoms
        out.append(Structure(rng.choice([1, 6, 8], size=n), rng.normal(scale=1.5, size=(n, 3)), energy=0.0,
                             molecule=f"m{i}", name=f"m{i}"))
    return out


def _batches(structures: list[Structure], size: int = 5):
    return [collate(structures[start:start + size]) for start in range(0, len(structures), size)]


def test_uniform_attention_is_one_times_uniform_in_every_bin_and_has_the_uniform_radius():
    torch.manual_seed(0)
    model = build_model(CoordFormerConfig(dim=16, depth=2, num_heads=2))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q_proj.weight.zero_()  # q = 0: every real atom gets weight 1/N
    structures = _molecules()
    result = attention_by_distance(model, _batches(structures), device=torch.device("cpu"))
    assert result.layers == ["blocks.0.attn", "blocks.1.attn"]
    populated = result.pairs > 0
    assert result.pairs.sum() == sum(len(s) * (len(s) - 1) for s in structures)  # ordered pairs, no self
    assert np.allclose(result.mean_relative()[:, :, populated], 1.0, atol=1e-5)
    summary = result.summary()
    atoms = sum(len(s) for s in structures)
    assert summary["query_atoms"] == atoms
    # Uniform attention: each atom's mean distance to the atoms of its molecule (itself at 0 included).
    expected_radius = np.concatenate([np.linalg.norm(s.positions[:, None] - s.positions[None], axis=-1).mean(1)
                                      for s in structures]).mean()
    assert summary["uniform_radius_A"] == pytest.approx(expected_radius, abs=1e-3)
    for layer in summary["layers"].values():
        assert layer["effective_radius_A"] == pytest.approx([expected_radius] * 2, abs=1e-3)
        assert layer["self_weight"] == pytest.approx([np.mean([1 / len(s) for s in structures
                                                               for _ in range(len(s))])] * 2, abs=1e-4)


def test_a_bias_towards_near_atoms_shows_as_weight_falling_with_distance(tmp_path):
    torch.manual_seed(0)
    model = build_model(CoordFormerConfig(dim=16, depth=1, num_heads=2, distance_bias=True, distance_rbf=8))
    with torch.no_grad():
        model.blocks[0].attn.q_proj.weight.zero_()
        bias = model.blocks[0].bias  # radial functions -> per-head bias: favour the near centres
        bias.proj.weight.copy_(torch.linspace(6.0, -6.0, 8).expand(2, 8))
    structures = _molecules(40)
    result = attention_by_distance(model, _batches(structures, 8), device=torch.device("cpu"))
    summary = result.summary()["layers"]["blocks.0.attn"]
    assert all(radius < result.summary()["uniform_radius_A"] for radius in summary["effective_radius_A"])
    assert all(rho < -0.9 for rho in summary["distance_rank_correlation"])
    written = write_attention_distance(result, tmp_path / "eval-attention-distance")
    assert [p.name for p in written] == ["eval-attention-distance.png", "eval-attention-distance.csv",
                                         "eval-attention-distance.json"]
    assert written[0].read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(written[1].open()))
    assert len(rows) == 2 * len(result.pairs)  # one row per head and distance bin
    assert rows[0]["layer"] == "blocks.0.attn" and rows[0]["distance_from_A"] == "0"
    assert rows[-1]["distance_to_A"] == "inf"
    numbers = json.loads(written[2].read_text())
    assert numbers["layers"]["blocks.0.attn"] == summary
    assert numbers["bins_A"][0] == [0.0, 0.5] and numbers["bins_A"][-1] == [10.0, None]
    assert numbers["pairs"][0] == 0 and summary["mean_weight"][0][0] is None  # no pair nearer than 0.5 Å
    replotted = plot_attention_distance(numbers, tmp_path / "again.png")  # a saved JSON draws the same figure
    assert replotted.read_bytes()[:4] == b"\x89PNG"
