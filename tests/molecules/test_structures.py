"""Readers and writers: units converted on read, bad records named (or skipped), splits by molecule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem, RDConfig
from rdkit.Chem import AllChem

from panformer.engine.errors import UserError
from panformer.molecules.domain import fingerprint, molecule_split
from panformer.molecules.structures import (
    Structure,
    read_smiles,
    read_structures,
    write_csv,
    write_extxyz,
)
from panformer.molecules.units import KCAL_PER_MOL_IN_EV, KJ_PER_MOL_IN_EV


def _sdf(path: Path, smiles: str, props: dict[str, str], *, embed: bool = True) -> Path:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    if embed:
        AllChem.EmbedMolecule(mol, randomSeed=1)
    for key, value in props.items():
        mol.SetProp(key, value)
    mol.SetProp("_Name", smiles)
    with Chem.SDWriter(str(path)) as writer:
        writer.write(mol)
    return path


def test_sdf_energy_and_forces_are_converted_to_ev(tmp_path):
    n = Chem.AddHs(Chem.MolFromSmiles("CO")).GetNumAtoms()
    forces = " ".join(["1.0"] * (3 * n))
    path = _sdf(tmp_path / "m.sdf", "CO", {"energy_kcal_mol": "10.0", "forces_kcal_mol_A": forces})
    (s,) = read_structures(path).structures
    assert s.energy == pytest.approx(10 * KCAL_PER_MOL_IN_EV)
    assert s.forces.shape == (n, 3) and np.allclose(s.forces, KCAL_PER_MOL_IN_EV)
    assert s.positions.shape == (n, 3) and list(s.numbers[:2]) == [6, 8]


def test_bundled_egfr_sdf_energies_are_read_in_kj_per_mol():
    path = Path(RDConfig.RDContribDir) / "PBF" / "testData" / "egfr.sdf"
    first = read_structures(path).structures[0]
    raw = float(next(Chem.SDMolSupplier(str(path), removeHs=False)).GetProp("r_mmffld_Potential_Energy-OPLS_2005"))
    assert first.energy == pytest.approx(raw * KJ_PER_MOL_IN_EV)


def test_sdf_record_without_coordinates_is_named_or_skipped(tmp_path):
    path = _sdf(tmp_path / "flat.sdf", "CCO", {}, embed=False)
    with pytest.raises(UserError, match=r"record #1 \(CCO\) has no 3-D coordinates"):
        read_structures(path)
    good = _sdf(tmp_path / "good.sdf", "CC", {"energy_eV": "1.5"})
    both = tmp_path / "both.sdf"
    both.write_text(good.read_text() + path.read_text())
    result = read_structures(both, skip_bad=True)
    assert len(result.structures) == 1 and len(result.skipped) == 1 and "#2" in result.skipped[0]


def test_mismatched_force_array_is_an_error(tmp_path):
    path = _sdf(tmp_path / "m.sdf", "CO", {"energy_eV": "1.0", "forces_eV_A": "1 2 3"})
    with pytest.raises(UserError, match="force values"):
        read_structures(path)


def test_extxyz_round_trip_and_csv(tmp_path):
    s = Structure(np.array([6, 1]), np.array([[0.0, 0, 0], [1.1, 0, 0]]), energy=-2.5,
                  forces=np.array([[0.1, 0, 0], [-0.1, 0, 0]]), molecule="CH", name="ch")
    (back,) = read_structures(write_extxyz(tmp_path / "a.extxyz", [s])).structures
    assert back.energy == pytest.approx(-2.5) and np.allclose(back.forces, s.forces) and back.molecule == "CH"
    lines = write_csv(tmp_path / "a.csv", [s]).read_text().splitlines()
    assert lines[0].startswith("structure,name,molecule,atom,element") and len(lines) == 3


def test_corrupt_and_unknown_element_xyz_are_user_errors(tmp_path):
    corrupt = tmp_path / "bad.xyz"
    corrupt.write_text("3\ncomment\nO 0 0 0\nH 1 0\n")
    with pytest.raises(UserError, match=r"bad\.xyz"):
        read_structures(corrupt)
    unknown = tmp_path / "xx.xyz"
    unknown.write_text("2\ncomment\nXx 0 0 0\nH 1 0 0\n")
    with pytest.raises(UserError, match=r"xx\.xyz"):
        read_structures(unknown)


def test_smiles_list_reader(tmp_path):
    path = tmp_path / "a.smi"
    path.write_text("smiles id\nCCO ethanol\n\n# comment\nC1CC\n")
    assert read_smiles(path) == [("ethanol", "CCO"), ("line5", "C1CC")]
    empty = tmp_path / "empty.smi"
    empty.write_text("\n")
    with pytest.raises(UserError, match="no SMILES"):
        read_smiles(empty)


def test_split_is_by_molecule_never_by_conformer():
    structures = [Structure(np.array([1]), np.zeros((1, 3)), 0.0, molecule=f"m{i % 10}") for i in range(50)]
    groups = molecule_split(structures, val_fraction=0.2, test_fraction=0.2, seed=0)
    seen = [{s.molecule for s in group} for group in groups.values()]
    assert all(a.isdisjoint(b) for i, a in enumerate(seen) for b in seen[i + 1:])
    assert sum(len(g) for g in groups.values()) == 50 and all(groups.values())
    assert fingerprint(structures) == fingerprint(list(structures))
