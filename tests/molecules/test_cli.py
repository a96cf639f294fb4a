"""End to end through the CLI: label -> train -> evaluate --json -> predict (extxyz, csv) -> relax, the ASE
calculator, and bad input (exit code 2, one line)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from rdkit import Chem
from rdkit.Chem import AllChem

from panformer.engine.cli import load_model
from panformer.engine.config import list_recipes, load_recipe
from panformer.molecules.domain import MoleculeRecipe, MoleculesDomain
from panformer.molecules.model import random_rotations
from panformer.molecules.structures import Structure, read_structures, write_extxyz
from tests.cli import assert_user_error
from tests.molecules.helpers import SMILES, cli, water, write_smiles

RECIPE = """
description: tiny test recipe
data:
  source: {data}
  val_fraction: 0.2
  test_fraction: 0.2
model:
  name: coordformer
  dim: 16
  depth: 1
  num_heads: 2
  forces: conservative
train:
  epochs: 2
  batch_size: 8
  lr: 0.003
  device: cpu
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("molecules")
    smiles = write_smiles(folder / "train.smi", [*SMILES, "C1CC("])  # one malformed entry, skipped
    labelled = folder / "labelled.extxyz"
    result = cli("label", str(smiles), "--output", str(labelled), "--conformers", "3", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "1 molecules skipped" in result.stderr
    recipe = folder / "tiny.yaml"
    recipe.write_text(RECIPE.format(data=labelled))
    result = cli("train", "--recipe", str(recipe), "--out", str(folder / "run"))
    assert result.returncode == 0, result.stderr
    return folder


def test_train_writes_a_run_and_evaluate_prints_json(run):
    metrics = json.loads((run / "run" / "metrics.json").read_text())
    assert metrics["test"]["energy_mae_eV"] > 0
    result = cli("evaluate", "--checkpoint", str(run / "run"), "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["energy_mae_eV"] == pytest.approx(metrics["test"]["energy_mae_eV"], rel=1e-4)
    assert {"force_mae_eV_A", "force_cosine", "energy_mae_meV_per_atom", "equivariance_error_eV_A"} <= set(scores)
    # The invariance errors over random rotations of the test set, with the default mode (frames) and without.
    assert scores["invariance_energy_error_eV"] < 1e-3 * scores["invariance_energy_error_eV_off"]
    assert scores["invariance_force_error_eV_A"] < 1e-2 * scores["invariance_force_error_eV_A_off"]
    assert scores["predict_ms_per_structure"] > 0 and scores["predict_ms_per_structure_off"] > 0
    assert "invariance: frames" in result.stderr


def test_evaluate_plot_writes_the_parity_plot_and_attention_against_distance(run):
    plot = run / "eval.png"
    result = cli("evaluate", "--checkpoint", str(run / "run"), "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    stem = run / "eval-attention-distance"
    assert plot.read_bytes()[:4] == Path(f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    assert f"attention vs distance: {stem}.png" in result.stderr
    summary = json.loads(Path(f"{stem}.json").read_text())
    assert list(summary["layers"]) == ["blocks.0.attn"]  # the tiny recipe: depth 1, 2 heads
    layer = summary["layers"]["blocks.0.attn"]
    assert len(layer["effective_radius_A"]) == len(layer["self_weight"]) == 2
    assert min(layer["effective_radius_A"]) > 0 and max(layer["self_weight"]) < 1
    header = Path(f"{stem}.csv").read_text().splitlines()[0]
    assert header == "layer,head,distance_from_A,distance_to_A,pairs,mean_weight,relative_to_uniform"


def test_calculator_and_predict_are_rotation_invariant(run):
    from panformer.molecules.calculator import PanformerCalculator

    structures = read_structures(run / "labelled.extxyz").structures[:6]
    rotations = random_rotations(len(structures), generator=torch.Generator().manual_seed(0),
                                 dtype=torch.float64).numpy()
    rotated = [Structure(s.numbers, s.positions @ r.T, molecule=s.molecule, name=s.name)
               for s, r in zip(structures, rotations, strict=True)]
    changes = {}
    for invariance in (None, "none"):  # the checkpoint's mode (frames), then the raw model
        calculator = PanformerCalculator(run / "run", invariance=invariance)
        energy_changes = []
        for s, t, r in zip(structures, rotated, rotations, strict=True):
            atoms, turned = Atoms(numbers=s.numbers, positions=s.positions), Atoms(numbers=t.numbers,
                                                                                    positions=t.positions)
            atoms.calc = turned.calc = calculator
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            energy_changes.append(abs(turned.get_potential_energy() - energy) / max(abs(energy), 1.0))
            if invariance is None:
                np.testing.assert_allclose(turned.get_forces(), forces @ r.T, atol=1e-4 * np.abs(forces).max())
        changes[invariance] = max(energy_changes)
    assert changes[None] < 1e-4 < changes["none"]
    # predict (in-process, as the CLI runs it): the same energies for the rotated file, forces turned with it.
    write_extxyz(run / "turned.extxyz", rotated)
    write_extxyz(run / "six.extxyz", structures)
    loaded = load_model(MoleculesDomain(), run / "run", torch.device("cpu"))
    for name in ("six", "turned"):
        loaded.task.predict(loaded.model, recipe=loaded.recipe, info=loaded.info, input_path=run / f"{name}.extxyz",
                            output_path=run / f"{name}-pred.extxyz", device=torch.device("cpu"))
    plain = read_structures(run / "six-pred.extxyz").structures
    turned = read_structures(run / "turned-pred.extxyz").structures
    for p, q, r in zip(plain, turned, rotations, strict=True):
        assert q.energy == pytest.approx(p.energy, rel=1e-4, abs=1e-4)
        np.testing.assert_allclose(q.forces, p.forces @ r.T, atol=1e-4 * np.abs(p.forces).max())


def test_predict_writes_energies_and_forces_as_extxyz_and_csv(run):
    source = run / "labelled.extxyz"
    count = len(read_structures(source).structures)
    result = cli("predict", "--checkpoint", str(run / "run"), "--input", str(source),
                 "--output", str(run / "pred.extxyz"), "--plot")
    assert result.returncode == 0, result.stderr
    predicted = read_structures(run / "pred.extxyz").structures
    assert len(predicted) == count and predicted[0].forces.shape == (len(predicted[0]), 3)
    assert (run / "pred.png").is_file()
    # CSV through the same task code, in-process (one subprocess less).
    loaded = load_model(MoleculesDomain(), run / "run", torch.device("cpu"))
    loaded.task.predict(loaded.model, recipe=loaded.recipe, info=loaded.info, input_path=source,
                        output_path=run / "pred.csv", device=torch.device("cpu"))
    rows = (run / "pred.csv").read_text().splitlines()
    assert len(rows) == 1 + sum(len(s) for s in predicted)
    assert float(rows[1].split(",")[8]) == pytest.approx(predicted[0].energy, abs=1e-5)


def test_calculator_forces_are_minus_the_energy_gradient_and_relax_lowers_the_energy(run):
    from panformer.molecules.calculator import PanformerCalculator

    s = read_structures(run / "labelled.extxyz").structures[0]
    atoms = Atoms(numbers=s.numbers, positions=s.positions)
    atoms.calc = PanformerCalculator(run / "run")
    forces = atoms.get_forces()
    h = 1e-3
    for atom, axis in [(0, 0), (2, 1)]:
        shifted = atoms.copy()
        shifted.calc = atoms.calc
        shifted.positions[atom, axis] += h
        plus = shifted.get_potential_energy()
        shifted.positions[atom, axis] -= 2 * h
        minus = shifted.get_potential_energy()
        assert forces[atom, axis] == pytest.approx(-(plus - minus) / (2 * h), rel=2e-2, abs=2e-3)
    one = write_extxyz(run / "one.extxyz", [s])
    result = cli("relax", str(one), "--checkpoint", str(run / "run"), "--output", str(run / "relaxed.extxyz"),
                 "--trajectory", str(run / "traj.extxyz"), "--steps", "15", "--fmax", "1e-4")
    assert result.returncode == 0, result.stderr
    (final,) = read_structures(run / "relaxed.extxyz").structures
    frames = read_structures(run / "traj.extxyz").structures
    assert len(frames) >= 2 and final.energy <= frames[0].energy + 1e-6


def test_predict_skip_bad_reports_the_bad_record(run):
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    flat = Chem.AddHs(Chem.MolFromSmiles("CCO"))  # no conformer: a coordinate-free record
    path = run / "mixed.sdf"
    with Chem.SDWriter(str(path)) as writer:
        writer.write(mol)
        writer.write(flat)
    out = run / "mixed.extxyz"
    result = cli("predict", "--checkpoint", str(run / "run"), "--input", str(path), "--output", str(out), "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert "#2" in result.stderr and len(read_structures(out).structures) == 1


def test_bad_inputs_exit_2_with_one_line(run, tmp_path):
    bad_smiles = write_smiles(tmp_path / "bad.smi", ["C1CC(", "((("])
    assert_user_error(cli("label", str(bad_smiles), "--output", str(tmp_path / "x.extxyz"), "--workers", "1"),
                      "bad.smi", "no molecule could be labelled")
    no_energy = water(tmp_path / "noenergy.extxyz", energy=None, forces=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(data=no_energy))
    assert_user_error(cli("train", "--recipe", str(recipe), "--out", str(tmp_path / "r")), "has no energy")
    silane = write_extxyz(tmp_path / "si.extxyz", [Structure(np.array([14, 1, 1, 1, 1]), np.eye(5, 3) * 1.5,
                                                             name="silane", molecule="SiH4")])
    assert_user_error(cli("predict", "--checkpoint", str(run / "run"), "--input", str(silane),
                          "--output", str(tmp_path / "p.extxyz")), "silane", "Si")
    assert not (tmp_path / "p.extxyz").exists()
    assert_user_error(cli("predict", "--checkpoint", str(run / "run"), "--input", str(run / "labelled.extxyz"),
                          "--output", str(tmp_path / "p.extxyz"), "--invariance", "sphere"), "--invariance", "frames")
    assert not (tmp_path / "p.extxyz").exists()


def test_the_shipped_recipes_validate():
    names = list_recipes("molecules")
    assert {"demo", "coordformer", "schnet", "coordformer-conservative", "coordformer-distance-bias"} <= set(names)
    for name in names:
        recipe = load_recipe(MoleculeRecipe, "molecules", name)
        assert recipe.description
