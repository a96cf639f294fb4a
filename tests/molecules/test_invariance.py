"""Rotation invariance at inference (panformer.molecules.frames): energies invariant and forces equivariant
for ANY weights of the coordinate transformer, conservative forces still -dE/dx, symmetric and linear
molecules, SchNet untouched, and the task's evaluation reporting the errors with and without it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from panformer.engine.domain import Splits
from panformer.engine.errors import UserError
from panformer.molecules.domain import (
    CoordFormerConfig,
    EnergyForceTask,
    MoleculeRecipe,
    SchNetConfig,
    StructureDataset,
    build_model,
    collate,
)
from panformer.molecules.frames import check_invariance, invariant_forward
from panformer.molecules.model import random_rotations
from panformer.molecules.structures import Structure


def _organic(count: int, seed: int = 0) -> list[Structure]:
    """Random compact molecules of 5 to 20 atoms (H, C, N, O), no symmetry."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.integers(5, 21))
        numbers = rng.choice([1, 1, 6, 6, 7, 8], size=n)
        out.append(Structure(numbers, rng.normal(scale=1.5, size=(n, 3)), energy=float(rng.normal()),
                             forces=rng.normal(size=(n, 3)), molecule=f"m{i}", name=f"m{i}"))
    return out


def _symmetric() -> list[Structure]:
    """Exactly symmetric and linear molecules: degenerate principal axes."""
    t = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) * 1.09 / math.sqrt(3)
    ring = np.array([[math.cos(a), math.sin(a), 0.0] for a in np.arange(6) * math.pi / 3])
    return [
        Structure(np.array([6, 1, 1, 1, 1]), np.vstack([[0, 0, 0], t]), molecule="methane", name="methane"),
        Structure(np.array([6] * 6 + [1] * 6), np.vstack([1.39 * ring, 2.47 * ring]), molecule="benzene",
                  name="benzene"),
        Structure(np.array([8, 6, 8]), np.array([[-1.16, 0, 0], [0, 0, 0], [1.16, 0, 0]]), molecule="co2",
                  name="co2"),
        Structure(np.array([1, 1]), np.array([[0, 0, 0.37], [0, 0, -0.37]]), molecule="h2", name="h2"),
        Structure(np.array([8]), np.zeros((1, 3)), molecule="o", name="o"),
    ]


def _rotation_errors(model, structures, *, mode: str, dtype=torch.float32, seed: int = 0):
    """Largest |E(Rx) - E(x)| relative to the energies' scale, and |F(Rx) - R F(x)| relative to the forces'."""
    batch = collate(structures)
    numbers, positions, valid = batch["numbers"], batch["positions"].to(dtype), batch["valid"]
    energy, forces = invariant_forward(model, numbers, positions, valid, mode=mode)
    energy_scale, force_scale = energy.abs().mean(), forces.norm(dim=-1).max()
    energy_error = force_error = 0.0
    for k in range(3):
        rotation = random_rotations(len(structures), generator=torch.Generator().manual_seed(seed + k), dtype=dtype)
        rotated = positions @ rotation.transpose(1, 2)
        rotated_energy, rotated_forces = invariant_forward(model, numbers, rotated, valid, mode=mode)
        energy_error = max(energy_error, float((rotated_energy - energy).abs().max() / energy_scale))
        expected = forces @ rotation.transpose(1, 2)
        force_error = max(force_error, float((rotated_forces - expected).norm(dim=-1).max() / force_scale))
    return energy_error, force_error


@pytest.mark.parametrize("forces", ["direct", "conservative"])
@pytest.mark.parametrize("mode", ["frames", "canonical"])
def test_any_weights_give_invariant_energies_and_equivariant_forces(forces, mode):
    structures = _organic(12)
    for seed in (0, 1):  # two random initialisations: nothing here is learned
        torch.manual_seed(seed)
        model = build_model(CoordFormerConfig(dim=32, depth=2, num_heads=4, forces=forces)).eval()
        energy_error, force_error = _rotation_errors(model, structures, mode=mode)
        assert energy_error < 1e-4 and force_error < 1e-3, (energy_error, force_error)
        # The raw model is far from invariant: this is what the mode buys.
        raw_energy_error, raw_force_error = _rotation_errors(model, structures, mode="none")
        assert raw_energy_error > 1e-2 and raw_force_error > 1e-1


