"""`label`: ETKDG conformers with MMFF94 energies and forces in eV and eV/Å; bad SMILES skipped or refused."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from panformer.engine.errors import UserError
from panformer.molecules.label import LabelOptions, label_file, label_molecule
from panformer.molecules.structures import read_structures
from panformer.molecules.units import KCAL_PER_MOL_IN_EV
from tests.molecules.helpers import write_smiles


def test_labels_are_mmff_energies_and_negative_gradients_in_ev():
    structures, why = label_molecule(("ethanol", "CCO", LabelOptions(conformers=3, mmff_steps=5, rattle=0.02)))
    assert why is None and len(structures) == 3 and {s.molecule for s in structures} == {"ethanol"}
    s = structures[0]
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=0)  # a conformer for the force field to hold; we pass positions
    field = AllChem.MMFFGetMoleculeForceField(mol, AllChem.MMFFGetMoleculeProperties(mol))
    x = s.positions.ravel()
    assert field.CalcEnergy(x.tolist()) * KCAL_PER_MOL_IN_EV == pytest.approx(s.energy, rel=1e-6)
    # Forces are -dE/dx: check one coordinate by central differences (kcal/mol -> eV).
    step = np.zeros_like(x)
    step[0] = 1e-4
    slope = (field.CalcEnergy((x + step).tolist()) - field.CalcEnergy((x - step).tolist())) / 2e-4
    assert s.forces.ravel()[0] == pytest.approx(-slope * KCAL_PER_MOL_IN_EV, rel=1e-3, abs=1e-6)
    # Different conformers, not copies (without the rattle too).
    plain, _ = label_molecule(("butanol", "CCCCO", LabelOptions(conformers=3)))
    assert all(np.abs(plain[i].positions - plain[j].positions).max() > 0.1 for i, j in [(0, 1), (0, 2), (1, 2)])


def test_label_file_skips_malformed_smiles_and_writes_extxyz(tmp_path):
    source = write_smiles(tmp_path / "in.smi", ["CCO", "C1CC(", "CC(=O)O"])
    summary = label_file(source, tmp_path / "out.extxyz", options=LabelOptions(conformers=2),
                         workers=2, show_progress=False)
    assert len(summary.skipped) == 1 and "malformed SMILES" in summary.skipped[0]
    structures = [s for job in [("mol0", "CCO"), ("mol2", "CC(=O)O")]
                  for s in label_molecule((*job, LabelOptions(conformers=2)))[0]]
    back = read_structures(tmp_path / "out.extxyz").structures
    assert len(back) == len(structures) == summary.structures == 4
    assert np.allclose(back[0].forces, structures[0].forces) and back[0].energy == pytest.approx(structures[0].energy)


def test_nothing_parseable_is_a_user_error(tmp_path):
    source = write_smiles(tmp_path / "bad.smi", ["C1CC(", "((("])
    with pytest.raises(UserError, match="no molecule could be labelled"):
        label_file(source, tmp_path / "out.extxyz", options=LabelOptions(), workers=1, show_progress=False)
    assert not (tmp_path / "out.extxyz").exists()
