"""Models: conservative forces are -dE/dx, padding changes nothing, symmetry where it is exact, statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panformer.engine.domain import Splits
from panformer.molecules.domain import (
    CoordFormerConfig,
    EnergyForceTask,
    LossConfig,
    SchNetConfig,
    StructureDataset,
    build_model,
    collate,
)
from panformer.molecules.model import random_rotations
from panformer.molecules.structures import Structure


def _molecules(count: int = 3, seed: int = 0) -> list[Structure]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = 4 + i
        numbers = rng.choice([1, 6, 8], size=n)
        out.append(Structure(numbers, rng.normal(scale=1.2, size=(n, 3)), energy=float(rng.normal()),
                             forces=rng.normal(size=(n, 3)), molecule=f"m{i}", name=f"m{i}"))
    return out


def _batch(structures):
    batch = collate(structures)
    return batch["numbers"], batch["positions"].double(), batch["valid"]


@pytest.mark.parametrize("cfg", [
    CoordFormerConfig(dim=32, depth=2, forces="conservative"),
    CoordFormerConfig(dim=32, depth=2, forces="conservative", distance_bias=True),
    CoordFormerConfig(dim=32, depth=1, forces="conservative", coordinate_embedding="random-fourier",
                      distance_bias=True, distance_rbf=8, distance_hidden=8),
    CoordFormerConfig(dim=32, depth=1, forces="conservative", coordinate_embedding="mlp"),
    SchNetConfig(hidden=16, filters=16, interactions=2),
], ids=["coordformer", "distance-bias", "random-fourier-mlp-bias", "mlp-embedding", "schnet"])
def test_conservative_forces_match_finite_differences_of_the_energy(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).double().eval()
    numbers, positions, valid = _batch(_molecules())
    _, forces = model(numbers, positions, valid)
    for b, atom, axis in [(0, 1, 0), (1, 3, 2), (2, 0, 1)]:
        shift = torch.zeros_like(positions)
        shift[b, atom, axis] = 1e-5
        plus, _ = model(numbers, positions + shift, valid)
        minus, _ = model(numbers, positions - shift, valid)
        slope = (plus[b] - minus[b]) / 2e-5
        assert float(forces[b, atom, axis]) == pytest.approx(-float(slope), rel=1e-4, abs=1e-7)


def test_padding_atoms_change_nothing():
    torch.manual_seed(0)
    model = build_model(CoordFormerConfig(dim=32, depth=2, forces="direct")).eval()
    small, large = _molecules(2)
    alone_e, alone_f = model(*[t.float() if t.is_floating_point() else t for t in _batch([small])])
    padded_e, padded_f = model(*[t.float() if t.is_floating_point() else t for t in _batch([small, large])])
    assert torch.allclose(alone_e[0], padded_e[0], atol=1e-4)
    assert torch.allclose(alone_f[0], padded_f[0, : len(small)], atol=1e-4)
    assert padded_f[0, len(small):].abs().max() == 0


def test_schnet_energy_is_rotation_invariant_and_forces_equivariant():
    torch.manual_seed(0)
    model = build_model(SchNetConfig(hidden=16, filters=16, interactions=2)).double().eval()
    numbers, positions, valid = _batch(_molecules())
    rotation = random_rotations(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    energy, forces = model(numbers, positions, valid)
    rotated_energy, rotated_forces = model(numbers, positions @ rotation.transpose(1, 2), valid)
    assert torch.allclose(energy, rotated_energy, atol=1e-8)
    assert torch.allclose(rotated_forces, forces @ rotation.transpose(1, 2), atol=1e-8)
    assert torch.allclose(torch.det(rotation), torch.ones(3, dtype=torch.float64))


def test_fit_statistics_recovers_per_element_reference_energies():
    weights = {1: -13.6, 6: -1029.0, 8: -2041.0}
    structures = _molecules(12, seed=3)
    for s in structures:
        s.energy = sum(weights[int(z)] for z in s.numbers)
    splits = Splits(StructureDataset(structures), StructureDataset([]), StructureDataset([]),
                    info={"elements": [1, 6, 8]}, fingerprint="x")
    model = build_model(CoordFormerConfig(dim=16, depth=1))
    EnergyForceTask().fit_statistics(model, splits)
    for z, w in weights.items():
        assert float(model.element_energy[z]) == pytest.approx(w, rel=1e-4)
    rms = np.sqrt(np.mean(np.concatenate([s.forces for s in structures]) ** 2))
    assert float(model.scale) == pytest.approx(rms, rel=1e-5)
    assert float(model.energy_scale) == pytest.approx(rms, rel=1e-5)  # force RMS x 1 Å
    # Energies are exactly additive here, so the residual std per molecule falls to its floor.
    assert float(model.energy_norm) < 1e-3


def test_energy_norm_is_the_residual_std_per_molecule():
    structures = _molecules(12, seed=4)
    splits = Splits(StructureDataset(structures), StructureDataset([]), StructureDataset([]),
                    info={"elements": [1, 6, 8]}, fingerprint="x")
    model = build_model(CoordFormerConfig(dim=16, depth=1))
    EnergyForceTask().fit_statistics(model, splits)
    reference = np.array([float(model.element_energy[torch.as_tensor(s.numbers)].sum()) for s in structures])
    residual = np.array([s.energy for s in structures]) - reference
    assert float(model.energy_norm) == pytest.approx(residual.std(), rel=1e-4)


def test_checkpoints_without_energy_scales_still_load():
    model = build_model(CoordFormerConfig(dim=16, depth=1))
    state = {k: v for k, v in model.state_dict().items() if k not in ("energy_scale", "energy_norm")}
    state["scale"] = torch.tensor(2.5)
    model.load_state_dict(state)
    assert float(model.energy_scale) == float(model.energy_norm) == 2.5


def test_training_step_reduces_the_loss_and_eval_reports_rotation_errors():
    torch.manual_seed(0)
    task = EnergyForceTask(loss=LossConfig(rotate=False, energy_loss="huber"))
    structures = _molecules(4)
    splits = Splits(StructureDataset(structures), StructureDataset([]), StructureDataset([]),
                    info={"elements": [1, 6, 8]}, fingerprint="x")
    model = build_model(CoordFormerConfig(dim=32, depth=1, forces="conservative"))
    task.fit_statistics(model, splits)
    batch = collate(structures)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for _ in range(30):
        loss, _ = task.loss(model, batch)
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.7 * first
    model.eval()
    results = {}
    for invariance in ("frames", "none"):
        task.invariance = invariance
        metrics = task.metrics({})
        with torch.no_grad():
            _, outputs = task.loss(model, batch)
        metrics.update(batch, outputs)
        results[invariance] = metrics.compute()
    assert {"energy_mae_eV", "force_cosine", "rotation_energy_change_meV", "equivariance_error_eV_A",
            "baseline_energy_mae_eV", "baseline_force_mae_eV_A"} <= set(results["frames"])
    # The raw coordinate transformer is not invariant; evaluated in its frames (the default) it is.
    assert results["none"]["rotation_energy_change_meV"] > 1.0
    assert results["frames"]["rotation_energy_change_meV"] < 1e-3 * results["none"]["rotation_energy_change_meV"]
    assert results["frames"]["equivariance_error_eV_A"] < 1e-2 * results["none"]["equivariance_error_eV_A"]