@pytest.mark.parametrize("forces", ["direct", "conservative"])
def test_symmetric_and_linear_molecules_stay_invariant(forces):
    torch.manual_seed(0)
    model = build_model(CoordFormerConfig(dim=32, depth=2, num_heads=4, forces=forces)).eval()
    energy_error, force_error = _rotation_errors(model, _symmetric(), mode="frames")
    assert energy_error < 1e-4 and force_error < 1e-3, (energy_error, force_error)


@pytest.mark.parametrize("mode", ["frames", "canonical"])
def test_conservative_forces_through_the_frames_are_minus_the_energy_gradient(mode):
    torch.manual_seed(0)
    model = build_model(CoordFormerConfig(dim=32, depth=2, forces="conservative")).double().eval()
    batch = collate(_organic(3, seed=5))
    numbers, positions, valid = batch["numbers"], batch["positions"].double(), batch["valid"]
    _, forces = invariant_forward(model, numbers, positions, valid, mode=mode)
    for b, atom, axis in [(0, 1, 0), (1, 3, 2), (2, 0, 1)]:
        shift = torch.zeros_like(positions)
        shift[b, atom, axis] = 1e-5
        plus, _ = invariant_forward(model, numbers, positions + shift, valid, mode=mode)
        minus, _ = invariant_forward(model, numbers, positions - shift, valid, mode=mode)
        slope = (plus[b] - minus[b]) / 2e-5
        assert float(forces[b, atom, axis]) == pytest.approx(-float(slope), rel=1e-4, abs=1e-7)


def test_schnet_runs_without_frames():
    torch.manual_seed(0)
    model = build_model(SchNetConfig(hidden=16, filters=16, interactions=2)).eval()
    batch = collate(_organic(3))
    inputs = batch["numbers"], batch["positions"], batch["valid"]
    plain_energy, plain_forces = model(*inputs)
    energy, forces = invariant_forward(model, *inputs, mode="frames")
    assert torch.equal(energy, plain_energy) and torch.equal(forces, plain_forces)
    recipe = MoleculeRecipe.model_validate({"model": {"name": "schnet"}})
    from panformer.molecules.domain import MoleculesDomain

    assert MoleculesDomain().task(recipe).invariance == "none"


def test_the_recipe_default_is_frames_and_unknown_modes_are_user_errors():
    assert MoleculeRecipe().model.invariance == "frames"
    with pytest.raises(UserError, match="--invariance: unknown invariance mode 'sphere'"):
        check_invariance("sphere", where="--invariance")


def test_evaluation_reports_invariance_errors_with_and_without_the_mode():
    torch.manual_seed(0)
    structures = _organic(6, seed=2)
    splits = Splits(StructureDataset(structures[:3]), StructureDataset([]), StructureDataset(structures[3:]),
                    info={"elements": [1, 6, 7, 8]}, fingerprint="x")
    recipe = MoleculeRecipe.model_validate({"model": {"dim": 16, "depth": 1, "num_heads": 2}})
    task = EnergyForceTask(invariance="frames")
    model = build_model(recipe.model)
    task.fit_statistics(model, splits)
    extras = task.evaluation_extras(model.eval(), recipe=recipe, info=splits.info, splits=splits,
                                    device=torch.device("cpu"))
    assert set(extras) == {"invariance_energy_error_eV", "invariance_force_error_eV_A", "predict_ms_per_structure",
                           "invariance_energy_error_eV_off", "invariance_force_error_eV_A_off",
                           "predict_ms_per_structure_off"}
    assert extras["invariance_energy_error_eV"] < 1e-3 * extras["invariance_energy_error_eV_off"]
    assert extras["invariance_force_error_eV_A"] < 1e-2 * extras["invariance_force_error_eV_A_off"]
    assert extras["predict_ms_per_structure"] > 0
